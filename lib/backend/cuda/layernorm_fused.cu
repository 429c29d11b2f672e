// The fused post-LN residual block (backend.h's dropout_add_layernorm_forward and
// layernorm_dropout_backward): one warp per row, as reductions.cu's LayerNorm kernels.
//
// Forward: one kernel reads x and residual once, writes keep, res and y (the op sequence takes three
// kernels and passes over res three more times). Rows up to kMaxCachedPerLane * 32 columns stay in
// registers between the passes; wider rows read res back. Backward: one kernel writes d_res and dx
// (the sequence's dropout_backward pass over d_res is gone); dgamma/dbeta go through reductions.cu's
// column partials, unchanged.
//
// Bitwise the unfused CUDA ops: lane l owns columns l, l + 32, ... in the order layernorm_forward_kernel /
// layernorm_dx_kernel sum them, with the same warp butterflies and the same row code and expressions
// (layernorm_rows.cuh, layernorm_fused_math.h); each product and sum is rounded to the storage type
// where the sequence stores it (dropped x, res, d_res); keep bits are a function of the element index alone
// (math::dropout_keep_group), drawn four per Philox block as dropout_forward_kernel draws them.
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/layernorm_fused_math.h"
#include "lib/backend/cuda/layernorm_rows.cuh"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {
namespace {

constexpr int kRowsPerBlock = kBlock / kWarp;
constexpr int kMaxCachedPerLane = 32;  // rows up to 1024 columns (ELECTRA-large's hidden size) in registers
static_assert(math::kRowLanes == kWarp, "the fused LayerNorm lanes are a warp");

// The keep bits of this lane's group in the 128-column round that starts at column `round_start` (bit u
// for column round_start + 4 lane + u); 0 past the row's end.
__device__ unsigned draw_keep_group(const DropoutKey& key, size_t row_offset, int round_start, int cols, int lane,
                                    float p) {
  const int first = round_start + math::kKeepGroup * lane;
  if (first >= cols) return 0u;
  const int count = cols - first < math::kKeepGroup ? cols - first : math::kKeepGroup;
  uint8_t bits[math::kKeepGroup];
  math::dropout_keep_group(bits, key, row_offset + first, count, p);
  unsigned packed = 0u;
  for (int u = 0; u < count; ++u) packed |= static_cast<unsigned>(bits[u]) << u;
  return packed;
}

// res[c] = residual[c] + dropout(x[c]) for this lane's j-th column c = lane + 32 j, rounded to D after the
// product and after the sum as dropout_forward and add store them; keep[c] written. Every lane of the
// warp must call it for the same j (it shuffles); returns res[c] as float (0 past the row's end).
// `group` holds this lane's keep-bit group of the current round (drawn when j % 4 == 0).
template <typename D>
__device__ float residual_element(D* res, uint8_t* keep, const D* x, const D* residual, size_t row_offset, int cols,
                                  int j, int lane, float p, const DropoutKey& key, float keep_scale, unsigned& group) {
  const int c = lane + kWarp * j;
  uint8_t bit = 1;
  if (p > 0.0f) {
    if (j % math::kKeepGroup == 0) group = draw_keep_group(key, row_offset, kWarp * j, cols, lane, p);
    const unsigned owner = __shfl_sync(0xffffffffu, group, math::keep_group_lane(c));
    bit = static_cast<uint8_t>((owner >> math::keep_group_bit(c)) & 1u);
  }
  if (c >= cols) return 0.0f;
  const size_t i = row_offset + c;
  const float dropped = to_float(from_float<D>(math::dropped(to_float(x[i]), bit, keep_scale)));
  const D r = from_float<D>(dropped + to_float(residual[i]));
  res[i] = r;
  if (keep != nullptr) keep[i] = bit;
  return to_float(r);
}

// kCached > 0: the row's res values stay in registers (cols <= 32 kCached); 0: read back from res.
template <typename D, int kCached>
__global__ void dropout_add_layernorm_forward_kernel(D* y, D* res, uint8_t* keep, float* mean, float* rstd, const D* x,
                                                     const D* residual, const D* gamma, const D* beta, int rows,
                                                     int cols, float p, DropoutKey key, float keep_scale, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;  // whole warps: the shuffles see all 32 lanes
  const size_t off = static_cast<size_t>(row) * cols;
  const int lane_columns = (cols + kWarp - 1) / kWarp;  // the same for every lane (uniform loops)
  D* rr = res + off;
  D* yr = y + off;
  [[maybe_unused]] float cached[kCached > 0 ? kCached : 1];
  unsigned group = 0u;

  // Pass 1: res and keep, and the row sum (layernorm_forward_kernel's first pass).
  float sum = 0.0f;
  if constexpr (kCached > 0) {
#pragma unroll
    for (int j = 0; j < kCached; ++j) {
      if (j >= lane_columns) break;
      cached[j] = residual_element(res, keep, x, residual, off, cols, j, lane, p, key, keep_scale, group);
      if (lane + kWarp * j < cols) sum += cached[j];
    }
  } else {
    for (int j = 0; j < lane_columns; ++j) {
      const float v = residual_element(res, keep, x, residual, off, cols, j, lane, p, key, keep_scale, group);
      if (lane + kWarp * j < cols) sum += v;
    }
  }
  sum = warp_reduce(sum, SumOp{});
  const float mu = math::layernorm_mean(sum, cols);

  // Pass 2: centred squares. Pass 3: y. (A lane reads back only the res elements it wrote.)
  float sq = 0.0f;
  if constexpr (kCached > 0) {
#pragma unroll
    for (int j = 0; j < kCached; ++j) {
      if (j >= lane_columns) break;
      if (lane + kWarp * j < cols) {
        const float d = cached[j] - mu;
        sq += d * d;
      }
    }
    sq = warp_reduce(sq, SumOp{});
  } else {
    sq = warp_centred_squares(rr, mu, cols, lane);
  }
  const float rs = math::layernorm_rstd(sq, cols, eps);
  if (lane == 0) {
    if (mean != nullptr) mean[row] = mu;
    if (rstd != nullptr) rstd[row] = rs;
  }
  if constexpr (kCached > 0) {
#pragma unroll
    for (int j = 0; j < kCached; ++j) {
      if (j >= lane_columns) break;
      const int c = lane + kWarp * j;
      if (c < cols) yr[c] = layernorm_output(cached[j], mu, rs, gamma, beta, c);
    }
  } else {
    for (int c = lane; c < cols; c += kWarp) yr[c] = layernorm_output(to_float(rr[c]), mu, rs, gamma, beta, c);
  }
}

// d_res = LayerNorm backward of dy (layernorm_dx_kernel), dx = d_res as stored * keep * keep_scale
// (dropout_backward_kernel; a plain copy when keep is null). dx may be null.
template <typename D>
__global__ void layernorm_dropout_backward_kernel(D* d_res, D* dx, const D* dy, const D* x, const float* mean,
                                                  const float* rstd, const D* gamma, const uint8_t* keep, int rows,
                                                  int cols, float keep_scale) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const size_t off = static_cast<size_t>(row) * cols;
  const D* xr = x + off;
  const D* dyr = dy + off;
  const float mu = mean[row], rs = rstd[row];
  const LayerNormGradientMeans means = warp_layernorm_gradient_means(dyr, xr, gamma, mu, rs, cols, lane);
  D* dr = d_res + off;
  D* dxr = dx != nullptr ? dx + off : nullptr;
  const uint8_t* kr = keep != nullptr ? keep + off : nullptr;
  for (int c = lane; c < cols; c += kWarp) {
    const D g = from_float<D>(layernorm_input_gradient_at(dyr, xr, gamma, mu, rs, means, c));
    dr[c] = g;
    if (dxr != nullptr) dxr[c] = kr != nullptr ? from_float<D>(math::dropped(to_float(g), kr[c], keep_scale)) : g;
  }
}

