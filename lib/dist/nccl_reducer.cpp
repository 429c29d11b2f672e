#include "lib/dist/nccl_reducer.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>
#include <thread>

#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

static_assert(NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0),
              "ncclCommFinalize and ncclInProgress need NCCL 2.14 or newer (ncclAvg 2.10, ncclGetLastError 2.13)");

namespace electra::dist {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail_cuda(const char* owner, const char* call, cudaError_t error) {
  fail(owner, ": CUDA call ", call, " failed: ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
}

// NCCL's last error is per thread and says more than the result code (which peer, which transport).
[[noreturn]] void fail_nccl(const char* owner, const char* call, ncclResult_t result, ncclComm_t comm) {
  const char* last = ncclGetLastError(comm);
  fail(owner, ": NCCL call ", call, " failed: ", ncclGetErrorString(result), " (", last && *last ? last : "no detail",
       ")");
}

#define NCCL_REDUCER_CUDA_CHECK(owner, call)        \
  do {                                              \
    const cudaError_t nccl_reducer_error_ = (call); \
    if (nccl_reducer_error_ != cudaSuccess) {       \
      fail_cuda(owner, #call, nccl_reducer_error_); \
    }                                               \
  } while (0)

#define NCCL_REDUCER_NCCL_CHECK(owner, comm, call)           \
  do {                                                       \
    const ncclResult_t nccl_reducer_result_ = (call);        \
    if (nccl_reducer_result_ != ncclSuccess) {               \
      fail_nccl(owner, #call, nccl_reducer_result_, (comm)); \
    }                                                        \
  } while (0)

constexpr const char* kCommunicator = "NcclCommunicator";
constexpr const char* kReducer = "NcclReducer";

}  // namespace

// ---- NcclCommunicator ----

NcclCommunicator::NcclCommunicator(const Communicator& comm, int device)
    : device_(device), rank_(comm.rank()), world_size_(comm.world_size()) {
  NCCL_REDUCER_CUDA_CHECK(kCommunicator, cudaSetDevice(device_));
  // The root's result travels with the id: a root that fails must not leave the others in the broadcast.
  struct {
    ncclUniqueId id;
    ncclResult_t result;
  } bootstrap{};
  if (comm.is_root()) bootstrap.result = ncclGetUniqueId(&bootstrap.id);
  comm.broadcast(&bootstrap, sizeof(bootstrap), 0);
  if (bootstrap.result != ncclSuccess)
    fail_nccl(kCommunicator, "ncclGetUniqueId (on rank 0)", bootstrap.result, nullptr);
  ncclComm_t created = nullptr;
  NCCL_REDUCER_NCCL_CHECK(kCommunicator, nullptr, ncclCommInitRank(&created, world_size_, bootstrap.id, rank_));
  comm_ = created;
  int version = 0;
  NCCL_REDUCER_NCCL_CHECK(kCommunicator, comm_, ncclGetVersion(&version));
  ELECTRA_LOG(info) << "NCCL " << version << " communicator: rank " << rank_ << " of " << world_size_
                    << " on CUDA device " << device_;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  if (std::uncaught_exceptions() > 0) {
    ELECTRA_LOG(error) << "NCCL communicator aborted while an exception unwinds";
    abort();
    return;
  }
  cudaSetDevice(device_);
  // Finalize flushes what is in flight; a failure there leaves nothing to do but abort.
  ncclResult_t result = ncclCommFinalize(comm_);
  if (result != ncclSuccess) {
    ELECTRA_LOG(error) << "ncclCommFinalize failed: " << ncclGetErrorString(result) << " (" << ncclGetLastError(comm_)
                       << "); aborting the NCCL communicator";
    abort();
    return;
  }
  result = ncclCommDestroy(comm_);
  if (result != ncclSuccess) ELECTRA_LOG(error) << "ncclCommDestroy failed: " << ncclGetErrorString(result);
  comm_ = nullptr;
}

void NcclCommunicator::check_async_error(const char* where) {
  if (comm_ == nullptr) fail(kCommunicator, ": ", where, ": the NCCL communicator was aborted after an earlier error");
  ncclResult_t async = ncclSuccess;
  const ncclResult_t result = ncclCommGetAsyncError(comm_, &async);
  if (result != ncclSuccess) {
    const std::string last = ncclGetLastError(comm_);
    abort();
    fail(kCommunicator, ": ", where, ": ncclCommGetAsyncError failed: ", ncclGetErrorString(result), " (", last,
         "); communicator aborted");
  }
  if (async != ncclSuccess && async != ncclInProgress) {
    const std::string last = ncclGetLastError(comm_);
    abort();
    fail(kCommunicator, ": ", where, ": NCCL reported an asynchronous error: ", ncclGetErrorString(async), " (", last,
         "); communicator aborted");
  }
}

void NcclCommunicator::abort() noexcept {
  if (comm_ == nullptr) return;
  cudaSetDevice(device_);
  const ncclResult_t result = ncclCommAbort(comm_);
  if (result != ncclSuccess) ELECTRA_LOG(error) << "ncclCommAbort failed: " << ncclGetErrorString(result);
  comm_ = nullptr;
}

std::string cuda_pci_bus_id(int device) {
  char bus_id[64] = {};
  NCCL_REDUCER_CUDA_CHECK("cuda_pci_bus_id", cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device));
  return bus_id;
}

// ---- NcclReducer ----

struct NcclReducer::CudaObjects {
  int device = 0;
  cudaStream_t compute = nullptr;        // the backend's stream (not owned)
  cudaStream_t communication = nullptr;  // ours: every ncclAllReduce of this reducer
  cudaEvent_t ready = nullptr;           // recorded on compute when buckets become complete
  cudaEvent_t done = nullptr;            // recorded on communication at wait_all()
};

NcclReducer::NcclReducer(NcclCommunicator& nccl, Backend<float>& backend, float* device_buffer, size_t count,
                         GradientReducerOptions options, NcclWaitOptions wait)
    : nccl_(nccl),
      buffer_(device_buffer),
      count_(count),
      options_(options),
      wait_(wait),
      plan_(count, bucket_elements(options.bucket_bytes, sizeof(float), kReducer), options.order, kReducer,
            options.boundaries),
      cuda_(std::make_unique<CudaObjects>()) {
  if (backend.device() != DeviceKind::kCuda) fail(kReducer, ": needs a CUDA backend, got '", backend.name(), "'");
  if (count_ > 0 && buffer_ == nullptr) fail(kReducer, ": null device buffer for ", count_, " floats");
  if (!(wait_.timeout_seconds > 0)) fail(kReducer, ": timeout_seconds must be positive, got ", wait_.timeout_seconds);
  cuda_->device = cuda_device_of(backend);
  if (cuda_->device != nccl_.device()) {
    fail(kReducer, ": the backend runs on CUDA device ", cuda_->device, " but the NCCL communicator on device ",
         nccl_.device());
  }
  cuda_->compute = static_cast<cudaStream_t>(cuda_stream_of(backend));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaSetDevice(cuda_->device));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaStreamCreateWithFlags(&cuda_->communication, cudaStreamNonBlocking));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaEventCreateWithFlags(&cuda_->ready, cudaEventDisableTiming));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaEventCreateWithFlags(&cuda_->done, cudaEventDisableTiming));
}

