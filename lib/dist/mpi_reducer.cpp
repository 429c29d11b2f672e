#include "lib/dist/mpi_reducer.h"

#include <chrono>
#include <climits>
#include <exception>

#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::dist {
namespace {

constexpr const char* kOwner = "MpiReducer";

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) fail("MpiReducer: ", what, " failed with MPI error ", rc);
}

// Floats per bucket; one bucket must fit one MPI message (an int count).
size_t floats_per_bucket(const GradientReducerOptions& options) {
  const size_t per_bucket = bucket_elements(options.bucket_bytes, sizeof(float), kOwner);
  if (per_bucket > static_cast<size_t>(INT_MAX)) {
    fail("MpiReducer: bucket_bytes=", options.bucket_bytes, " exceeds one MPI message (INT_MAX floats)");
  }
  return per_bucket;
}

}  // namespace

MpiReducer::MpiReducer(const Communicator& comm, std::span<float> buffer, GradientReducerOptions options)
    : comm_(comm),
      buffer_(buffer),
      options_(options),
      plan_(buffer.size(), floats_per_bucket(options), options.order, kOwner, options.boundaries) {
  requests_.assign(plan_.num_buckets(), MPI_REQUEST_NULL);
  finished_.assign(plan_.num_buckets(), false);
}

MpiReducer::MpiReducer(const Communicator& comm, std::span<float> device_buffer, GradientReducerOptions options,
                       std::function<void()> before_launch)
    : MpiReducer(comm, device_buffer, options) {
  if (!before_launch) fail("MpiReducer: a device buffer needs a before_launch hook (the backend's synchronize)");
  if (options.op != ReduceOp::kSum) {
    fail("MpiReducer: a device buffer (CUDA-aware MPI) supports ReduceOp::kSum only: kAverage scales on the host");
  }
  before_launch_ = std::move(before_launch);
}

MpiReducer::~MpiReducer() {
  size_t in_flight = 0;
  for (const MPI_Request& request : requests_) in_flight += request != MPI_REQUEST_NULL;
  if (in_flight == 0) return;
  if (std::uncaught_exceptions() > 0) {
    // Unwinding towards run_rank_main's abort: waiting could hang if the other ranks never issue the
    // matching collectives, and requests of collectives cannot be cancelled. Leave them to MPI_Abort.
    ELECTRA_LOG(error) << "MpiReducer destroyed by an exception with " << in_flight
                       << " reductions in flight; the job must be aborted";
    return;
  }
  // A step abandoned without an error: complete it, so MPI never writes into a freed buffer.
  for (MPI_Request& request : requests_) {
    if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
  }
}

void MpiReducer::begin() {
  plan_.begin();
  finished_.assign(plan_.num_buckets(), false);
}

void MpiReducer::mark_ready(size_t offset, size_t count) {
  plan_.mark(offset, count);
  if (count == 0) return;
  launch_ready();
  poll();
}

void MpiReducer::launch_ready() {
  bool synchronized = false;
  while (std::optional<size_t> index = plan_.next_launch()) {
    // CUDA-aware MPI reads device memory outside the backend's stream: the values must be written first.
    if (before_launch_ && !synchronized) {
      before_launch_();
      synchronized = true;
    }
    const auto [offset, count] = plan_.bucket_range(*index);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buffer_.data() + offset, static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                             comm_.comm(), &requests_[*index]),
              "MPI_Iallreduce");
    ++stats_.buckets_launched;
  }
}

void MpiReducer::poll() {
  int flag = 0;
  for (size_t position = 0; position < plan_.launched(); ++position) {
    const size_t index = plan_.bucket_at(position);
    if (finished_[index]) continue;
    check_mpi(MPI_Test(&requests_[index], &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (flag) finish(index);
  }
}

void MpiReducer::finish(size_t index) {
  if (options_.op == ReduceOp::kAverage) {
    const auto [offset, count] = plan_.bucket_range(index);
    const float scale = 1.0f / static_cast<float>(comm_.world_size());
    float* data = buffer_.data() + offset;
    for (size_t i = 0; i < count; ++i) data[i] *= scale;
  }
  finished_[index] = true;
}

void MpiReducer::wait_all() {
  plan_.check_complete("wait_all");  // complete marks have launched every bucket
  const auto start = std::chrono::steady_clock::now();
  for (size_t position = 0; position < plan_.num_buckets(); ++position) {
    const size_t index = plan_.bucket_at(position);
    if (finished_[index]) continue;
    check_mpi(MPI_Wait(&requests_[index], MPI_STATUS_IGNORE), "MPI_Wait");
    finish(index);
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.last_wait_seconds = waited;
  stats_.wait_seconds += waited;
  ++stats_.steps;
  plan_.end();
}

void MpiReducer::reduce_all() {
  begin();
  mark_ready(0, buffer_.size());
  wait_all();
}

}  // namespace electra::dist
