// The rank's compute device for every program (electra-train, electra-eval, electra-score,
// electra-bench): the CPU backend, or the CUDA backend on GPU local_rank % visible GPUs (one rank per GPU
// is the intended layout; several ranks on one GPU share it).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/dist/communicator.h"
#include "lib/model/pretrainer.h"

namespace electra {

struct DeviceOptions {
  // GEMM/attention arithmetic; the CPU backend takes fp32 only (its bf16 products are bf16 storage's).
  CudaPrecision precision = CudaPrecision::kFp32;
  // CUDA device-memory arena (CudaBackendOptions): arena_bytes, or memory_fraction of the free memory when 0.
  size_t arena_bytes = 0;
  double memory_fraction = 0.9;
  // What a user sets to change the arena size, for the arena's out-of-memory message.
  std::string arena_size_hint = "--arena-bytes or --memory-fraction";
  // How many ranks use this rank's GPU (memory_fraction is split among them); 0 = estimate it from the
  // node-local ranks (ranks_sharing_gpu). The Communicator overload of make_rank_backend counts them.
  int ranks_on_gpu = 0;
};

// Whether this build has the CUDA backend (configured with ELECTRA_CUDA where nvcc is installed).
bool cuda_backend_built();

// The backend of a rank on `device`. Throws electra::Error naming the flag: a precision the CPU cannot
// compute in (check_precision), memory_fraction outside (0, 1], and for
// cuda why no GPU can be used (no driver, no GPU, a build without the CUDA backend). local_size is the
// number of ranks on the node: when k of them share this rank's GPU, each arena sized by memory_fraction
// takes memory_fraction / k of the free memory (ranks start at the same time and would otherwise all
// ask for the same 90%).
std::unique_ptr<Backend<float>> make_rank_backend(DeviceKind device, int local_rank, const DeviceOptions& options = {},
                                                  int local_size = 1);

// Collective over `comm`: make_rank_backend(device, comm.local_rank(), options, comm.local_size()) with
// options.ranks_on_gpu counted from every rank's host name and GPU PCI bus id, so that ranks which each
// see only their own GPU (srun --gpus-per-task, per-rank CUDA_VISIBLE_DEVICES) take the whole
// memory_fraction, and ranks that really share one split it. Every rank of comm must call it.
std::unique_ptr<Backend<float>> make_rank_backend(DeviceKind device, const dist::Communicator& comm,
                                                  const DeviceOptions& options = {});

// Collective over `comm` (call it where every rank is sure to arrive): how many ranks use this rank's
// GPU (local_rank % visible GPUs), by host name and PCI bus id; 1 when this rank has no usable GPU.
int count_ranks_on_my_gpu(const dist::Communicator& comm);

// For each of the gathered "<gpu id>" strings (one per rank, "" = no GPU), how many ranks name the same
// non-empty id (1 for ""): the sharing count behind the Communicator overload.
std::vector<int> ranks_per_gpu_id(const std::vector<std::string>& gpu_ids);

// Estimate without communication: how many of `local_size` node-local ranks (rank r on GPU r % gpus)
// share local_rank's GPU, assuming every local rank sees the same GPUs.
int ranks_sharing_gpu(int local_rank, int local_size, int gpus);

// The node-local rank of a process that does not start MPI (electra-score): the launcher's variable
// (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID), else 0.
int local_rank_from_environment();

// Fails naming `what` (a flag or "config key 'train.precision' =") unless `device` computes in `precision`:
// any on cuda (tensor-core inputs, fp32 accumulation); fp32 or bf16 on the CPU (bf16: products on the CPU's
// bf16 instructions through oneDNN, which is bf16 storage).
void check_precision(CudaPrecision precision, DeviceKind device, const std::string& what);

// What activations and weight copies are stored in (train.storage, --storage): fp32, or bf16 (bf16
// mixed precision: bf16 activations and weight copies; fp32 master weights, gradients, AdamW moments,
// normalisation statistics and losses; bf16 products with fp32 accumulation). `storage` nullopt ("auto")
// is bf16 when precision is bf16, else fp32. Fails naming `what` for a
// contradiction: bf16 storage on a GPU needs precision bf16 (its GEMMs run on bf16 tensor cores), and
// precision bf16 on the CPU needs bf16 storage (the bf16 products are the bf16 backend's). On the CPU bf16
// storage with precision fp32 is allowed and is the same computation. On a CPU without bf16 instructions
// (cpu::cpu_bf16_support().native false) "auto" with precision bf16 is fp32, with a warning once: bf16
// products would be emulated, slower than fp32 (an explicit bf16 is honoured).
StorageType resolve_storage(std::optional<StorageType> storage, DeviceKind device, CudaPrecision precision,
                            const std::string& what);

// A Backend<bfloat16> on the device of `wide` that shares its memory and stream (wide() returns it): on
// the CPU the fast oneDNN backend (make_onednn_bf16_backend) where this build has oneDNN, else the
// reference adaptor, saying once per process what the CPU offers; on a GPU the CUDA bf16 backend (`wide`
// made with precision bf16). `wide` must outlive it.
std::unique_ptr<Backend<bfloat16>> make_bf16_backend(Backend<float>& wide);

// GFLOP/s of the best of `reps` square n x n x n GEMMs (after one warm-up) in the arithmetic the model
// computes in: `wide`'s precision for fp32 storage, the bf16 backend's for bf16. The denominator of
// MFU and of the benchmark's peak fraction.
double measure_gemm_gflops(Backend<float>& wide, StorageType storage, int n = 1024, int reps = 3);

// The rank's model on `backend` with `storage` (from resolve_storage): an
// ElectraPretrainer<float>, or an ElectraPretrainer<bfloat16> over make_bf16_backend(backend) (which it
// owns). Parameters, gradients and checkpoints are fp32 either way, so runs move between the two.
std::unique_ptr<PretrainerModel<float>> make_rank_model(const PretrainerConfig& config, Backend<float>& backend,
                                                        StorageType storage);

// One line for logs: "" on the CPU; on a GPU the arena's size, use and peak, e.g.
// "GPU 0 (cuda-float): device memory arena 70.1 GiB, in use 3.2 GiB, peak 4.0 GiB".
std::string device_memory_summary(Backend<float>& backend);

}  // namespace electra
