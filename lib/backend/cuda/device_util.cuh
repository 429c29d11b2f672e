// Device helpers shared by the .cu files: grid sizes and deterministic reductions. Every reduction here
// combines values in a fixed pattern (xor-butterfly inside a warp, warps in index order), so a result
// depends only on the inputs and the launch shape, never on scheduling: no atomics on floats anywhere.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "lib/backend/cuda/cuda_check.h"
#include "lib/backend/cuda/kernels.h"

namespace electra::cuda {

inline constexpr int kBlock = 256;  // threads per block of the 1-D kernels
inline constexpr int kWarp = 32;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, not one per item.
inline unsigned grid_for(size_t n, const Stream& s, int block = kBlock) {
  const size_t wanted = (n + block - 1) / block;
  const size_t cap = static_cast<size_t>(s.sms) * 32;
  return static_cast<unsigned>(wanted < cap ? (wanted > 0 ? wanted : 1) : cap);
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

// Every lane gets op over the warp's 32 values; with a commutative op all lanes hold the same bits.
template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
  for (int m = kWarp / 2; m > 0; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Every thread of the block gets op over the block's values (blockDim.x a multiple of 32, at most 1024).
// smem: 32 elements of T. Includes the barriers that make smem reusable by the next call.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* smem) {
  v = warp_reduce(v, op);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  __syncthreads();  // an earlier call may still be reading smem
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = smem[0];
  for (int i = 1; i < warps; ++i) r = op(r, smem[i]);
  return r;
}

__device__ inline void report(unsigned* errors, unsigned bit) { atomicOr(errors, bit); }

}  // namespace electra::cuda
