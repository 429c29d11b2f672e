// The CUDA backend: Backend<float> on one NVIDIA GPU. GEMMs through cuBLAS, everything else in our own
// kernels (lib/backend/cuda/*.cu), tested op by op against the CPU backend (tests/cuda). Plain C++: this
// header includes no CUDA header, so programs and tests use it without nvcc.
//
// Behaviour, beyond backend.h's contracts:
//  - Memory is one plain cudaMalloc (no managed memory) made at construction and handed out by an
//    arena (CudaBackendOptions::arena_bytes / memory_fraction): allocate never calls cudaMalloc and
//    fails with the arena's numbers when it is full; deallocate waits for the stream first (work on
//    other streams, e.g. NCCL ordered after cuda_stream_of, may still read the block). One CUDA stream
//    per backend, the cuBLAS handle bound to it. Ops are asynchronous on that stream: they return once enqueued.
//    copy_to_host, copy_ints_to_host, sum_squares and synchronize wait for the stream; copy_from_host /
//    copy_ints_from_host return once the host buffer has been read (it may be reused at once).
//  - Bad indices are found on the device: an op that meets a negative embedding id, a position outside
//    [0, S) or a label outside [0, V) skips that element and the next waiting call throws electra::Error
//    naming the problem (the CPU backend throws before running the op). Likewise a packed attention mask
//    (several examples in a row) in a fused attention call that cuDNN SDPA serves (bf16/fp16 modes,
//    dropout 0): its sequence lengths cannot express it; train.attention = materialized runs packed rows.
//    Every other attention path takes packed masks.
//  - Results are bitwise reproducible from run to run on the same GPU model (same SM count) with the same
//    build and CUDA libraries: no floating-point atomics; every reduction (bias / LayerNorm / embedding
//    gradients, sum of squares, softmax rows) has a fixed order, and cuBLAS is deterministic on one
//    stream. Against the CPU backend:
//    dropout keep masks and Gumbel samples (for equal logits) are bitwise equal; embedding_forward,
//    gather_rows, scatter_add_rows and the position-table gradient without position ids are bitwise
//    equal; the rest agree to float rounding (different summation orders and fused multiply-adds).
//  - The calling thread's current CUDA device is switched to the backend's device by every call.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "lib/backend/backend.h"

namespace electra {

struct CudaBackendOptions {
  CudaPrecision precision = CudaPrecision::kFp32;
  // Device memory: every allocate* is served from one cudaMalloc'd arena (lib/backend/cuda/arena.h) of
  // arena_bytes, or, when 0, memory_fraction (in (0, 1]) of the memory cudaMemGetInfo reports free once
  // the stream and cuBLAS exist (read again and halved, up to 3 times, when another process took memory
  // meanwhile). The rest stays free for the libraries' own workspaces (cuBLAS, cuDNN, NCCL allocate
  // outside the arena).
  size_t arena_bytes = 0;
  double memory_fraction = 0.9;
  // Ends the arena's out-of-memory messages: what the user sets to change its size.
  std::string arena_size_hint = "CudaBackendOptions::arena_bytes or memory_fraction";
};

// The arena's use in bytes: its size, what live allocations hold (rounded to 256 bytes each) and the
// most they ever held; largest_free_block is the largest allocation that can succeed now.
struct CudaMemoryStats {
  size_t capacity = 0, in_use = 0, peak = 0;
  size_t largest_free_block = 0;
  size_t blocks = 0;  // live allocations
};

// CUDA devices this process can use; 0 when there is no driver, no GPU or any other error. Never throws.
int cuda_device_count() noexcept;

// Why no CUDA device can be used (no driver, driver too old for this build, no GPU, ...), or "" when
// cuda_device_count() > 0. Never throws.
std::string cuda_unavailable_reason() noexcept;

// The PCI bus id of visible device `device` ("0000:41:00.0"), or "" when it cannot be read. Never throws.
// Ranks compare these (with the host name) to find out which of them share a GPU: visible device numbers
// say nothing when each rank sees only its own GPU (srun --gpus-per-task).
std::string cuda_device_pci_bus_id(int device) noexcept;

// Backend<float> on GPU `device` (0-based, as CUDA numbers the visible devices). Throws electra::Error
// with a message saying what is missing: no driver, a driver older than this build's CUDA runtime, no
// GPU, a device index out of range, or a GPU older than compute capability 8.0 (this build has code for
// 8.0 and 9.0 and PTX for newer chips).
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0, const CudaBackendOptions& options = {});

// Backend<bfloat16> (bf16 mixed-precision storage) on the device of `cuda_backend`, which must come from
// make_cuda_backend with precision bf16 (the bf16 GEMMs and attention run on bf16 tensor cores) and outlive
// the result; fails otherwise, naming the backend or its precision. It shares that backend's device memory
// arena, stream, error word, cuBLAS/cuBLASLt handles and workspace, so the ops of both are ordered on the
// one stream; wide() returns it; name() is "cuda-bf16". Activations and weight copies are bf16, arithmetic
// is fp32 (bf16 GEMM operands with fp32 accumulation; weight gradients accumulate in fp32); each op
// matches the CPU reference (make_cpu_bf16_backend: widen, float op, narrow) to bf16 rounding, and dropout
// keep masks and Gumbel samples bitwise. Attention runs on the bf16 tensors (cuDNN SDPA in place for the
// fused calls it serves, else our kernels with fp32 scores per head), rounding the probabilities / score
// gradients it feeds to its GEMMs to bf16 where the reference keeps them fp32 (cuda_bf16_backend.cpp). The
// optimizer ops (adamw_step*) fail: they run on wide(). cuda_stream_of etc. take wide().
std::unique_ptr<Backend<bfloat16>> make_cuda_bf16_backend(Backend<float>& cuda_backend);

// The CUDA stream (a cudaStream_t, as void* so that this header needs no CUDA header) on which `backend`
// enqueues all its work, for libraries that must order their work after it (NCCL). `backend` must come
// from make_cuda_backend.
void* cuda_stream_of(Backend<float>& backend);
// The backend's GPU (CUDA's 0-based index among the visible devices) and its precision mode.
int cuda_device_of(Backend<float>& backend);
CudaPrecision cuda_precision_of(Backend<float>& backend);
// The backend's device-memory arena use (see CudaBackendOptions::arena_bytes).
CudaMemoryStats cuda_memory_stats(Backend<float>& backend);

// Byte copies that Backend<T> does not offer (dropout keep masks), for tests and tools. `backend` must
// come from make_cuda_backend; both wait for the copy to finish.
void cuda_copy_bytes_to_host(Backend<float>& backend, void* host, const void* device, size_t bytes);
void cuda_copy_bytes_from_host(Backend<float>& backend, void* device, const void* host, size_t bytes);

}  // namespace electra
