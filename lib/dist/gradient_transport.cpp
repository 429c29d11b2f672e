#include "lib/dist/gradient_transport.h"

#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include "lib/core/error.h"

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
  const bool own_gpu = situation.gpus_on_node >= situation.ranks_on_node;
  switch (configured) {
    case GradientTransport::kAuto:
      return situation.gpu && own_gpu ? GradientTransport::kNccl : GradientTransport::kHost;
    case GradientTransport::kHost:
      return GradientTransport::kHost;
    case GradientTransport::kNccl:
    case GradientTransport::kCudaAwareMpi:
      if (!situation.gpu) {
        fail("config key '", kGradientTransportKey, "' = ", to_string(configured),
             " reduces device buffers and needs --device cuda; on the CPU use 'host' or 'auto'");
      }
      if (configured == GradientTransport::kNccl && !own_gpu) {
        fail("config key '", kGradientTransportKey, "' = nccl needs one GPU per rank, but ", situation.ranks_on_node,
             " ranks on this node share ", situation.gpus_on_node,
             " GPU(s) (NCCL refuses two ranks on one GPU); use 'host' or fewer ranks per node");
      }
      return configured;
  }
  return GradientTransport::kHost;
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
