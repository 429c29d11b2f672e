// Device code of one LayerNorm row, shared by the warp-per-row kernels of the plain LayerNorm
// (reductions.cu) and of the fused dropout + residual + LayerNorm (layernorm_fused.cu), so that the fused
// kernels are bitwise the unfused ones by construction: lane l owns columns l, l + 32, ... and sums them
// in that order, partial sums combine by the warp butterfly, and every expression is
// layernorm_fused_math.h's (tested on the CPU).
#pragma once

#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/layernorm_fused_math.h"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {

// The row's sum of (x[c] - mean)^2 over the warp (the second of the two statistics passes).
template <typename D>
__device__ inline float warp_centred_squares(const D* xr, float mean, int cols, int lane) {
  float sq = 0.0f;
  for (int c = lane; c < cols; c += kWarp) {
    const float d = to_float(xr[c]) - mean;
    sq += d * d;
  }
  return warp_reduce(sq, SumOp{});
}

// y of column c from its input v: (v - mean) * rstd * gamma[c] + beta[c] (no beta when null), rounded once.
template <typename D>
__device__ inline D layernorm_output(float v, float mean, float rstd, const D* gamma, const D* beta, int c) {
  const float scaled = math::layernorm_scaled(v, mean, rstd, to_float(gamma[c]));
  return from_float<D>(beta != nullptr ? scaled + to_float(beta[c]) : scaled);
}

// mean(g) and mean(g * xhat) over the row, g = dy * gamma, xhat = (x - mean) * rstd: the first pass of
// the LayerNorm input gradient.
struct LayerNormGradientMeans {
  float g;
  float gx;
};

template <typename D>
__device__ inline LayerNormGradientMeans warp_layernorm_gradient_means(const D* dyr, const D* xr, const D* gamma,
                                                                       float mean, float rstd, int cols, int lane) {
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int c = lane; c < cols; c += kWarp) {
    const float g = to_float(dyr[c]) * to_float(gamma[c]);
    sum_g += g;
    sum_gx += g * (to_float(xr[c]) - mean) * rstd;
  }
  sum_g = warp_reduce(sum_g, SumOp{});
  sum_gx = warp_reduce(sum_gx, SumOp{});
  return LayerNormGradientMeans{sum_g / static_cast<float>(cols), sum_gx / static_cast<float>(cols)};
}

// d(input) of column c, unrounded: the second pass of the LayerNorm input gradient.
template <typename D>
__device__ inline float layernorm_input_gradient_at(const D* dyr, const D* xr, const D* gamma, float mean, float rstd,
                                                    const LayerNormGradientMeans& means, int c) {
  const float xhat = (to_float(xr[c]) - mean) * rstd;
  return math::layernorm_input_gradient(to_float(dyr[c]), to_float(gamma[c]), xhat, rstd, means.g, means.gx);
}

}  // namespace electra::cuda
