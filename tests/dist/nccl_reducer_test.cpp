// NcclReducer against the host MPI reducer (MpiReducer) on the same random buffers, with random
// per-rank mark orders, under mpirun -np 1 and 2. Needs one GPU per rank (NCCL refuses two ranks on one
// GPU): every rank skips together otherwise, and everything skips without a GPU.
#include "lib/dist/nccl_reducer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"
#include "lib/dist/gradient_transport.h"
#include "lib/dist/mpi_reducer.h"
#include "tests/dist/mpi_test_common.h"

namespace electra::dist {
namespace {

using testing::identical_on_all_ranks;
using testing::world;

// Floats on the backend's GPU, freed through it.
class GpuFloats {
 public:
  GpuFloats(Backend<float>& backend, const std::vector<float>& host)
      : backend_(backend), size_(host.size()), data_(backend.allocate(std::max<size_t>(1, host.size()))) {
    backend_.copy_from_host(data_, host.data(), size_);
  }
  ~GpuFloats() { backend_.deallocate(data_); }
  GpuFloats(const GpuFloats&) = delete;
  GpuFloats& operator=(const GpuFloats&) = delete;
  float* data() { return data_; }
  std::vector<float> to_host() {
    std::vector<float> host(size_);
    backend_.copy_to_host(host.data(), data_, size_);
    return host;
  }

