// The rank's gradient reducer over a resolved dist.gradient_transport (lib/dist/gradient_transport.h),
// built the same way for every program that trains (electra-train, electra-bench):
//   nccl            dist::NcclReducer on the device buffer over an NcclCommunicator bootstrapped through
//                   MPI (lib/dist/nccl_reducer.h); asked for while ranks share a GPU: auto falls back to
//                   host, an explicit nccl fails (NCCL refuses two ranks on one GPU)
//   cuda_aware_mpi  dist::MpiReducer on the device buffer, the backend synchronised before each launch
//   host            dist::MpiReducer on the buffer itself on the CPU; on a GPU on a host copy of it,
//                   filled range by range in mark_ready() and copied back in wait_all()
// Every transport cuts the buffer into the same buckets (BucketPlan) and launches them in the same order.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "lib/backend/backend.h"
#include "lib/dist/communicator.h"
#include "lib/dist/gradient_reducer.h"
#include "lib/dist/gradient_transport.h"

namespace electra {

struct RankReducerOptions {
  dist::GradientReducerOptions reducer;  // bucket size, sum or average, launch order
  // Who set the transport, at the start of error messages: "config key 'dist.gradient_transport'" or
  // "--transport" (e.g. "<setting>: the ranks resolved different transports ...").
  std::string setting = std::string("config key '") + dist::kGradientTransportKey + "'";
  // What the user asked for, in the log line "gradient allreduce: nccl (<asked>)".
  std::string asked = std::string(dist::kGradientTransportKey) + " = auto";
  // NcclWaitOptions: the longest host wait for one step's reductions before NCCL is declared hung, and
  // whether wait_all() blocks the host until they are done.
  double nccl_timeout_seconds = 600;
  bool nccl_block_host = true;
};

// Fails (naming options.setting) when `transport` cannot run in this process: cuda_aware_mpi with an MPI
// that is not CUDA-aware (query_cuda_aware_mpi). Local, no communication: call it early, with the other
// set-up checks.
void check_gradient_transport_available(dist::GradientTransport transport, const std::string& setting);

struct RankReducer {
  dist::GradientTransport transport = dist::GradientTransport::kHost;  // the one the ranks agreed on
  bool stages_through_host = false;  // host transport on a GPU: device gradients go through a host copy
  // Owns what its transport needs (the NCCL communicator, the host copy of device gradients). A step is
  // begin(), mark_ready() for every range as backward finishes it (the backend's work that wrote it is
  // enqueued), wait_all(); afterwards the gradients hold the sum (or average) over ranks.
  std::unique_ptr<dist::GradientReducer> reducer;
};

// Collective over `comm`. `resolved` comes from resolve_gradient_transport without knowing whether ranks
// share a GPU (on a GPU, nccl is checked again here: find_shared_gpus), `configured` is what was asked
// (auto may then fall back to host). Fails when the ranks end up with different transports (auto on
// unlike nodes), or for nccl in a build without NCCL. `gradients` holds `count` floats on `backend`'s
// device and must outlive the reducer, as must `backend` and `comm`. Logs the transport on rank 0.
RankReducer make_rank_reducer(const dist::Communicator& comm, dist::GradientTransport configured,
                              dist::GradientTransport resolved, Backend<float>& backend, float* gradients, size_t count,
                              const RankReducerOptions& options = {});

}  // namespace electra
