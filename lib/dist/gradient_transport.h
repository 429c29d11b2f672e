// Which transport averages the gradients (config key dist.gradient_transport), decided once at start:
//   host            GradientReducer on a host buffer (device gradients are copied to the host and back)
//   nccl            NcclReducer on the device buffer (lib/dist/nccl_reducer.h); needs one GPU per rank
//   cuda_aware_mpi  GradientReducer on the device buffer; needs an MPI built with CUDA support
//   auto            nccl on GPUs when every rank has its own GPU, else host
// Plain C++ (no CUDA): the decision is tested on the CPU.
#pragma once

#include <string>

namespace electra::dist {

inline constexpr const char* kGradientTransportKey = "dist.gradient_transport";

enum class GradientTransport { kAuto, kHost, kNccl, kCudaAwareMpi };

// "auto" | "host" | "nccl" | "cuda_aware_mpi"; fails naming the key and the accepted values.
GradientTransport parse_gradient_transport(const std::string& name);
std::string to_string(GradientTransport transport);

// What the choice depends on, as seen by one rank.
struct TransportSituation {
  bool gpu = false;       // the rank trains on a GPU (--device cuda)
  int ranks_on_node = 1;  // ranks sharing this node (Communicator::local_size)
  int gpus_on_node = 0;   // CUDA devices visible to this rank
};

// The transport to use (never kAuto). Fails naming the key when nccl or cuda_aware_mpi is asked for on
// the CPU, and when nccl is asked for with more ranks than GPUs on the node (NCCL refuses two ranks on one
// GPU). Whether MPI is CUDA-aware is not checked here: see query_cuda_aware_mpi.
GradientTransport resolve_gradient_transport(GradientTransport configured, const TransportSituation& situation);

struct CudaAwareMpiSupport {
  bool available = false;
  std::string reason;  // why not (empty when available)
};

// Whether this MPI accepts device pointers in collectives: MPIX_Query_cuda_support() from Open MPI's
// <mpi-ext.h>, asked at run time (the library may differ from the headers built against). Call after
// MPI_Init. Never throws.
CudaAwareMpiSupport query_cuda_aware_mpi() noexcept;

}  // namespace electra::dist
