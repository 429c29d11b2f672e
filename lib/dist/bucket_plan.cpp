#include "lib/dist/bucket_plan.h"

#include <algorithm>
#include <iterator>

#include "lib/core/error.h"

namespace electra::dist {

size_t bucket_elements(size_t bucket_bytes, size_t element_bytes, const std::string& owner) {
  const size_t elements = bucket_bytes / element_bytes;
  if (elements == 0) fail(owner, ": bucket_bytes=", bucket_bytes, " holds no element of ", element_bytes, " bytes");
  return elements;
}

BucketPlan::BucketPlan(size_t total_elements, size_t elements_per_bucket, LaunchOrder order, std::string owner,
                       std::vector<size_t> boundaries)
    : total_(total_elements), per_bucket_(elements_per_bucket), owner_(std::move(owner)) {
  if (per_bucket_ == 0) fail(owner_, ": a bucket of 0 elements cannot cover a buffer of ", total_);
  boundaries.push_back(total_);
  std::sort(boundaries.begin(), boundaries.end());
  size_t segment_begin = 0;
  for (const size_t segment_end : boundaries) {
    if (segment_end <= segment_begin || segment_end > total_) continue;
    for (size_t offset = segment_begin; offset < segment_end; offset += per_bucket_) {
      buckets_.push_back(Bucket{offset, std::min(per_bucket_, segment_end - offset)});
    }
    segment_begin = segment_end;
  }
  for (size_t i = 0; i < buckets_.size(); ++i) {
    launch_order_.push_back(order == LaunchOrder::kAscending ? i : buckets_.size() - 1 - i);
  }
}

void BucketPlan::begin() {
  if (in_step_) fail(owner_, "::begin: the previous step was not completed with wait_all()");
  for (Bucket& bucket : buckets_) bucket.marked = 0;
  next_launch_ = 0;
  marked_.clear();
  in_step_ = true;
}

void BucketPlan::mark(size_t offset, size_t count) {
  if (!in_step_) fail(owner_, "::mark_ready: begin() was not called");
  if (count == 0) return;
  const size_t end = offset + count;
  if (end > total_ || end < offset) {
    fail(owner_, "::mark_ready: range [", offset, ", ", end, ") is outside the buffer of ", total_);
  }
  // Overlap with the nearest ranges on either side.
  auto next = marked_.lower_bound(offset);
  if (next != marked_.end() && next->first < end) {
    fail(owner_, "::mark_ready: range [", offset, ", ", end, ") overlaps [", next->first, ", ", next->second,
         ") marked earlier in this step");
  }
  if (next != marked_.begin()) {
    auto previous = std::prev(next);
    if (previous->second > offset) {
      fail(owner_, "::mark_ready: range [", offset, ", ", end, ") overlaps [", previous->first, ", ", previous->second,
           ") marked earlier in this step");
    }
  }
  marked_.emplace(offset, end);

  // The first bucket touched: the last one starting at or before `offset` (buckets are not all of one
  // size when boundaries cut them; the first starts at 0).
  const auto after = std::upper_bound(buckets_.begin(), buckets_.end(), offset,
                                      [](size_t value, const Bucket& bucket) { return value < bucket.offset; });
  for (size_t b = static_cast<size_t>(std::distance(buckets_.begin(), after)) - 1;
       b < buckets_.size() && buckets_[b].offset < end; ++b) {
    Bucket& bucket = buckets_[b];
    const size_t lo = std::max(offset, bucket.offset);
    const size_t hi = std::min(end, bucket.offset + bucket.count);
    bucket.marked += hi - lo;
  }
}

std::optional<size_t> BucketPlan::next_launch() {
  if (!in_step_ || next_launch_ == launch_order_.size()) return std::nullopt;
  const size_t index = launch_order_[next_launch_];
  // The fixed order stops at the first incomplete bucket, even when later ones are complete.
  if (buckets_[index].marked != buckets_[index].count) return std::nullopt;
  ++next_launch_;
  return index;
}

void BucketPlan::check_complete(const char* operation) const {
  if (!in_step_) fail(owner_, "::", operation, ": begin() was not called");
  for (const Bucket& bucket : buckets_) {
    if (bucket.marked != bucket.count) {
      fail(owner_, "::", operation, ": bucket [", bucket.offset, ", ", bucket.offset + bucket.count, ") has ",
           bucket.marked, " of ", bucket.count, " elements marked ready; every rank must mark the whole buffer");
    }
  }
}

}  // namespace electra::dist
