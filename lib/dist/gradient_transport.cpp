#include "lib/dist/gradient_transport.h"

#include <mpi.h>
#include <unistd.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <cstdio>
#include <map>

#include "lib/core/error.h"
#include "lib/core/host.h"

namespace electra::dist {

GradientTransport parse_gradient_transport(const std::string& name) {
  if (name == "auto") return GradientTransport::kAuto;
  if (name == "host") return GradientTransport::kHost;
  if (name == "nccl") return GradientTransport::kNccl;
  if (name == "cuda_aware_mpi") return GradientTransport::kCudaAwareMpi;
  fail("config key '", kGradientTransportKey, "': unknown transport '", name,
       "' (accepted: auto, host, nccl, cuda_aware_mpi)");
}

std::string to_string(GradientTransport transport) {
  switch (transport) {
    case GradientTransport::kAuto:
      return "auto";
    case GradientTransport::kHost:
      return "host";
    case GradientTransport::kNccl:
      return "nccl";
    case GradientTransport::kCudaAwareMpi:
      return "cuda_aware_mpi";
  }
  return "?";
}

GradientTransport resolve_gradient_transport(GradientTransport configured, const TransportSituation& situation) {
  switch (configured) {
    case GradientTransport::kAuto:
      return situation.gpu && situation.shared_gpu.empty() ? GradientTransport::kNccl : GradientTransport::kHost;
    case GradientTransport::kHost:
      return GradientTransport::kHost;
    case GradientTransport::kNccl:
    case GradientTransport::kCudaAwareMpi:
      if (!situation.gpu) {
        fail("config key '", kGradientTransportKey, "' = ", to_string(configured),
             " reduces device buffers and needs --device cuda; on the CPU use 'host' or 'auto'");
      }
      if (configured == GradientTransport::kNccl && !situation.shared_gpu.empty()) {
        fail("config key '", kGradientTransportKey, "' = nccl needs one GPU per rank, but ", situation.shared_gpu,
             " (NCCL refuses two ranks on one GPU); use 'host' or one rank per GPU");
      }
      return configured;
  }
  return GradientTransport::kHost;
}

std::string describe_shared_gpu(const std::vector<std::string>& gpu_ids) {
  std::map<std::string, size_t> first_rank;
  for (size_t rank = 0; rank < gpu_ids.size(); ++rank) {
    const auto [it, inserted] = first_rank.emplace(gpu_ids[rank], rank);
    if (!inserted) {
      return "ranks " + std::to_string(it->second) + " and " + std::to_string(rank) + " share GPU " + gpu_ids[rank];
    }
  }
  return "";
}

std::string find_shared_gpus(const Communicator& comm, const std::string& pci_bus_id) {
  const std::vector<std::string> ids = comm.gather_strings(pci_bus_id + " on " + host_name());
  std::string shared = comm.is_root() ? describe_shared_gpu(ids) : "";
  comm.broadcast(shared);
  return shared;
}

CudaAwareMpiSupport query_cuda_aware_mpi() noexcept {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  // The run-time answer decides: the library may have been built with CUDA although these headers say 0.
  const int support = MPIX_Query_cuda_support();
  if (support == 1) return {true, ""};
  return {false, "this MPI library is not CUDA-aware (MPIX_Query_cuda_support() returned " + std::to_string(support) +
                     "; headers built with MPIX_CUDA_AWARE_SUPPORT=" + std::to_string(MPIX_CUDA_AWARE_SUPPORT) + ")"};
#else
  return {false, "this MPI cannot say whether it is CUDA-aware (<mpi-ext.h> defines no MPIX_CUDA_AWARE_SUPPORT)"};
#endif
}

}  // namespace electra::dist
