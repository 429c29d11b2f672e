// The CUDA backend's device memory comes from its arena (CudaBackendOptions::arena_bytes /
// memory_fraction) and cuda_memory_stats reports it. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"

namespace electra {
namespace {

class CudaMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
  }
};

TEST_F(CudaMemory, ArenaOfGivenSizeReportsUse) {
  CudaBackendOptions options;
  options.arena_bytes = size_t{64} << 20;
  options.arena_size_hint = "the test's arena_bytes";
  auto gpu = make_cuda_backend(0, options);
  CudaMemoryStats s = cuda_memory_stats(*gpu);
  EXPECT_EQ(s.capacity, size_t{64} << 20);
  EXPECT_EQ(s.in_use, 0u);
  float* a = gpu->allocate(1000);  // 4000 bytes -> one 4096-byte block
  int32_t* b = gpu->allocate_ints(3);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 256, 0u);
  s = cuda_memory_stats(*gpu);
  EXPECT_EQ(s.in_use, 4096u + 256u);
  EXPECT_EQ(s.blocks, 2u);
  // The memory is usable: a round trip through it.
  std::vector<float> host(1000), back(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  gpu->copy_from_host(a, host.data(), host.size());
  gpu->copy_to_host(back.data(), a, back.size());
  EXPECT_EQ(host, back);
  gpu->deallocate(a);
  gpu->deallocate_ints(b);
  s = cuda_memory_stats(*gpu);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.peak, 4096u + 256u);
  // Exhaustion names the size and the hint.
  try {
    gpu->allocate(size_t{64} << 20);
    ADD_FAILURE() << "allocation beyond the arena succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the test's arena_bytes"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("capacity 64.0 MiB"), std::string::npos) << e.what();
  }
}

TEST_F(CudaMemory, DefaultArenaIsAFractionOfFreeMemory) {
  CudaBackendOptions options;
  options.memory_fraction = 0.25;
  auto gpu = make_cuda_backend(0, options);
  const CudaMemoryStats s = cuda_memory_stats(*gpu);
  EXPECT_GT(s.capacity, size_t{1} << 20);
  EXPECT_EQ(s.largest_free_block, s.capacity);
  options.memory_fraction = 0.0;
  EXPECT_THROW(make_cuda_backend(0, options), Error);
  options.memory_fraction = 1.5;
  EXPECT_THROW(make_cuda_backend(0, options), Error);
}

TEST(CudaMemoryStatsOnCpu, FailsForAnotherBackend) {
  auto cpu = make_cpu_backend<float>();
  EXPECT_THROW(cuda_memory_stats(*cpu), Error);
}

}  // namespace
}  // namespace electra
