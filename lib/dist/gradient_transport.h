// Which transport averages the gradients (config key dist.gradient_transport), decided once at start:
//   host            MpiReducer on a host buffer (device gradients are copied to the host and back)
//   nccl            NcclReducer on the device buffer (lib/dist/nccl_reducer.h); needs one GPU per rank
//   cuda_aware_mpi  MpiReducer on the device buffer; needs an MPI built with CUDA support
//   auto            nccl on GPUs when every rank has its own GPU, else host
// Plain C++ (no CUDA): the decision is tested on the CPU.
#pragma once

#include <string>
#include <vector>

#include "lib/dist/communicator.h"

namespace electra::dist {

inline constexpr const char* kGradientTransportKey = "dist.gradient_transport";

enum class GradientTransport { kAuto, kHost, kNccl, kCudaAwareMpi };

// "auto" | "host" | "nccl" | "cuda_aware_mpi"; fails naming the key and the accepted values.
GradientTransport parse_gradient_transport(const std::string& name);
std::string to_string(GradientTransport transport);

// What the choice depends on.
struct TransportSituation {
  bool gpu = false;        // the ranks train on GPUs (--device cuda)
  std::string shared_gpu;  // "" when every rank has its own GPU, else which ranks share one (find_shared_gpus)
};

// The transport to use (never kAuto). Fails naming the key when nccl or cuda_aware_mpi is asked for on
// the CPU, and when nccl is asked for while ranks share a GPU (NCCL refuses two ranks on one GPU).
// Whether MPI is CUDA-aware is not checked here: see query_cuda_aware_mpi.
GradientTransport resolve_gradient_transport(GradientTransport configured, const TransportSituation& situation);

// "" when the ids are distinct, else "ranks 0 and 2 share GPU <id>" for the first repeated id.
// `gpu_ids[r]` names rank r's GPU uniquely across the job (node name and PCI bus id).
std::string describe_shared_gpu(const std::vector<std::string>& gpu_ids);

// Collective: describe_shared_gpu over every rank's "<host name> <pci_bus_id>", the same on every rank.
// A rank's visible device numbers say nothing here: with one GPU per task (srun --gpus-per-task) every
// rank sees its own GPU as device 0.
std::string find_shared_gpus(const Communicator& comm, const std::string& pci_bus_id);

struct CudaAwareMpiSupport {
  bool available = false;
  std::string reason;  // why not (empty when available)
};

// Whether this MPI accepts device pointers in collectives: MPIX_Query_cuda_support() from Open MPI's
// <mpi-ext.h>, asked at run time (the library may differ from the headers built against). Call after
// MPI_Init. Never throws.
CudaAwareMpiSupport query_cuda_aware_mpi() noexcept;

}  // namespace electra::dist