NcclReducer::~NcclReducer() {
  const bool abandoned_step = plan_.in_step() && plan_.launched() > 0;
  if ((abandoned_step || host_check_pending_) && !nccl_.aborted()) {
    if (std::uncaught_exceptions() > 0) {
      // The other ranks may never issue the matching collectives: abort instead of waiting forever.
      ELECTRA_LOG(error) << "NcclReducer destroyed by an exception with reductions in flight; aborting NCCL";
      nccl_.abort();
    } else {
      try {
        // A step abandoned without an error: let its collectives finish before the buffer may be freed.
        if (abandoned_step) NCCL_REDUCER_CUDA_CHECK(kReducer, cudaEventRecord(cuda_->done, cuda_->communication));
        wait_on_host("~NcclReducer");
      } catch (const std::exception& e) {
        ELECTRA_LOG(error) << e.what();
      }
    }
  }
  cudaSetDevice(cuda_->device);
  // After an abort the collectives' kernels have exited, so the stream drains.
  if (cuda_->communication != nullptr) cudaStreamSynchronize(cuda_->communication);
  if (cuda_->ready != nullptr) cudaEventDestroy(cuda_->ready);
  if (cuda_->done != nullptr) cudaEventDestroy(cuda_->done);
  if (cuda_->communication != nullptr) cudaStreamDestroy(cuda_->communication);
}

