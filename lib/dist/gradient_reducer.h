// What the training step needs from a gradient allreduce, whatever carries it: host MPI
// (MpiReducer), NCCL over a device buffer (NcclReducer, lib/dist/nccl_reducer.h) or CUDA-aware MPI
// over a device buffer (MpiReducer with a before_launch hook). All of them cut the buffer into the
// same buckets (BucketPlan) and launch complete buckets in the same fixed order.
//
// A step is begin(), mark_ready(offset, count) for every range of the buffer as backward finishes it
// (any order, no overlaps), then wait_all(): afterwards the buffer holds the sum (or average) over ranks,
// bitwise the same on every rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "lib/dist/bucket_plan.h"

namespace electra::dist {

enum class ReduceOp { kSum, kAverage };

struct GradientReducerOptions {
  size_t bucket_bytes = size_t{16} << 20;
  ReduceOp op = ReduceOp::kAverage;
  LaunchOrder order = LaunchOrder::kDescending;
  // Buffer offsets no bucket straddles (BucketPlan): where the discriminator's gradients begin, so that
  // its buckets launch as soon as its backward is done. Must be the same on every rank.
  std::vector<size_t> boundaries = {};
};

struct GradientReducerStats {
  int64_t steps = 0;             // completed wait_all() calls
  int64_t buckets_launched = 0;  // collectives issued (MPI_Iallreduce / ncclAllReduce)
  double wait_seconds = 0;       // time blocked in wait_all(), summed over steps
  double last_wait_seconds = 0;  // the last wait_all()
};

class GradientReducer {
 public:
  virtual ~GradientReducer() = default;

  // Starts a step: no range marked, no bucket launched. Fails if the previous step was not waited for.
  virtual void begin() = 0;
  // Declares [offset, offset + count) final for this step (fails on overlaps, naming the ranges) and
  // launches the buckets that became startable in the fixed order.
  virtual void mark_ready(size_t offset, size_t count) = 0;
  // Completes every bucket. Fails if some range was never marked.
  virtual void wait_all() = 0;
  // The blocking path: begin(), mark everything, wait_all().
  virtual void reduce_all() = 0;
  // Lets the collectives in flight advance without blocking; cheap, callable any time. MPI progresses
  // non-blocking collectives only inside MPI calls, so a caller with a long stretch of computation and
  // nothing to mark (the generator's backward after the discriminator's ranges were marked) calls this
  // now and then. NCCL progresses on its own: nothing to do.
  virtual void progress() {}

  virtual size_t num_buckets() const = 0;
  // [offset, offset + count) of bucket i in buffer elements.
  virtual std::pair<size_t, size_t> bucket_range(size_t i) const = 0;
  virtual const GradientReducerStats& stats() const = 0;
};

}  // namespace electra::dist
