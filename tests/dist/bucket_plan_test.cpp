#include "lib/dist/bucket_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

// The message of the Error that `action` throws, or "" when it throws none.
template <typename Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

// Tensor-like ranges of uneven sizes (3..40) covering [0, total) in a shuffled order.
std::vector<std::pair<size_t, size_t>> shuffled_ranges(size_t total, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> size(3, 40);
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t offset = 0; offset < total;) {
    const size_t count = std::min(total - offset, size(rng));
    ranges.emplace_back(offset, count);
    offset += count;
  }
  std::shuffle(ranges.begin(), ranges.end(), rng);
  return ranges;
}

TEST(BucketPlan, CutsTheBufferIntoFixedBuckets) {
  BucketPlan plan(1000, 400, LaunchOrder::kDescending, "Test");
  ASSERT_EQ(plan.num_buckets(), 3u);
  EXPECT_EQ(plan.bucket_range(0), (std::pair<size_t, size_t>{0, 400}));
  EXPECT_EQ(plan.bucket_range(1), (std::pair<size_t, size_t>{400, 400}));
  EXPECT_EQ(plan.bucket_range(2), (std::pair<size_t, size_t>{800, 200}));
  EXPECT_EQ(plan.bucket_at(0), 2u);
  EXPECT_EQ(plan.bucket_at(2), 0u);
  BucketPlan ascending(1000, 400, LaunchOrder::kAscending, "Test");
  EXPECT_EQ(ascending.bucket_at(0), 0u);
  EXPECT_EQ(ascending.bucket_at(2), 2u);
  EXPECT_EQ(BucketPlan(0, 10, LaunchOrder::kAscending, "Test").num_buckets(), 0u);
  EXPECT_EQ(BucketPlan(10, 10, LaunchOrder::kAscending, "Test").num_buckets(), 1u);
  EXPECT_EQ(BucketPlan(11, 10, LaunchOrder::kAscending, "Test").num_buckets(), 2u);
  EXPECT_THROW(BucketPlan(10, 0, LaunchOrder::kAscending, "Test"), Error);
}

// A boundary ends a bucket and restarts the cutting: the part after it (the discriminator's gradients)
// fills buckets of its own, launched first in descending order as soon as that part is marked.
TEST(BucketPlan, BoundariesAreNeverStraddled) {
  BucketPlan plan(1000, 400, LaunchOrder::kDescending, "Test", {450, 1000, 0, 450, 5000});
  ASSERT_EQ(plan.num_buckets(), 4u);
  EXPECT_EQ(plan.bucket_range(0), (std::pair<size_t, size_t>{0, 400}));
  EXPECT_EQ(plan.bucket_range(1), (std::pair<size_t, size_t>{400, 50}));
  EXPECT_EQ(plan.bucket_range(2), (std::pair<size_t, size_t>{450, 400}));
  EXPECT_EQ(plan.bucket_range(3), (std::pair<size_t, size_t>{850, 150}));
  plan.begin();
  plan.mark(860, 140);  // inside the last bucket, beyond offset / bucket size
  plan.mark(450, 410);  // together with the above: the part after the boundary is final
  EXPECT_EQ(plan.next_launch(), std::optional<size_t>(3));
  EXPECT_EQ(plan.next_launch(), std::optional<size_t>(2));
  EXPECT_EQ(plan.next_launch(), std::nullopt);
  plan.mark(0, 450);
  EXPECT_EQ(plan.next_launch(), std::optional<size_t>(1));
  EXPECT_EQ(plan.next_launch(), std::optional<size_t>(0));
  plan.check_complete("test");
  // Without the boundary the bucket [400, 800) waits for the part before 450.
  BucketPlan plain(1000, 400, LaunchOrder::kDescending, "Test");
  plain.begin();
  plain.mark(450, 550);
  EXPECT_EQ(plain.next_launch(), std::optional<size_t>(2));
  EXPECT_EQ(plain.next_launch(), std::nullopt);
}

TEST(BucketPlan, BucketElementsFromBytes) {
  EXPECT_EQ(bucket_elements(size_t{16} << 20, sizeof(float), "Test"), size_t{4} << 20);
  EXPECT_EQ(bucket_elements(7, sizeof(float), "Test"), 1u);
  EXPECT_NE(error_of([] { bucket_elements(3, sizeof(float), "Owner"); }).find("Owner: bucket_bytes=3"),
            std::string::npos);
}

