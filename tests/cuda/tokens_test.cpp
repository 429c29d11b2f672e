// replace_masked_tokens on the GPU against the CPU backend (bitwise: integer outputs), with duplicate
// positions, zero weights and padding; a weighted position outside [0, S) is reported at the next wait.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <memory>
#include <tuple>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

class CudaTokens : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    gpu = make_cuda_backend(0);
    cpu = make_cpu_backend<float>();
  }
  DeviceBuffer<float, int32_t> up(const std::vector<int32_t>& h) {
    DeviceBuffer<float, int32_t> d(*gpu, h.size());
    gpu->copy_ints_from_host(d.data(), h.data(), h.size());
    return d;
  }
  DeviceBuffer<float> up(const std::vector<float>& h) {
    DeviceBuffer<float> d(*gpu, h.size());
    gpu->copy_from_host(d.data(), h.data(), h.size());
    return d;
  }
  std::unique_ptr<Backend<float>> gpu, cpu;
};

TEST_F(CudaTokens, ReplaceMaskedTokensMatchesCpu) {
  for (const auto& [B, S, P] : {std::tuple{3, 8, 5}, std::tuple{4, 16, 20}, std::tuple{8, 128, 19},
                                std::tuple{2, 512, 79}, std::tuple{2, 6, 0}}) {
    const size_t N = static_cast<size_t>(B) * S, M = static_cast<size_t>(B) * P;
    const uint64_t id = 300 + B + S + P;
    const std::vector<int32_t> original = random_ints(N, id, 0, 30);
    std::vector<int32_t> mask(N, 1);
    for (size_t i = 0; i < N; ++i) mask[i] = (i % S) < static_cast<size_t>(S - 2) ? 1 : 0;
    std::vector<int32_t> positions = M ? random_ints(M, id + 1, 0, (S + 1) / 2) : std::vector<int32_t>{};
    const std::vector<int32_t> samples = M ? random_ints(M, id + 2, 0, 30) : std::vector<int32_t>{};
    std::vector<float> weights(M, 1.0f);
    for (size_t i = 0; i < M; i += 3) weights[i] = 0.0f;
    for (size_t i = 0; i < M; i += 6) positions[i] = S + 4;  // weight 0: ignored
    std::vector<int32_t> cpu_corrupted(N), cpu_label(N), gpu_corrupted(N), gpu_label(N);
    cpu->replace_masked_tokens(cpu_corrupted.data(), cpu_label.data(), original.data(), mask.data(), positions.data(),
                               weights.data(), samples.data(), B, S, P);
    auto d_original = up(original), d_mask = up(mask);
    auto d_positions = up(positions), d_samples = up(samples);
    auto d_weights = up(weights);
    DeviceBuffer<float, int32_t> d_corrupted(*gpu, N), d_label(*gpu, N);
    gpu->replace_masked_tokens(d_corrupted.data(), d_label.data(), d_original.data(), d_mask.data(), d_positions.data(),
                               d_weights.data(), d_samples.data(), B, S, P);
    gpu->copy_ints_to_host(gpu_corrupted.data(), d_corrupted.data(), N);
    gpu->copy_ints_to_host(gpu_label.data(), d_label.data(), N);
    EXPECT_EQ(gpu_corrupted, cpu_corrupted) << B << "x" << S << "x" << P;
    EXPECT_EQ(gpu_label, cpu_label) << B << "x" << S << "x" << P;
  }
}

TEST_F(CudaTokens, WeightedPositionOutsideSequenceIsReported) {
  const int B = 2, S = 8, P = 3;
  auto original = up(std::vector<int32_t>(B * S, 5)), mask = up(std::vector<int32_t>(B * S, 1));
  auto positions = up(std::vector<int32_t>{0, 1, 2, 3, 9, 4});
  auto samples = up(std::vector<int32_t>(B * P, 6));
  auto weights = up(std::vector<float>(B * P, 1.0f));
  DeviceBuffer<float, int32_t> corrupted(*gpu, B * S), label(*gpu, B * S);
  gpu->replace_masked_tokens(corrupted.data(), label.data(), original.data(), mask.data(), positions.data(),
                             weights.data(), samples.data(), B, S, P);
  EXPECT_THROW(gpu->synchronize(), Error);
}

}  // namespace
}  // namespace electra::test