 private:
  Backend<float>& backend_;
  size_t size_;
  float* data_;
};

std::vector<std::pair<size_t, size_t>> uneven_ranges(size_t total) {
  std::vector<std::pair<size_t, size_t>> ranges;
  size_t offset = 0;
  for (size_t k = 0; offset < total; ++k) {
    const size_t size = std::min(total - offset, 17 + (k * 37) % 150);
    ranges.emplace_back(offset, size);
    offset += size;
  }
  return ranges;
}

void mark_shuffled(GradientReducer& reducer, std::vector<std::pair<size_t, size_t>> ranges, unsigned seed) {
  std::mt19937 rng(seed);
  std::shuffle(ranges.begin(), ranges.end(), rng);
  for (const auto& [offset, count] : ranges) reducer.mark_ready(offset, count);
}

std::vector<float> random_values(size_t count, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> data(count);
  for (float& x : data) x = normal(rng);
  return data;
}

// Multiples of 1/64 below 2^10: their sums are exact in any order, so every transport must agree bitwise.
std::vector<float> exact_values(size_t count, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> value(0, 4095);
  std::vector<float> data(count);
  for (float& x : data) x = static_cast<float>(value(rng)) / 64.0f - 20.0f;
  return data;
}

::testing::AssertionResult close_to(const std::vector<float>& got, const std::vector<float>& want, double rel) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= rel * std::abs(static_cast<double>(want[i])) + 1e-30)) {
      return ::testing::AssertionFailure() << "element " << i << ": nccl " << got[i] << " mpi " << want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

class CudaNcclReducer : public ::testing::Test {
 protected:
  void SetUp() override {
    const int gpus = cuda_device_count();
    // A collective decision: one rank skipping alone would leave the others in NCCL's init.
    if (!world().agree_all(gpus >= world().local_size())) {
      GTEST_SKIP() << (gpus == 0 ? "no usable CUDA GPU: " + cuda_unavailable_reason()
                                 : "NCCL needs one GPU per rank: " + std::to_string(world().local_size()) +
                                       " ranks on this node, " + std::to_string(gpus) + " GPU(s)");
    }
    backend = make_cuda_backend(world().local_rank());
    nccl = std::make_unique<NcclCommunicator>(world(), world().local_rank());
  }

  std::unique_ptr<Backend<float>> backend;  // declared first: destroyed after the communicator
  std::unique_ptr<NcclCommunicator> nccl;
};

class CudaNcclReducerCases : public CudaNcclReducer,
                             public ::testing::WithParamInterface<std::tuple<ReduceOp, LaunchOrder>> {};

TEST_P(CudaNcclReducerCases, EqualsTheHostMpiReducerOnRandomBuffersAndMarkOrders) {
  const auto [op, order] = GetParam();
  const int rank = world().rank();
  const size_t count = 50021;
  const GradientReducerOptions options{.bucket_bytes = 4096 * sizeof(float), .op = op, .order = order};
  std::vector<float> zeros(count, 0.0f);
  GpuFloats device(*backend, zeros);
  NcclReducer reducer(*nccl, *backend, device.data(), count, options);
  std::vector<float> host(count);
  MpiReducer host_reducer(world(), host, options);
  ASSERT_EQ(reducer.num_buckets(), host_reducer.num_buckets());
  for (size_t b = 0; b < reducer.num_buckets(); ++b) EXPECT_EQ(reducer.bucket_range(b), host_reducer.bucket_range(b));

  for (int step = 0; step < 4; ++step) {
    // Even steps: exact values (bitwise agreement); odd steps: normal values (float rounding).
    const unsigned seed = 1000u * step + static_cast<unsigned>(rank);
    const std::vector<float> mine = step % 2 == 0 ? exact_values(count, seed) : random_values(count, seed);
    host = mine;
    backend->copy_from_host(device.data(), mine.data(), count);

    host_reducer.begin();
    mark_shuffled(host_reducer, uneven_ranges(count), seed + 7);
    host_reducer.wait_all();
    reducer.begin();
    mark_shuffled(reducer, uneven_ranges(count), seed + 13);
    reducer.wait_all();

    const std::vector<float> got = device.to_host();
    if (step % 2 == 0) {
      EXPECT_EQ(std::memcmp(got.data(), host.data(), count * sizeof(float)), 0) << "step " << step;
    } else {
      EXPECT_TRUE(close_to(got, host, 1e-5)) << "step " << step;
    }
    EXPECT_TRUE(identical_on_all_ranks(std::span<const float>(got))) << "step " << step;
  }
  EXPECT_EQ(reducer.stats().steps, 4);
  EXPECT_EQ(reducer.stats().buckets_launched, 4 * static_cast<int64_t>(reducer.num_buckets()));
}

INSTANTIATE_TEST_SUITE_P(All, CudaNcclReducerCases,
                         ::testing::Combine(::testing::Values(ReduceOp::kSum, ReduceOp::kAverage),
                                            ::testing::Values(LaunchOrder::kDescending, LaunchOrder::kAscending)));

// Without a host wait, work enqueued on the backend's stream after wait_all() still sees reduced values
// (the stream waits on the communication stream's event).
TEST_F(CudaNcclReducer, TheBackendStreamIsOrderedAfterTheReductionWithoutHostWait) {
  const size_t count = 300001;  // several buckets, the last one short
  const std::vector<float> mine = exact_values(count, 55u + static_cast<unsigned>(world().rank()));
  std::vector<float> expected = mine;
  world().allreduce_sum(std::span<float>(expected));
  for (float& x : expected) x *= 2.0f;

  GpuFloats device(*backend, mine);
  NcclReducer reducer(*nccl, *backend, device.data(), count, {.bucket_bytes = size_t{256} << 10, .op = ReduceOp::kSum},
                      {.timeout_seconds = 60, .block_host = false});
  reducer.begin();
  mark_shuffled(reducer, uneven_ranges(count), 3u + static_cast<unsigned>(world().rank()));
  reducer.wait_all();
  backend->scale(device.data(), count, 2.0f);  // enqueued on the backend's stream right away
  const std::vector<float> got = device.to_host();
  EXPECT_EQ(std::memcmp(got.data(), expected.data(), count * sizeof(float)), 0);
  EXPECT_EQ(reducer.stats().wait_seconds, 0.0);

  // The next step's begin() does the bounded host check of the previous one; reduce_all is the blocking path.
  backend->copy_from_host(device.data(), mine.data(), count);
  reducer.reduce_all();
  expected = mine;
  world().allreduce_sum(std::span<float>(expected));
  const std::vector<float> again = device.to_host();
  EXPECT_EQ(std::memcmp(again.data(), expected.data(), count * sizeof(float)), 0);
}

// Misuse is caught locally before any collective is issued (ascending order: bucket 0 stays incomplete).
TEST_F(CudaNcclReducer, RejectsMisuseAndHostBackends) {
  std::vector<float> zeros(100, 0.0f);
  GpuFloats device(*backend, zeros);
  NcclReducer reducer(*nccl, *backend, device.data(), 100,
                      {.bucket_bytes = 50 * sizeof(float), .order = LaunchOrder::kAscending});
  EXPECT_THROW(reducer.mark_ready(0, 10), Error) << "mark_ready before begin()";
  reducer.begin();
  reducer.mark_ready(0, 10);
  EXPECT_THROW(reducer.mark_ready(5, 10), Error) << "overlaps [0, 10)";
  EXPECT_THROW(reducer.mark_ready(95, 10), Error) << "outside the buffer";
  EXPECT_THROW(reducer.begin(), Error) << "previous step not waited for";
  try {
    reducer.wait_all();
    ADD_FAILURE() << "wait_all with unmarked ranges must fail";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("NcclReducer::wait_all: bucket [0, 50) has 10 of 50"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(reducer.stats().buckets_launched, 0);

  auto cpu = make_cpu_backend<float>();
  EXPECT_THROW(NcclReducer(*nccl, *cpu, device.data(), 100), Error);
  EXPECT_THROW(NcclReducer(*nccl, *backend, device.data(), 100, {.bucket_bytes = 2}), Error);
}

// dist.gradient_transport = cuda_aware_mpi: MpiReducer handed device memory, synchronising the
// backend before each launch. Needs a GPU and an MPI that is CUDA-aware (Debian's Open MPI is not).
TEST(CudaAwareMpiReducer, EqualsTheHostReducerOnDeviceMemory) {
  const CudaAwareMpiSupport support = query_cuda_aware_mpi();
  if (!world().agree_all(cuda_device_count() > 0 && support.available)) {
    GTEST_SKIP() << (cuda_device_count() == 0 ? "no usable CUDA GPU: " + cuda_unavailable_reason() : support.reason);
  }
  auto backend = make_cuda_backend(world().local_rank() % cuda_device_count());
  const size_t count = 20011;
  const std::vector<float> mine = exact_values(count, 77u + static_cast<unsigned>(world().rank()));
  std::vector<float> expected = mine;
  world().allreduce_sum(std::span<float>(expected));
  GpuFloats device(*backend, mine);
  const GradientReducerOptions options{.bucket_bytes = 2048 * sizeof(float), .op = ReduceOp::kSum};
  MpiReducer reducer(world(), std::span<float>(device.data(), count), options, [&] { backend->synchronize(); });
  reducer.begin();
  mark_shuffled(reducer, uneven_ranges(count), 5u + static_cast<unsigned>(world().rank()));
  reducer.wait_all();
  const std::vector<float> got = device.to_host();
  EXPECT_EQ(std::memcmp(got.data(), expected.data(), count * sizeof(float)), 0);
}

}  // namespace
}  // namespace electra::dist
