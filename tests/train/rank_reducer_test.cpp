// make_rank_reducer (lib/train/rank_reducer.h) under mpirun -np 2 and 3: every transport it builds
// leaves the exact sum over ranks in the gradient buffer, overlapped (ranges marked in a different order on
// each rank) and blocking; ranks that resolve different transports all fail naming the setting. The values
// are small integers, so every summation order gives the exact sum. On GPUs (skipped without one) the host
// staging of a device buffer and auto (NCCL with one GPU per rank, else host) are checked the same way.
#include "lib/train/rank_reducer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(ELECTRA_TEST_HAVE_CUDA)
#include "lib/backend/cuda/cuda_backend.h"
#endif
#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "tests/dist/mpi_test_common.h"

namespace electra {
namespace {

using dist::testing::world;

constexpr size_t kCount = 1000;

// Rank r's gradient element i: an integer in [-50, 50], so sums over ranks are exact in float.
float rank_value(int rank, size_t i, int round) {
  return static_cast<float>(static_cast<int>((rank * 31 + i * 7 + round * 13) % 101) - 50);
}

std::vector<float> rank_values(int rank, int round) {
  std::vector<float> values(kCount);
  for (size_t i = 0; i < kCount; ++i) values[i] = rank_value(rank, i, round);
  return values;
}

std::vector<float> expected_sums(int round) {
  std::vector<float> sums(kCount, 0.0f);
  for (int r = 0; r < world().world_size(); ++r) {
    for (size_t i = 0; i < kCount; ++i) sums[i] += rank_value(r, i, round);
  }
  return sums;
}

RankReducerOptions small_buckets() {
  RankReducerOptions options;
  options.reducer.op = dist::ReduceOp::kSum;
  options.reducer.bucket_bytes = 64 * sizeof(float);  // 16 buckets of 64 (the last shorter)
  options.setting = "--transport";
  options.asked = "--transport (test)";
  return options;
}

// Uneven ranges covering [0, kCount), in an order that differs per rank.
std::vector<std::pair<size_t, size_t>> shuffled_ranges(int rank) {
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t offset = 0, k = 0; offset < kCount; ++k) {
    const size_t size = std::min(kCount - offset, 11 + (k * 29) % 90);
    ranges.emplace_back(offset, size);
    offset += size;
  }
  std::mt19937 rng(static_cast<unsigned>(17 + rank));
  std::shuffle(ranges.begin(), ranges.end(), rng);
  return ranges;
}

// One overlapped step and one blocking step through `allreduce` over `gradients` (on `backend`); returns
// the two results as read back to the host.
std::pair<std::vector<float>, std::vector<float>> two_steps(dist::GradientReducer& allreduce, Backend<float>& backend,
                                                            float* gradients) {
  const int rank = world().rank();
  std::vector<float> overlapped(kCount), blocking(kCount);
  const std::vector<float> first = rank_values(rank, 0);
  backend.copy_from_host(gradients, first.data(), kCount);
  allreduce.begin();
  for (const auto& [offset, count] : shuffled_ranges(rank)) allreduce.mark_ready(offset, count);
  allreduce.wait_all();
  backend.copy_to_host(overlapped.data(), gradients, kCount);

  const std::vector<float> second = rank_values(rank, 1);
  backend.copy_from_host(gradients, second.data(), kCount);
  allreduce.reduce_all();
  backend.copy_to_host(blocking.data(), gradients, kCount);
  return {overlapped, blocking};
}

TEST(RankReducerCpu, HostAndAutoLeaveTheExactSumOverlappedAndBlocking) {
  const std::unique_ptr<Backend<float>> backend = make_cpu_backend<float>();
  float* gradients = backend->allocate(kCount);
  for (const dist::GradientTransport configured : {dist::GradientTransport::kAuto, dist::GradientTransport::kHost}) {
    const dist::GradientTransport resolved =
        dist::resolve_gradient_transport(configured, {.gpu = false, .shared_gpu = ""});
    RankReducer allreduce =
        make_rank_reducer(world(), configured, resolved, *backend, gradients, kCount, small_buckets());
    EXPECT_EQ(allreduce.transport, dist::GradientTransport::kHost);
    EXPECT_FALSE(allreduce.stages_through_host) << "host gradients are reduced in place";
    EXPECT_EQ(allreduce.reducer->num_buckets(), 16u);
    const auto [overlapped, blocking] = two_steps(*allreduce.reducer, *backend, gradients);
    EXPECT_EQ(overlapped, expected_sums(0)) << dist::to_string(configured);
    EXPECT_EQ(blocking, expected_sums(1)) << dist::to_string(configured);
    EXPECT_EQ(allreduce.reducer->stats().steps, 2);
  }
  backend->deallocate(gradients);
}

TEST(RankReducerCpu, RanksThatResolveDifferentTransportsAllFailNamingTheSetting) {
  if (world().world_size() < 2) GTEST_SKIP() << "needs two ranks";
  const std::unique_ptr<Backend<float>> backend = make_cpu_backend<float>();
  float* gradients = backend->allocate(kCount);
  // Rank 0 asks for host, the others for a device transport: nobody may start a collective of its own.
  const dist::GradientTransport mine =
      world().rank() == 0 ? dist::GradientTransport::kHost : dist::GradientTransport::kCudaAwareMpi;
  try {
    RankReducer allreduce = make_rank_reducer(world(), mine, mine, *backend, gradients, kCount, small_buckets());
    ADD_FAILURE() << "rank " << world().rank() << " built a reducer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--transport: the ranks resolved different transports (rank " +
                                         std::to_string(world().rank()) + ": " + dist::to_string(mine)),
              std::string::npos)
        << e.what();
  }
  backend->deallocate(gradients);
}