unsigned warp_rows_grid(int rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

template <typename T>
void dropout_add_layernorm_forward(const Stream& s, T* y, T* res, uint8_t* keep, float* mean, float* rstd, const T* x,
                                   const T* residual, const T* gamma, const T* beta, int rows, int cols, float p,
                                   const DropoutKey& key, float eps) {
  if (rows <= 0 || cols <= 0) return;
  const float keep_scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
  if (cols <= kWarp * kMaxCachedPerLane) {
    dropout_add_layernorm_forward_kernel<DeviceType<T>, kMaxCachedPerLane>
        <<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(device_ptr(y), device_ptr(res), keep, mean, rstd, device_ptr(x),
                                                        device_ptr(residual), device_ptr(gamma), device_ptr(beta), rows,
                                                        cols, p, key, keep_scale, eps);
  } else {
    dropout_add_layernorm_forward_kernel<DeviceType<T>, 0><<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(
        device_ptr(y), device_ptr(res), keep, mean, rstd, device_ptr(x), device_ptr(residual), device_ptr(gamma),
        device_ptr(beta), rows, cols, p, key, keep_scale, eps);
  }
  ELECTRA_CUDA_CHECK_LAUNCH("dropout_add_layernorm_forward_kernel");
}

template <typename T>
void layernorm_dropout_backward(const Stream& s, T* d_res, T* dx, float* dgamma, float* dbeta, const T* dy, const T* x,
                                const float* mean, const float* rstd, const T* gamma, const uint8_t* keep, int rows,
                                int cols, float p, float* partials) {
  if (rows <= 0 || cols <= 0) return;
  const float keep_scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
  layernorm_dropout_backward_kernel<<<warp_rows_grid(rows), kBlock, 0, s.stream>>>(
      device_ptr(d_res), device_ptr(dx), device_ptr(dy), device_ptr(x), mean, rstd, device_ptr(gamma),
      p > 0.0f ? keep : nullptr, rows, cols, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("layernorm_dropout_backward_kernel");
  // dgamma/dbeta: layernorm_backward's column partials alone (no dx), the same sums as the sequence.
  if (dgamma != nullptr || dbeta != nullptr) {
    layernorm_backward<T>(s, nullptr, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols, partials);
  }
}

#define ELECTRA_INSTANTIATE_FUSED_LAYERNORM(T)                                                                         \
  template void dropout_add_layernorm_forward<T>(const Stream&, T*, T*, uint8_t*, float*, float*, const T*, const T*,  \
                                                 const T*, const T*, int, int, float, const DropoutKey&, float);       \
  template void layernorm_dropout_backward<T>(const Stream&, T*, T*, float*, float*, const T*, const T*, const float*, \
                                              const float*, const T*, const uint8_t*, int, int, float, float*);
ELECTRA_INSTANTIATE_FUSED_LAYERNORM(float)
ELECTRA_INSTANTIATE_FUSED_LAYERNORM(bfloat16)
#undef ELECTRA_INSTANTIATE_FUSED_LAYERNORM

}  // namespace electra::cuda
