// The transport-independent half of a bucketed gradient allreduce: how a flat buffer is cut into
// buckets, which ranges of it backward has declared final this step, and the fixed order in which
// complete buckets may be launched. MpiReducer (host MPI) and the device reducers (NCCL, CUDA-aware
// MPI) share it, so every transport issues the same collectives in the same order on every rank,
// whatever order a rank's tensors finish in. Plain C++: it never touches the buffer.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace electra::dist {

enum class LaunchOrder {
  kDescending,  // bucket n-1 first: backward finishes the end of the parameter layout first
  kAscending,
};

// Elements of `element_bytes` in a bucket of `bucket_bytes`; fails naming `owner` when none fits.
size_t bucket_elements(size_t bucket_bytes, size_t element_bytes, const std::string& owner);

class BucketPlan {
 public:
  // Cuts [0, total_elements) into buckets of `elements_per_bucket` (the last one shorter). `owner` names
  // the reducer in error messages ("MpiReducer" gives "MpiReducer::mark_ready: ...").
  // `boundaries`: offsets that no bucket straddles (a bucket ends at each, then the cutting restarts), so
  // that a part of the buffer backward finishes early (the discriminator's gradients) is launched as soon
  // as it is final; offsets 0, total_elements and beyond, and duplicates, change nothing.
  BucketPlan(size_t total_elements, size_t elements_per_bucket, LaunchOrder order, std::string owner,
             std::vector<size_t> boundaries = {});

  size_t total_elements() const { return total_; }
  size_t num_buckets() const { return buckets_.size(); }
  // [offset, offset + count) of bucket i, in elements.
  std::pair<size_t, size_t> bucket_range(size_t bucket) const {
    return {buckets_[bucket].offset, buckets_[bucket].count};
  }
  // Bucket index launched at `position` (0 = first) of the fixed launch order.
  size_t bucket_at(size_t position) const { return launch_order_[position]; }

  // Starts a step: nothing marked, nothing launched. Fails if the previous step was not ended.
  void begin();
  bool in_step() const { return in_step_; }
  // Declares [offset, offset + count) final for this step. Fails (naming the range) outside a step,
  // outside the buffer, or when the range overlaps one marked earlier in the step. count == 0 is a no-op.
  void mark(size_t offset, size_t count);
  // The next bucket to launch, in the fixed order, when all of it is marked; nullopt when the next one
  // in the order is still incomplete (or all are launched). Each bucket is returned once per step.
  std::optional<size_t> next_launch();
  // Buckets handed out by next_launch() this step: bucket_at(0 .. launched() - 1).
  size_t launched() const { return next_launch_; }
  // Fails naming the first bucket whose range is not wholly marked: every rank must mark the whole
  // buffer, otherwise the ranks' collectives would not match.
  void check_complete(const char* operation) const;
  // Ends the step (after the transport completed every launched bucket).
  void end() { in_step_ = false; }

 private:
  struct Bucket {
    size_t offset = 0;
    size_t count = 0;
    size_t marked = 0;  // elements marked this step
  };

  size_t total_ = 0;
  size_t per_bucket_ = 1;
  std::string owner_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> launch_order_;  // bucket indices in launch order
  size_t next_launch_ = 0;            // position in launch_order_
  std::map<size_t, size_t> marked_;   // offset -> end of the ranges marked this step (overlap check)
  bool in_step_ = false;
};

}  // namespace electra::dist