// Whatever the marking order, buckets come out exactly once each, in the fixed order, and only once all
// of a bucket (and of every bucket before it in the order) is marked.
TEST(BucketPlan, LaunchesEachBucketOnceInTheFixedOrderWhateverTheMarkOrder) {
  for (LaunchOrder order : {LaunchOrder::kDescending, LaunchOrder::kAscending}) {
    for (unsigned seed = 0; seed < 20; ++seed) {
      const size_t total = 1000 + seed * 37;
      BucketPlan plan(total, 128, order, "Test");
      std::vector<size_t> marked_per_bucket(plan.num_buckets(), 0);
      std::vector<size_t> launched;
      plan.begin();
      for (const auto& [offset, count] : shuffled_ranges(total, seed)) {
        plan.mark(offset, count);
        for (size_t i = offset; i < offset + count; ++i) ++marked_per_bucket[i / 128];
        while (std::optional<size_t> bucket = plan.next_launch()) {
          const auto [b_offset, b_count] = plan.bucket_range(*bucket);
          EXPECT_EQ(marked_per_bucket[*bucket], b_count) << "bucket " << *bucket << " launched incomplete";
          EXPECT_EQ(b_offset, *bucket * 128);
          launched.push_back(*bucket);
        }
        ASSERT_EQ(plan.launched(), launched.size());
        // The next bucket in the order is incomplete unless all are launched.
        if (launched.size() < plan.num_buckets()) {
          const size_t next = plan.bucket_at(launched.size());
          EXPECT_LT(marked_per_bucket[next], plan.bucket_range(next).second);
        }
      }
      ASSERT_EQ(launched.size(), plan.num_buckets()) << "seed " << seed;
      for (size_t position = 0; position < launched.size(); ++position) {
        EXPECT_EQ(launched[position], plan.bucket_at(position));
      }
      EXPECT_NO_THROW(plan.check_complete("wait_all"));
      EXPECT_FALSE(plan.next_launch().has_value());
      plan.end();
      EXPECT_FALSE(plan.in_step());
    }
  }
}

TEST(BucketPlan, ANewStepStartsFromNothing) {
  BucketPlan plan(100, 50, LaunchOrder::kAscending, "Test");
  for (int step = 0; step < 3; ++step) {
    plan.begin();
    EXPECT_EQ(plan.launched(), 0u);
    EXPECT_FALSE(plan.next_launch().has_value()) << "nothing marked yet at step " << step;
    plan.mark(0, 100);
    EXPECT_EQ(plan.next_launch(), std::optional<size_t>(0));
    EXPECT_EQ(plan.next_launch(), std::optional<size_t>(1));
    EXPECT_FALSE(plan.next_launch().has_value());
    plan.check_complete("wait_all");
    plan.end();
  }
}

TEST(BucketPlan, RejectsOverlapsOutOfRangeAndMisuseNamingTheRanges) {
  BucketPlan plan(100, 50, LaunchOrder::kAscending, "Owner");
  EXPECT_NE(error_of([&] { plan.mark(0, 10); }).find("Owner::mark_ready: begin() was not called"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.check_complete("wait_all"); }).find("Owner::wait_all: begin() was not called"),
            std::string::npos);
  plan.begin();
  plan.mark(0, 10);
  plan.mark(20, 5);
  EXPECT_NE(error_of([&] { plan.mark(5, 10); }).find("range [5, 15) overlaps [0, 10)"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.mark(9, 1); }).find("overlaps [0, 10)"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.mark(15, 6); }).find("range [15, 21) overlaps [20, 25)"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.mark(24, 1); }).find("overlaps [20, 25)"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.mark(95, 10); }).find("range [95, 105) is outside the buffer of 100"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan.mark(SIZE_MAX, 2); }).find("outside the buffer"), std::string::npos);
  EXPECT_EQ(error_of([&] { plan.mark(10, 0); }), "") << "an empty range is a no-op";
  EXPECT_EQ(error_of([&] { plan.mark(10, 10); }), "") << "adjacent ranges do not overlap";
  EXPECT_NE(error_of([&] { plan.begin(); }).find("Owner::begin: the previous step was not completed"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan.check_complete("wait_all"); }).find("bucket [0, 50) has 25 of 50 elements marked"),
            std::string::npos);
  EXPECT_FALSE(plan.next_launch().has_value()) << "bucket 0 is incomplete";
  plan.mark(25, 25);
  EXPECT_EQ(plan.next_launch(), std::optional<size_t>(0));
  EXPECT_NE(error_of([&] { plan.check_complete("wait_all"); }).find("bucket [50, 100) has 0 of 50"), std::string::npos);
}

}  // namespace
}  // namespace electra::dist
