#include "lib/train/rank_reducer.h"

#include <cstdint>
#include <span>
#include <vector>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/dist/mpi_reducer.h"
#if defined(ELECTRA_HAVE_NCCL)
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/dist/nccl_reducer.h"
#endif

namespace electra {
namespace {

// The host transport on a GPU: MPI reduces a host copy of the device gradients, filled range by range as
// backward finishes them and copied back once reduced.
class HostStagedReducer final : public dist::GradientReducer {
 public:
  HostStagedReducer(const dist::Communicator& comm, Backend<float>& backend, float* gradients, size_t count,
                    const dist::GradientReducerOptions& options)
      : backend_(backend), gradients_(gradients), host_(count), mpi_(comm, std::span<float>(host_), options) {}

  void begin() override { mpi_.begin(); }
  void mark_ready(size_t offset, size_t count) override {
    backend_.copy_to_host(host_.data() + offset, gradients_ + offset, count);
    mpi_.mark_ready(offset, count);
  }
  void wait_all() override {
    mpi_.wait_all();
    backend_.copy_from_host(gradients_, host_.data(), host_.size());
  }
  void reduce_all() override {
    backend_.copy_to_host(host_.data(), gradients_, host_.size());
    mpi_.reduce_all();
    backend_.copy_from_host(gradients_, host_.data(), host_.size());
  }
  void progress() override { mpi_.progress(); }
  size_t num_buckets() const override { return mpi_.num_buckets(); }
  std::pair<size_t, size_t> bucket_range(size_t i) const override { return mpi_.bucket_range(i); }
  const dist::GradientReducerStats& stats() const override { return mpi_.stats(); }

 private:
  Backend<float>& backend_;
  float* gradients_;
  std::vector<float> host_;
  dist::MpiReducer mpi_;
};

#if defined(ELECTRA_HAVE_NCCL)
// NcclReducer with the communicator it runs over (NCCL's types stay out of the header).
class OwningNcclReducer final : public dist::GradientReducer {
 public:
  OwningNcclReducer(const dist::Communicator& comm, Backend<float>& backend, float* gradients, size_t count,
                    const RankReducerOptions& options)
      : communicator_(comm, cuda_device_of(backend)),
        nccl_(communicator_, backend, gradients, count, options.reducer,
              dist::NcclWaitOptions{.timeout_seconds = options.nccl_timeout_seconds,
                                    .block_host = options.nccl_block_host}) {}

  void begin() override { nccl_.begin(); }
  void mark_ready(size_t offset, size_t count) override { nccl_.mark_ready(offset, count); }
  void wait_all() override { nccl_.wait_all(); }
  void reduce_all() override { nccl_.reduce_all(); }
  void progress() override { nccl_.progress(); }
  size_t num_buckets() const override { return nccl_.num_buckets(); }
  std::pair<size_t, size_t> bucket_range(size_t i) const override { return nccl_.bucket_range(i); }
  const dist::GradientReducerStats& stats() const override { return nccl_.stats(); }

 private:
  dist::NcclCommunicator communicator_;  // declared first: outlives the reducer that uses it
  dist::NcclReducer nccl_;
};
#endif

}  // namespace

void check_gradient_transport_available(dist::GradientTransport transport, const std::string& setting) {
  if (transport != dist::GradientTransport::kCudaAwareMpi) return;
  const dist::CudaAwareMpiSupport support = dist::query_cuda_aware_mpi();
  if (!support.available) fail(setting, " = cuda_aware_mpi: ", support.reason, "; use 'nccl' or 'host'");
}

RankReducer make_rank_reducer(const dist::Communicator& comm, dist::GradientTransport configured,
                              dist::GradientTransport resolved, Backend<float>& backend, float* gradients, size_t count,
                              const RankReducerOptions& options) {
  RankReducer out;
  out.transport = resolved;
#if defined(ELECTRA_HAVE_NCCL)
  // NCCL refuses two ranks on one GPU; auto then falls back to the host path, an explicit nccl fails.
  if (out.transport == dist::GradientTransport::kNccl) {
    const std::string shared = dist::find_shared_gpus(comm, dist::cuda_pci_bus_id(cuda_device_of(backend)));
    out.transport = dist::resolve_gradient_transport(configured, {.gpu = true, .shared_gpu = shared});
    if (!shared.empty() && comm.is_root()) ELECTRA_LOG(warning) << shared << ": NCCL cannot be used";
  }
#else
  (void)configured;
#endif
  // "auto" is resolved per rank: ranks of unlike nodes must still pick the same collectives.
  const auto chosen = static_cast<int64_t>(out.transport);
  if (comm.allreduce_min(chosen) != comm.allreduce_max(chosen)) {
    fail(options.setting, ": the ranks resolved different transports (rank ", comm.rank(), ": ",
         dist::to_string(out.transport), "); set it explicitly");
  }
  if (comm.is_root())
    ELECTRA_LOG(info) << "gradient allreduce: " << dist::to_string(out.transport) << " (" << options.asked << ")";

  switch (out.transport) {
    case dist::GradientTransport::kNccl:
#if defined(ELECTRA_HAVE_NCCL)
      out.reducer = std::make_unique<OwningNcclReducer>(comm, backend, gradients, count, options);
      return out;
#else
      fail(options.setting, " = nccl: this build has no NCCL (configure with -DELECTRA_CUDA=ON)");
#endif
    case dist::GradientTransport::kCudaAwareMpi:
      // MPI reads the device buffer itself: the backward kernels that wrote a bucket must be finished first.
      out.reducer = std::make_unique<dist::MpiReducer>(comm, std::span<float>(gradients, count), options.reducer,
                                                       [&backend] { backend.synchronize(); });
      return out;
    case dist::GradientTransport::kHost:
    case dist::GradientTransport::kAuto:
      break;
  }
  // MPI reads host memory: device gradients go through a host copy.
  if (backend.device() != DeviceKind::kCpu) {
    out.reducer = std::make_unique<HostStagedReducer>(comm, backend, gradients, count, options.reducer);
    out.stages_through_host = true;
  } else {
    out.reducer = std::make_unique<dist::MpiReducer>(comm, std::span<float>(gradients, count), options.reducer);
  }
  return out;
}

}  // namespace electra
