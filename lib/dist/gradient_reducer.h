// Allreduce of the flat gradient buffer in fixed buckets, launched as backward finishes them.
//
// The buffer is cut into contiguous buckets of `bucket_bytes` (the last one shorter). Backward calls
// mark_ready(offset, count) for each gradient tensor it has finished; a bucket whose whole range has
// been marked is ready, and ready buckets are launched as MPI_Iallreduce strictly in the fixed launch
// order (highest offset first by default, because backward produces the last layers first). So every
// rank issues the same collectives in the same order whatever order its tensors finish in, and each
// bucket's result is bitwise the same on every rank. wait_all() completes everything before the
// optimizer reads the buffer.
//
// Open MPI progresses non-blocking collectives only inside MPI calls, so mark_ready() also polls the
// requests in flight (MPI_Testsome): that is what lets communication overlap the rest of backward.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "lib/dist/communicator.h"

namespace electra::dist {

enum class ReduceOp { kSum, kAverage };
enum class LaunchOrder {
  kDescending,  // bucket n-1 first: backward finishes the end of the parameter layout first
  kAscending,
};

struct GradientReducerOptions {
  size_t bucket_bytes = size_t{16} << 20;
  ReduceOp op = ReduceOp::kAverage;
  LaunchOrder order = LaunchOrder::kDescending;
};

struct GradientReducerStats {
  int64_t steps = 0;             // completed wait_all() calls
  int64_t buckets_launched = 0;  // MPI_Iallreduce calls
  double wait_seconds = 0;       // time blocked in wait_all(), summed over steps
  double last_wait_seconds = 0;  // the last wait_all()
};

class GradientReducer {
 public:
  // `buffer` must stay valid and unmoved for the reducer's lifetime; it is read and written only
  // between begin() and wait_all(). Construction does no communication.
  GradientReducer(const Communicator& comm, std::span<float> buffer, GradientReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Starts a step: no range marked, no bucket launched. Fails if the previous step was not waited for.
  void begin();
  // Declares [offset, offset + count) final for this step. Ranges must not overlap earlier marks of the
  // same step (fails naming the range). Launches newly startable buckets and polls those in flight.
  void mark_ready(size_t offset, size_t count);
  // Blocks until every bucket is reduced (averaged if asked). Fails if some range was never marked:
  // every rank must mark the whole buffer, otherwise the collectives would not match.
  void wait_all();
  // The blocking path: begin(), mark everything, wait_all().
  void reduce_all();

  size_t num_buckets() const { return buckets_.size(); }
  // [offset, offset + count) of bucket i in buffer elements.
  std::pair<size_t, size_t> bucket_range(size_t i) const { return {buckets_[i].offset, buckets_[i].count}; }
  const GradientReducerStats& stats() const { return stats_; }

 private:
  struct Bucket {
    size_t offset = 0;
    size_t count = 0;
    size_t marked = 0;  // elements marked this step
    bool finished = false;
  };

  void launch_ready();
  void poll();
  void finish(size_t bucket);

  const Communicator& comm_;
  std::span<float> buffer_;
  GradientReducerOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> launch_order_;   // bucket indices in launch order
  size_t next_launch_ = 0;             // position in launch_order_
  std::vector<MPI_Request> requests_;  // one per bucket, MPI_REQUEST_NULL when not in flight
  std::map<size_t, size_t> marked_;    // offset -> end of ranges marked this step (overlap check)
  bool in_step_ = false;
  GradientReducerStats stats_;
};

}  // namespace electra::dist
