// Allreduce of the flat gradient buffer in fixed buckets over MPI, launched as backward finishes them.
//
// The buffer is cut into contiguous buckets of `bucket_bytes` (the last one shorter; BucketPlan).
// Backward calls mark_ready(offset, count) for each gradient tensor it has finished; a bucket whose whole
// range has been marked is ready, and ready buckets are launched as MPI_Iallreduce strictly in the fixed
// launch order (highest offset first by default, because backward produces the last layers first). So
// every rank issues the same collectives in the same order whatever order its tensors finish in, and each
// bucket's result is bitwise the same on every rank. wait_all() completes everything before the
// optimizer reads the buffer.
//
// Open MPI progresses non-blocking collectives only inside MPI calls, so mark_ready() also polls the
// requests in flight (MPI_Testsome): that is what lets communication overlap the rest of backward.
//
// With CUDA-aware MPI the buffer may be device memory: pass a before_launch hook that makes the bucket's
// values visible to MPI (the backend's synchronize()), and ReduceOp::kSum (kAverage scales on the host).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "lib/dist/communicator.h"
#include "lib/dist/gradient_reducer.h"

namespace electra::dist {

class MpiReducer : public GradientReducer {
 public:
  // `buffer` must stay valid and unmoved for the reducer's lifetime; it is read and written only
  // between begin() and wait_all(). Construction does no communication.
  MpiReducer(const Communicator& comm, std::span<float> buffer, GradientReducerOptions options = {});
  // Device memory through CUDA-aware MPI: `before_launch` runs before each group of MPI_Iallreduce calls
  // (it must wait until the marked values are written); the buffer is never dereferenced on the host, so
  // options.op must be kSum (fails otherwise).
  MpiReducer(const Communicator& comm, std::span<float> device_buffer, GradientReducerOptions options,
             std::function<void()> before_launch);
  ~MpiReducer() override;
  MpiReducer(const MpiReducer&) = delete;
  MpiReducer& operator=(const MpiReducer&) = delete;

  void begin() override;
  // Ranges must not overlap earlier marks of the same step (fails naming the range). Launches newly
  // startable buckets and polls those in flight.
  void mark_ready(size_t offset, size_t count) override;
  // Blocks until every bucket is reduced (averaged if asked). Fails if some range was never marked:
  // every rank must mark the whole buffer, otherwise the collectives would not match.
  void wait_all() override;
  void reduce_all() override;
  // Tests the requests in flight (MPI_Test), finishing those that completed.
  void progress() override { poll(); }

  size_t num_buckets() const override { return plan_.num_buckets(); }
  std::pair<size_t, size_t> bucket_range(size_t i) const override { return plan_.bucket_range(i); }
  const GradientReducerStats& stats() const override { return stats_; }

 private:
  void launch_ready();
  void poll();
  void finish(size_t bucket);

  const Communicator& comm_;
  std::span<float> buffer_;
  GradientReducerOptions options_;
  std::function<void()> before_launch_;  // set for device buffers (CUDA-aware MPI)
  BucketPlan plan_;
  std::vector<MPI_Request> requests_;  // one per bucket, MPI_REQUEST_NULL when not in flight
  std::vector<bool> finished_;         // per bucket: reduced (and scaled) this step
  GradientReducerStats stats_;
};

}  // namespace electra::dist
