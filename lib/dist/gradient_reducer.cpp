#include "lib/dist/gradient_reducer.h"

#include <chrono>
#include <climits>
#include <exception>

#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::dist {
namespace {

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) fail("GradientReducer: ", what, " failed with MPI error ", rc);
}

}  // namespace

GradientReducer::GradientReducer(const Communicator& comm, std::span<float> buffer, GradientReducerOptions options)
    : comm_(comm), buffer_(buffer), options_(options) {
  const size_t per_bucket = options_.bucket_bytes / sizeof(float);
  if (per_bucket == 0) fail("GradientReducer: bucket_bytes=", options_.bucket_bytes, " holds no float");
  if (per_bucket > static_cast<size_t>(INT_MAX)) {
    fail("GradientReducer: bucket_bytes=", options_.bucket_bytes, " exceeds one MPI message (INT_MAX floats)");
  }
  for (size_t offset = 0; offset < buffer_.size(); offset += per_bucket) {
    buckets_.push_back(Bucket{offset, std::min(per_bucket, buffer_.size() - offset)});
  }
  for (size_t i = 0; i < buckets_.size(); ++i) {
    launch_order_.push_back(options_.order == LaunchOrder::kAscending ? i : buckets_.size() - 1 - i);
  }
  requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
}

GradientReducer::~GradientReducer() {
  size_t in_flight = 0;
  for (const MPI_Request& request : requests_) in_flight += request != MPI_REQUEST_NULL;
  if (in_flight == 0) return;
  if (std::uncaught_exceptions() > 0) {
    // Unwinding towards run_rank_main's abort: waiting could hang if the other ranks never issue the
    // matching collectives, and requests of collectives cannot be cancelled. Leave them to MPI_Abort.
    ELECTRA_LOG(error) << "GradientReducer destroyed by an exception with " << in_flight
                       << " reductions in flight; the job must be aborted";
    return;
  }
  // A step abandoned without an error: complete it, so MPI never writes into a freed buffer.
  for (MPI_Request& request : requests_) {
    if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
  }
}

void GradientReducer::begin() {
  if (in_step_) fail("GradientReducer::begin: the previous step was not completed with wait_all()");
  for (Bucket& bucket : buckets_) bucket = Bucket{bucket.offset, bucket.count};
  next_launch_ = 0;
  marked_.clear();
  in_step_ = true;
}

void GradientReducer::mark_ready(size_t offset, size_t count) {
  if (!in_step_) fail("GradientReducer::mark_ready: begin() was not called");
  if (count == 0) return;
  const size_t end = offset + count;
  if (end > buffer_.size() || end < offset) {
    fail("GradientReducer::mark_ready: range [", offset, ", ", end, ") is outside the buffer of ", buffer_.size());
  }
  // Overlap with the nearest ranges on either side.
  auto next = marked_.lower_bound(offset);
  if (next != marked_.end() && next->first < end) {
    fail("GradientReducer::mark_ready: range [", offset, ", ", end, ") overlaps [", next->first, ", ", next->second,
         ") marked earlier in this step");
  }
  if (next != marked_.begin()) {
    auto previous = std::prev(next);
    if (previous->second > offset) {
      fail("GradientReducer::mark_ready: range [", offset, ", ", end, ") overlaps [", previous->first, ", ",
           previous->second, ") marked earlier in this step");
    }
  }
  marked_.emplace(offset, end);

  const size_t per_bucket = buckets_.empty() ? 1 : buckets_[0].count;
  for (size_t b = offset / per_bucket; b < buckets_.size() && buckets_[b].offset < end; ++b) {
    Bucket& bucket = buckets_[b];
    const size_t lo = std::max(offset, bucket.offset);
    const size_t hi = std::min(end, bucket.offset + bucket.count);
    bucket.marked += hi - lo;
  }
  launch_ready();
  poll();
}

void GradientReducer::launch_ready() {
  while (next_launch_ < launch_order_.size()) {
    const size_t index = launch_order_[next_launch_];
    Bucket& bucket = buckets_[index];
    if (bucket.marked != bucket.count) return;  // the fixed order stops at the first unfinished bucket
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buffer_.data() + bucket.offset, static_cast<int>(bucket.count), MPI_FLOAT,
                             MPI_SUM, comm_.comm(), &requests_[index]),
              "MPI_Iallreduce");
    ++stats_.buckets_launched;
    ++next_launch_;
  }
}

void GradientReducer::poll() {
  if (next_launch_ == 0) return;
  int flag = 0;
  for (size_t i = 0; i < next_launch_; ++i) {
    const size_t index = launch_order_[i];
    if (buckets_[index].finished) continue;
    check_mpi(MPI_Test(&requests_[index], &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (flag) finish(index);
  }
}

void GradientReducer::finish(size_t index) {
  Bucket& bucket = buckets_[index];
  if (options_.op == ReduceOp::kAverage) {
    const float scale = 1.0f / static_cast<float>(comm_.world_size());
    float* data = buffer_.data() + bucket.offset;
    for (size_t i = 0; i < bucket.count; ++i) data[i] *= scale;
  }
  bucket.finished = true;
}

void GradientReducer::wait_all() {
  if (!in_step_) fail("GradientReducer::wait_all: begin() was not called");
  for (const Bucket& bucket : buckets_) {
    if (bucket.marked != bucket.count) {
      fail("GradientReducer::wait_all: bucket [", bucket.offset, ", ", bucket.offset + bucket.count, ") has ",
           bucket.marked, " of ", bucket.count, " elements marked ready; every rank must mark the whole buffer");
    }
  }
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < launch_order_.size(); ++i) {
    const size_t index = launch_order_[i];
    if (buckets_[index].finished) continue;
    check_mpi(MPI_Wait(&requests_[index], MPI_STATUS_IGNORE), "MPI_Wait");
    finish(index);
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.last_wait_seconds = waited;
  stats_.wait_seconds += waited;
  ++stats_.steps;
  in_step_ = false;
}

void GradientReducer::reduce_all() {
  begin();
  mark_ready(0, buffer_.size());
  wait_all();
}

}  // namespace electra::dist
