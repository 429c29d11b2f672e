// Per-element and per-row arithmetic of the fused dropout + residual + LayerNorm kernels
// (layernorm_fused.cu, backend.h's dropout_add_layernorm_forward / layernorm_dropout_backward), as
// __host__ __device__ functions so that tests/cuda/fused_layernorm_math_test.cpp runs the same code on
// the CPU against the CPU backend. Plain C++: includable without nvcc.
//
// The expressions are those of the unfused kernels (dropout_forward_kernel, add_kernel,
// layernorm_forward_kernel, layernorm_dx_kernel, dropout_backward_kernel), term for term, so that the
// fused kernels round exactly as the op sequence does on the GPU.
#pragma once

#include <math.h>

#include <cstdint>

#include "lib/core/philox.h"  // ELECTRA_HD

namespace electra::cuda::math {

// Lanes of a warp-per-row LayerNorm kernel: lane l owns columns l, l + 32, l + 64, ... and sums them in
// that order; the 32 partial sums are then combined by an xor butterfly (device_util.cuh's warp_reduce).
inline constexpr int kRowLanes = 32;
// Keep bits drawn per Philox call in the fused forward: lane l draws those of columns 4l .. 4l + 3 of
// every 128 (kKeepGroup * kRowLanes) columns, and the owner of each column fetches its bit.
inline constexpr int kKeepGroup = 4;

// x * keep / (1 - p) with keep_scale = 1 / (1 - p): dropout's element. The product is rounded on its own,
// never fused with the residual add that follows, as two separate kernels round it.
ELECTRA_HD inline float dropped(float x, uint8_t keep, float keep_scale) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(x, keep ? keep_scale : 0.0f);
#else
  return x * (keep ? keep_scale : 0.0f);
#endif
}

// The lane of the warp that draws the keep bits of column c (within its 128-column round), and the bit
// of c in that lane's group.
ELECTRA_HD inline int keep_group_lane(int c) { return (c % (kKeepGroup * kRowLanes)) / kKeepGroup; }
ELECTRA_HD inline int keep_group_bit(int c) { return c % kKeepGroup; }

// Row statistics from the row sum and the sum of centred squares (two passes, as the CPU backend).
ELECTRA_HD inline float layernorm_mean(float sum, int cols) { return sum / static_cast<float>(cols); }
ELECTRA_HD inline float layernorm_rstd(float centred_squares, int cols, float eps) {
  return 1.0f / sqrtf(centred_squares / static_cast<float>(cols) + eps);
}

// (v - mean) * rstd * gamma, before beta is added.
ELECTRA_HD inline float layernorm_scaled(float v, float mean, float rstd, float gamma) {
  return (v - mean) * rstd * gamma;
}

// d(input) of one element: rstd * (dy * gamma - mean(g) - xhat * mean(g * xhat)), g = dy * gamma over the
// row, xhat = (x - mean) * rstd.
ELECTRA_HD inline float layernorm_input_gradient(float dy, float gamma, float xhat, float rstd, float mean_g,
                                                 float mean_gx) {
  return rstd * (dy * gamma - mean_g - xhat * mean_gx);
}

}  // namespace electra::cuda::math
