#include "lib/dist/mpi_reducer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "lib/core/error.h"
#include "tests/dist/mpi_test_common.h"

namespace electra::dist {
namespace {

using testing::identical_on_all_ranks;
using testing::world;

// Tensor ranges of uneven sizes that straddle bucket boundaries, like a parameter layout.
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

// Multiples of 1/64 below 2^10: sums of a few are exact in float, in any order, so bucketed and
// blocking reductions must agree bitwise.
std::vector<float> exact_values(size_t count, int rank) {
  std::vector<float> data(count);
  for (size_t k = 0; k < count; ++k) data[k] = static_cast<float>((k * 7 + rank * 13) % 4096) / 64.0f - 20.0f;
  return data;
}

std::vector<float> random_values(size_t count, int rank) {
  std::mt19937 rng(99 + rank);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> data(count);
  for (float& x : data) x = normal(rng);
  return data;
}

// Marks `ranges` in an order that differs per rank (and per step).
void mark_shuffled(MpiReducer& reducer, std::vector<std::pair<size_t, size_t>> ranges, unsigned seed) {
  std::mt19937 rng(seed);
  std::shuffle(ranges.begin(), ranges.end(), rng);
  for (const auto& [offset, count] : ranges) reducer.mark_ready(offset, count);
}

TEST(MpiReducer, BucketsCoverTheBuffer) {
  std::vector<float> buffer(1000);
  MpiReducer reducer(world(), buffer, {.bucket_bytes = 400 * sizeof(float)});
  ASSERT_EQ(reducer.num_buckets(), 3u);
  EXPECT_EQ(reducer.bucket_range(0), (std::pair<size_t, size_t>{0, 400}));
  EXPECT_EQ(reducer.bucket_range(1), (std::pair<size_t, size_t>{400, 400}));
  EXPECT_EQ(reducer.bucket_range(2), (std::pair<size_t, size_t>{800, 200}));
  std::vector<float> tiny(3);
  EXPECT_EQ(MpiReducer(world(), tiny, {.bucket_bytes = 1 << 20}).num_buckets(), 1u);
  EXPECT_THROW(MpiReducer(world(), tiny, {.bucket_bytes = 2}), Error);
}

class GradientReducerOrders : public ::testing::TestWithParam<std::tuple<ReduceOp, LaunchOrder>> {};

TEST_P(GradientReducerOrders, OutOfOrderMarksMatchBlockingAllreduceBitwise) {
  const auto [op, order] = GetParam();
  const Communicator& comm = world();
  const size_t count = 10007;
  std::vector<float> grads = exact_values(count, comm.rank());
  std::vector<float> expected = grads;
  if (op == ReduceOp::kSum) {
    comm.allreduce_sum(std::span<float>(expected));
  } else {
    comm.allreduce_average(std::span<float>(expected));
  }

  MpiReducer reducer(comm, grads, {.bucket_bytes = 1024 * sizeof(float), .op = op, .order = order});
  EXPECT_EQ(reducer.num_buckets(), 10u);
  reducer.begin();
  mark_shuffled(reducer, uneven_ranges(count), 7 + 1000 * comm.rank());
  reducer.wait_all();

  EXPECT_EQ(std::memcmp(grads.data(), expected.data(), count * sizeof(float)), 0)
      << "bucketed reduction differs from MPI_Allreduce";
  EXPECT_TRUE(identical_on_all_ranks(std::span<const float>(grads)));
  EXPECT_EQ(reducer.stats().buckets_launched, 10);
  EXPECT_EQ(reducer.stats().steps, 1);
}

INSTANTIATE_TEST_SUITE_P(All, GradientReducerOrders,
                         ::testing::Combine(::testing::Values(ReduceOp::kSum, ReduceOp::kAverage),
                                            ::testing::Values(LaunchOrder::kDescending, LaunchOrder::kAscending)));

TEST(MpiReducer, RandomGradientsOverSeveralSteps) {
  const Communicator& comm = world();
  const size_t count = 50000;
  std::vector<float> grads(count);
  MpiReducer reducer(comm, grads, {.bucket_bytes = 4096 * sizeof(float)});
  for (int step = 0; step < 3; ++step) {
    std::vector<float> mine = random_values(count, comm.rank() + 10 * step);
    std::copy(mine.begin(), mine.end(), grads.begin());
    std::vector<double> expected(count, 0.0);
    for (int r = 0; r < comm.world_size(); ++r) {
      std::vector<float> theirs = mine;
      comm.broadcast(std::span<float>(theirs), r);
      for (size_t k = 0; k < count; ++k) expected[k] += theirs[k];
    }
    reducer.begin();
    mark_shuffled(reducer, uneven_ranges(count), step * 31 + comm.rank());
    reducer.wait_all();
    for (size_t k = 0; k < count; k += 97) {
      const double mean = expected[k] / comm.world_size();
      EXPECT_NEAR(grads[k], mean, 1e-5 * (1 + std::abs(mean))) << "step " << step << " element " << k;
    }
    EXPECT_TRUE(identical_on_all_ranks(std::span<const float>(grads)));
  }
  EXPECT_EQ(reducer.stats().steps, 3);
  EXPECT_EQ(reducer.stats().buckets_launched, 3 * static_cast<int64_t>(reducer.num_buckets()));
  EXPECT_GE(reducer.stats().wait_seconds, reducer.stats().last_wait_seconds);
}

TEST(MpiReducer, ReduceAllIsTheBlockingPath) {
  const Communicator& comm = world();
  std::vector<float> grads = exact_values(3001, comm.rank());
  std::vector<float> expected = grads;
  comm.allreduce_sum(std::span<float>(expected));
  MpiReducer reducer(comm, grads, {.bucket_bytes = 1000 * sizeof(float), .op = ReduceOp::kSum});
  reducer.reduce_all();
  EXPECT_EQ(std::memcmp(grads.data(), expected.data(), grads.size() * sizeof(float)), 0);

  std::vector<float> empty;
  MpiReducer nothing(comm, empty);
  EXPECT_EQ(nothing.num_buckets(), 0u);
  EXPECT_NO_THROW(nothing.reduce_all());
}

// Misuse is caught locally, before any collective is issued (ascending order, first bucket incomplete).
TEST(MpiReducer, RejectsMisuse) {
  std::vector<float> grads(100);
  {
    MpiReducer reducer(world(), grads, {.bucket_bytes = 50 * sizeof(float), .order = LaunchOrder::kAscending});
    EXPECT_THROW(reducer.mark_ready(0, 10), Error) << "mark_ready before begin()";
    reducer.begin();
    reducer.mark_ready(0, 10);
    EXPECT_THROW(reducer.mark_ready(5, 10), Error) << "overlaps [0, 10)";
    EXPECT_THROW(reducer.mark_ready(9, 1), Error) << "overlaps [0, 10)";
    reducer.mark_ready(20, 5);
    EXPECT_THROW(reducer.mark_ready(15, 6), Error) << "overlaps [20, 25)";
    EXPECT_THROW(reducer.mark_ready(95, 10), Error) << "outside the buffer";
    EXPECT_THROW(reducer.begin(), Error) << "previous step not waited for";
    try {
      reducer.wait_all();
      ADD_FAILURE() << "wait_all with unmarked ranges must fail";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("[0, 50) has 15 of 50"), std::string::npos) << error.what();
    }
  }
}

// The CUDA-aware MPI path (a device buffer handed to MPI) run on host memory: the hook runs before every
// group of launches, after the marks that completed them, and the result is the blocking allreduce's.
TEST(MpiReducer, DeviceBufferPathSynchronizesBeforeEachLaunch) {
  const Communicator& comm = world();
  const size_t count = 5003;
  std::vector<float> grads = exact_values(count, comm.rank());
  std::vector<float> expected = grads;
  comm.allreduce_sum(std::span<float>(expected));
  int hook_calls = 0;
  MpiReducer reducer(comm, grads, {.bucket_bytes = 500 * sizeof(float), .op = ReduceOp::kSum}, [&] { ++hook_calls; });
  reducer.begin();
  // Bucket by bucket in launch order (descending): each mark completes exactly one bucket.
  for (size_t b = reducer.num_buckets(); b-- > 0;) {
    const auto [offset, size] = reducer.bucket_range(b);
    const int before = hook_calls;
    const int64_t launched = reducer.stats().buckets_launched;
    reducer.mark_ready(offset, size);
    EXPECT_EQ(hook_calls, before + 1) << "bucket " << b;
    EXPECT_EQ(reducer.stats().buckets_launched, launched + 1) << "bucket " << b;
  }
  reducer.wait_all();
  EXPECT_EQ(std::memcmp(grads.data(), expected.data(), count * sizeof(float)), 0);
  // A mark that completes no bucket does not synchronise.
  reducer.begin();
  const int before = hook_calls;
  reducer.mark_ready(0, 10);
  EXPECT_EQ(hook_calls, before);
  reducer.mark_ready(10, count - 10);
  EXPECT_EQ(hook_calls, before + 1) << "one synchronisation for all the buckets one mark completes";
  reducer.wait_all();

  EXPECT_THROW(MpiReducer(comm, grads, {.op = ReduceOp::kAverage}, [] {}), Error)
      << "kAverage would scale device memory on the host";
  EXPECT_THROW(MpiReducer(comm, grads, {.op = ReduceOp::kSum}, std::function<void()>()), Error);
}

}  // namespace
}  // namespace electra::dist
