#include "lib/train/gradient_allreduce.h"

#include <cstdint>
#include <span>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/dist/gradient_reducer.h"
#if defined(ELECTRA_HAVE_NCCL)
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/dist/nccl_reducer.h"
#endif

namespace electra {

struct GradientAllreduce::NcclObjects {
#if defined(ELECTRA_HAVE_NCCL)
  std::unique_ptr<dist::NcclCommunicator> communicator;
#endif
};

void check_gradient_transport_available(dist::GradientTransport transport, const std::string& setting) {
  if (transport != dist::GradientTransport::kCudaAwareMpi) return;
  const dist::CudaAwareMpiSupport support = dist::query_cuda_aware_mpi();
  if (!support.available) fail(setting, " = cuda_aware_mpi: ", support.reason, "; use 'nccl' or 'host'");
}

GradientAllreduce::GradientAllreduce(const dist::Communicator& comm, dist::GradientTransport configured,
                                     dist::GradientTransport resolved, Backend<float>& backend, float* gradients,
                                     size_t count, const GradientAllreduceOptions& options)
    : backend_(backend), gradients_(gradients), count_(count), transport_(resolved) {
#if defined(ELECTRA_HAVE_NCCL)
  // NCCL refuses two ranks on one GPU; auto then falls back to the host path, an explicit nccl fails.
  if (transport_ == dist::GradientTransport::kNccl) {
    const std::string shared = dist::find_shared_gpus(comm, dist::cuda_pci_bus_id(cuda_device_of(backend_)));
    transport_ = dist::resolve_gradient_transport(configured, {.gpu = true, .shared_gpu = shared});
    if (!shared.empty() && comm.is_root()) ELECTRA_LOG(warning) << shared << ": NCCL cannot be used";
  }
#else
  (void)configured;
#endif
  // "auto" is resolved per rank: ranks of unlike nodes must still pick the same collectives.
  const auto chosen = static_cast<int64_t>(transport_);
  if (comm.allreduce_min(chosen) != comm.allreduce_max(chosen)) {
    fail(options.setting, ": the ranks resolved different transports (rank ", comm.rank(), ": ",
         dist::to_string(transport_), "); set it explicitly");
  }
  if (comm.is_root())
    ELECTRA_LOG(info) << "gradient allreduce: " << dist::to_string(transport_) << " (" << options.asked << ")";

  switch (transport_) {
    case dist::GradientTransport::kNccl: {
#if defined(ELECTRA_HAVE_NCCL)
      nccl_ = std::make_unique<NcclObjects>();
      nccl_->communicator = std::make_unique<dist::NcclCommunicator>(comm, cuda_device_of(backend_));
      dist::NcclWaitOptions wait;
      wait.timeout_seconds = options.nccl_timeout_seconds;
      wait.block_host = options.nccl_block_host;
      reducer_ = std::make_unique<dist::NcclReducer>(*nccl_->communicator, backend_, gradients_, count_,
                                                     options.reducer, wait);
      return;
#else
      fail(options.setting, " = nccl: this build has no NCCL (configure with -DELECTRA_CUDA=ON)");
#endif
    }
    case dist::GradientTransport::kCudaAwareMpi:
      // MPI reads the device buffer itself: the backward kernels that wrote a bucket must be finished first.
      reducer_ = std::make_unique<dist::GradientReducer>(comm, std::span<float>(gradients_, count_), options.reducer,
                                                         [this] { backend_.synchronize(); });
      return;
    case dist::GradientTransport::kHost:
    case dist::GradientTransport::kAuto:
      break;
  }
  // MPI reads host memory: device gradients go through a host copy.
  if (backend_.device() != DeviceKind::kCpu) host_gradients_.resize(count_);
  reducer_ = std::make_unique<dist::GradientReducer>(
      comm, std::span<float>(host_gradients_.empty() ? gradients_ : host_gradients_.data(), count_), options.reducer);
}

GradientAllreduce::~GradientAllreduce() {
  reducer_.reset();  // before the NCCL communicator it may use
  nccl_.reset();
}

void GradientAllreduce::begin() { reducer_->begin(); }

void GradientAllreduce::mark_ready(size_t offset, size_t count) {
  if (stages_through_host()) backend_.copy_to_host(host_gradients_.data() + offset, gradients_ + offset, count);
  reducer_->mark_ready(offset, count);
}

void GradientAllreduce::wait_all() {
  reducer_->wait_all();
  if (stages_through_host()) backend_.copy_from_host(gradients_, host_gradients_.data(), count_);
}

void GradientAllreduce::reduce_all() {
  if (stages_through_host()) backend_.copy_to_host(host_gradients_.data(), gradients_, count_);
  reducer_->reduce_all();
  if (stages_through_host()) backend_.copy_from_host(gradients_, host_gradients_.data(), count_);
}

}  // namespace electra
