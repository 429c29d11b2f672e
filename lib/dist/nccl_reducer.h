// Gradient averaging of a DEVICE buffer with NCCL, for --device cuda: the same buckets, launch order and
// interface as MpiReducer (BucketPlan, GradientReducer), with ncclAllReduce on a dedicated
// communication stream instead of MPI_Iallreduce on host memory. Built with the CUDA backend only
// (target electra_dist_cuda); plain C++ header, no CUDA or NCCL header needed by callers.
//
// Ordering, all on the GPU: when a bucket becomes complete, an event recorded on the backend's stream
// (cuda_stream_of) makes the communication stream wait for the backward kernels already enqueued, then
// ncclAllReduce runs there while backward goes on. wait_all() makes the backend's stream wait on the
// communication stream, so the optimizer (enqueued on the backend's stream) reads reduced gradients
// without any host synchronisation. The host also waits (bounded, see NcclWaitOptions), polling
// ncclCommGetAsyncError, so that a hung or failed NCCL is reported by name instead of stalling the job.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "lib/backend/backend.h"
#include "lib/dist/communicator.h"
#include "lib/dist/gradient_reducer.h"

struct ncclComm;  // NCCL's opaque communicator (ncclComm_t is ncclComm*)

namespace electra::dist {

// An NCCL communicator over the ranks of an MPI communicator, one GPU per rank (NCCL refuses two ranks
// on one GPU).
class NcclCommunicator {
 public:
  // Collective over `comm`: rank 0 makes the id (ncclGetUniqueId), MPI broadcasts it, every rank joins
  // with ncclCommInitRank on CUDA device `device`. Fails naming the NCCL call and NCCL's last error.
  NcclCommunicator(const Communicator& comm, int device);
  // ncclCommFinalize + ncclCommDestroy after a clean run; ncclCommAbort after abort() or while an
  // exception unwinds (the other ranks may never issue the matching collectives, so nothing may wait).
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  ncclComm* handle() const { return comm_; }  // nullptr once aborted
  int device() const { return device_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool aborted() const { return comm_ == nullptr; }

  // Fails naming `where` and NCCL's message when NCCL recorded an asynchronous error
  // (ncclCommGetAsyncError); the communicator is aborted first.
  void check_async_error(const char* where);
  // ncclCommAbort now: collectives in flight end (their kernels exit) and later use fails. Idempotent.
  void abort() noexcept;

 private:
  ncclComm* comm_ = nullptr;
  int device_ = 0;
  int rank_ = 0;
  int world_size_ = 1;
};

// The PCI bus id of CUDA device `device` ("0000:3b:00.0"): names a GPU across processes whatever
// CUDA_VISIBLE_DEVICES says (for find_shared_gpus, gradient_transport.h).
std::string cuda_pci_bus_id(int device);

struct NcclWaitOptions {
  // Longest host wait for one step's reductions before NCCL is declared hung (communicator aborted, the
  // error names the step's wait). Keep it below train.step_timeout so that this message comes first.
  double timeout_seconds = 600;
  // true: wait_all() also blocks the host (bounded) until the reductions are done. false: wait_all()
  // only orders the backend's stream after them and returns; the bounded host check happens in the
  // next begin() (or the destructor).
  bool block_host = true;
};

class NcclReducer : public GradientReducer {
 public:
  // `device_buffer` holds `count` floats on the GPU of `backend` (a CUDA backend, same device as `nccl`)
  // and must outlive the reducer. Creates the communication stream and its events; no communication.
  NcclReducer(NcclCommunicator& nccl, Backend<float>& backend, float* device_buffer, size_t count,
              GradientReducerOptions options = {}, NcclWaitOptions wait = {});
  ~NcclReducer() override;
  NcclReducer(const NcclReducer&) = delete;
  NcclReducer& operator=(const NcclReducer&) = delete;

  void begin() override;
  // The range's values are those written by the work enqueued on the backend's stream before this call.
  void mark_ready(size_t offset, size_t count) override;
  // Orders the backend's stream after every reduction; then the bounded host wait (NcclWaitOptions).
  // kAverage uses ncclAvg. Fails if some range was never marked, before issuing anything more.
  void wait_all() override;
  void reduce_all() override;

  size_t num_buckets() const override { return plan_.num_buckets(); }
  std::pair<size_t, size_t> bucket_range(size_t i) const override { return plan_.bucket_range(i); }
  // wait_seconds: host time in the bounded wait (0 with block_host = false).
  const GradientReducerStats& stats() const override { return stats_; }

 private:
  struct CudaObjects;  // streams and events (cuda_runtime types stay out of this header)

  void launch_ready();
  void wait_on_host(const char* where);

  NcclCommunicator& nccl_;
  float* buffer_ = nullptr;
  size_t count_ = 0;
  GradientReducerOptions options_;
  NcclWaitOptions wait_;
  BucketPlan plan_;
  std::unique_ptr<CudaObjects> cuda_;
  bool host_check_pending_ = false;  // block_host = false: the last step's reductions are not yet seen done
  GradientReducerStats stats_;
};

}  // namespace electra::dist