TEST(RankReducerCpu, CudaAwareMpiIsCheckedOnlyWhenAskedFor) {
  EXPECT_NO_THROW(check_gradient_transport_available(dist::GradientTransport::kHost, "--transport"));
  EXPECT_NO_THROW(check_gradient_transport_available(dist::GradientTransport::kNccl, "--transport"));
  const dist::CudaAwareMpiSupport support = dist::query_cuda_aware_mpi();
  if (support.available) {
    EXPECT_NO_THROW(check_gradient_transport_available(dist::GradientTransport::kCudaAwareMpi, "--transport"));
  } else {
    try {
      check_gradient_transport_available(dist::GradientTransport::kCudaAwareMpi, "--transport");
      ADD_FAILURE() << "an MPI that is not CUDA-aware was accepted";
    } catch (const Error& e) {
      EXPECT_NE(
          std::string(e.what()).find("--transport = cuda_aware_mpi: " + support.reason + "; use 'nccl' or 'host'"),
          std::string::npos)
          << e.what();
    }
  }
}

#if defined(ELECTRA_TEST_HAVE_CUDA)
// The rank's GPU with a small arena (several ranks may share one GPU).
std::unique_ptr<Backend<float>> rank_gpu_backend() {
  CudaBackendOptions options;
  options.arena_bytes = size_t{64} << 20;
  return make_cuda_backend(world().local_rank() % cuda_device_count(), options);
}
#endif

TEST(RankReducerCuda, HostStagingAndAutoLeaveTheExactSumInTheDeviceBuffer) {
#if defined(ELECTRA_TEST_HAVE_CUDA)
  if (!world().agree_all(cuda_device_count() > 0)) GTEST_SKIP() << "no usable CUDA GPU on some rank";
  const std::unique_ptr<Backend<float>> backend = rank_gpu_backend();
  float* gradients = backend->allocate(kCount);
  const std::string shared = dist::find_shared_gpus(world(), cuda_device_pci_bus_id(cuda_device_of(*backend)));
  for (const dist::GradientTransport configured : {dist::GradientTransport::kHost, dist::GradientTransport::kAuto}) {
    const dist::GradientTransport resolved =
        dist::resolve_gradient_transport(configured, {.gpu = true, .shared_gpu = ""});
    RankReducer allreduce =
        make_rank_reducer(world(), configured, resolved, *backend, gradients, kCount, small_buckets());
    const dist::GradientTransport expected = configured == dist::GradientTransport::kAuto && shared.empty()
                                                 ? dist::GradientTransport::kNccl
                                                 : dist::GradientTransport::kHost;
    EXPECT_EQ(allreduce.transport, expected) << dist::to_string(configured) << "; " << shared;
    EXPECT_EQ(allreduce.stages_through_host, expected == dist::GradientTransport::kHost);
    const auto [overlapped, blocking] = two_steps(*allreduce.reducer, *backend, gradients);
    EXPECT_EQ(overlapped, expected_sums(0)) << dist::to_string(allreduce.transport);
    EXPECT_EQ(blocking, expected_sums(1)) << dist::to_string(allreduce.transport);
  }
  backend->deallocate(gradients);
#else
  GTEST_SKIP() << "this build has no CUDA backend";
#endif
}

TEST(RankReducerCuda, ExplicitNcclFailsOnEveryRankWhenRanksShareAGpu) {
#if defined(ELECTRA_TEST_HAVE_CUDA)
  if (!world().agree_all(cuda_device_count() > 0)) GTEST_SKIP() << "no usable CUDA GPU on some rank";
  const std::unique_ptr<Backend<float>> backend = rank_gpu_backend();
  float* gradients = backend->allocate(kCount);
  const std::string shared = dist::find_shared_gpus(world(), cuda_device_pci_bus_id(cuda_device_of(*backend)));
  const dist::GradientTransport nccl = dist::GradientTransport::kNccl;
  if (shared.empty()) {
    RankReducer allreduce = make_rank_reducer(world(), nccl, nccl, *backend, gradients, kCount, small_buckets());
    EXPECT_EQ(allreduce.transport, nccl);
    EXPECT_FALSE(allreduce.stages_through_host);
    const auto [overlapped, blocking] = two_steps(*allreduce.reducer, *backend, gradients);
    EXPECT_EQ(overlapped, expected_sums(0));
    EXPECT_EQ(blocking, expected_sums(1));
  } else {
    try {
      RankReducer allreduce = make_rank_reducer(world(), nccl, nccl, *backend, gradients, kCount, small_buckets());
      ADD_FAILURE() << "nccl accepted while " << shared;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("= nccl needs one GPU per rank, but " + shared), std::string::npos)
          << e.what();
    }
  }
  backend->deallocate(gradients);
#else
  GTEST_SKIP() << "this build has no CUDA backend";
#endif
}

}  // namespace
}  // namespace electra