void NcclReducer::begin() {
  plan_.begin();
  if (host_check_pending_) {
    host_check_pending_ = false;
    wait_on_host("begin (the previous step's reductions)");
  }
}

void NcclReducer::mark_ready(size_t offset, size_t count) {
  plan_.mark(offset, count);
  if (count == 0) return;
  launch_ready();
}

void NcclReducer::launch_ready() {
  bool ordered = false;
  while (std::optional<size_t> index = plan_.next_launch()) {
    if (nccl_.aborted()) fail(kReducer, ": the NCCL communicator was aborted after an earlier error");
    if (!ordered) {
      // One event covers every bucket completed by this mark: all their writes are already enqueued.
      NCCL_REDUCER_CUDA_CHECK(kReducer, cudaSetDevice(cuda_->device));
      NCCL_REDUCER_CUDA_CHECK(kReducer, cudaEventRecord(cuda_->ready, cuda_->compute));
      NCCL_REDUCER_CUDA_CHECK(kReducer, cudaStreamWaitEvent(cuda_->communication, cuda_->ready, 0));
      ordered = true;
    }
    const auto [offset, count] = plan_.bucket_range(*index);
    float* data = buffer_ + offset;
    const ncclRedOp_t op = options_.op == ReduceOp::kAverage ? ncclAvg : ncclSum;
    NCCL_REDUCER_NCCL_CHECK(kReducer, nccl_.handle(),
                            ncclAllReduce(data, data, count, ncclFloat32, op, nccl_.handle(), cuda_->communication));
    ++stats_.buckets_launched;
  }
}

void NcclReducer::wait_all() {
  plan_.check_complete("wait_all");  // complete marks have launched every bucket
  if (nccl_.aborted()) fail(kReducer, ": the NCCL communicator was aborted after an earlier error");
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaSetDevice(cuda_->device));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaEventRecord(cuda_->done, cuda_->communication));
  NCCL_REDUCER_CUDA_CHECK(kReducer, cudaStreamWaitEvent(cuda_->compute, cuda_->done, 0));
  double waited = 0;
  if (wait_.block_host) {
    const auto start = Clock::now();
    wait_on_host("wait_all");
    waited = std::chrono::duration<double>(Clock::now() - start).count();
  } else {
    host_check_pending_ = true;
  }
  stats_.last_wait_seconds = waited;
  stats_.wait_seconds += waited;
  ++stats_.steps;
  plan_.end();
}

void NcclReducer::reduce_all() {
  begin();
  mark_ready(0, count_);
  wait_all();
}

// Polls the `done` event with short sleeps (no busy core while NCCL works), checking NCCL's asynchronous
// error state, until the deadline: a peer that died or stopped issuing collectives shows up here.
void NcclReducer::wait_on_host(const char* where) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(wait_.timeout_seconds);
  auto pause = std::chrono::microseconds(20);
  while (true) {
    const cudaError_t state = cudaEventQuery(cuda_->done);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) {
      nccl_.abort();
      fail_cuda(kReducer, "cudaEventQuery (gradient allreduce completion)", state);
    }
    nccl_.check_async_error(where);
    if (Clock::now() > deadline) {
      nccl_.abort();
      fail(kReducer, "::", where, ": the gradient allreduce did not complete within ", wait_.timeout_seconds,
           " s (NCCL hang: a rank died, stopped issuing collectives, or the network stalled); NCCL communicator "
           "aborted");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

}  // namespace electra::dist
