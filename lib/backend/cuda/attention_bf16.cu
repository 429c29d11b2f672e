// The row kernels of the bf16 storage backend's materialised attention (cuda_bf16_backend.cpp runs the
// GEMMs, one head at a time, with bf16 operands and fp32 scores in a [B,S,S] slice of the workspace).
// Each is its float twin of reductions.cu (attention_softmax_forward / _backward) with the same row code
// (attention_rows.cuh), arithmetic (attention_fused_math.h) and keep-bit indices, reading bf16 probabilities and
// writing bf16 where the float kernel writes fp32: the probabilities output, and the [B,S,S] operands of
// the next GEMM (dropped probabilities, score gradients), rounded to nearest-even once.
#include <cuda_bf16.h>

#include "lib/backend/cuda/attention_fused_math.h"
#include "lib/backend/cuda/attention_rows.cuh"
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {
namespace {

constexpr int kRowsPerBlock = kBlock / kWarp;

// scores [B,S,S]: head h's scaled scores, on return its fp32 probabilities; probs / keep [B,H,S,S];
// attend [B,S,S] (dropout > 0 only).
__global__ void bf16_softmax_forward_kernel(float* scores, __nv_bfloat16* probs, uint8_t* keep, __nv_bfloat16* attend,
                                            const int32_t* mask, int B, int H, int S, int h, float dropout,
                                            DropoutKey key, float keep_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;  // b * S + i
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<long long>(B) * S) return;  // the whole warp leaves together
  const int b = static_cast<int>(row / S), i = static_cast<int>(row % S);
  const size_t base = math::attention_keep_index(b, H, h, S, i, 0);  // element (b, h, i, 0)
  float* p = scores + static_cast<size_t>(row) * S;
  const int32_t* m = mask != nullptr ? mask + static_cast<size_t>(b) * S : nullptr;
  warp_masked_softmax_row(p, m, query_mask_of(m, i), S, lane);
  ELECTRA_ATTENTION_KEYS(j, S, lane) probs[base + j] = __float2bfloat16_rn(p[j]);
  __nv_bfloat16* out = dropout > 0.0f ? attend + static_cast<size_t>(row) * S : nullptr;
  warp_dropout_row(out, keep, p, key, base, math::attention_keep_index(key, b, H, h, S, i, 0), S, lane, dropout,
                   keep_scale);
}

__global__ void bf16_apply_keep_kernel(__nv_bfloat16* attend, const __nv_bfloat16* probs, const uint8_t* keep, int B,
                                       int H, int S, int h, float keep_scale) {
  const size_t SS = static_cast<size_t>(S) * S, n = static_cast<size_t>(B) * SS;
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t b = e / SS, src = (b * H + h) * SS + (e - b * SS);
    attend[e] = __float2bfloat16_rn(math::dropped_probability(__bfloat162float(probs[src]), keep[src], keep_scale));
  }
}

// dp [B,S,S]: d(attend) of head h, on return d(dropped probabilities); ds [B,S,S]: d(scores), rounded.
__global__ void bf16_softmax_backward_kernel(__nv_bfloat16* ds, float* dp, const __nv_bfloat16* probs,
                                             const uint8_t* keep, int B, int H, int S, int h, float keep_scale,
                                             float score_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<long long>(B) * S) return;
  const int b = static_cast<int>(row / S), i = static_cast<int>(row % S);
  const size_t base = math::attention_keep_index(b, H, h, S, i, 0);
  float* d = dp + static_cast<size_t>(row) * S;
  const __nv_bfloat16* p = probs + base;
  const uint8_t* k = keep != nullptr ? keep + base : nullptr;
  const float dot = warp_dropout_gradient_dot(d, p, k, S, lane, keep_scale);
  __nv_bfloat16* out = ds + static_cast<size_t>(row) * S;
  ELECTRA_ATTENTION_KEYS(j, S, lane) {
    out[j] = __float2bfloat16_rn(math::score_gradient(__bfloat162float(p[j]), d[j], dot, score_scale));
  }
}

unsigned row_blocks(long long rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void bf16_attention_softmax_forward(const Stream& s, float* scores, bfloat16* probs, uint8_t* keep, bfloat16* attend,
                                    const int32_t* mask, int B, int H, int S, int h, float dropout,
                                    const DropoutKey& key) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  bf16_softmax_forward_kernel<<<row_blocks(rows), kBlock, 0, s.stream>>>(
      scores, device_ptr(probs), keep, device_ptr(attend), mask, B, H, S, h, dropout, key, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("bf16_softmax_forward_kernel");
}

void bf16_attention_apply_keep(const Stream& s, bfloat16* attend, const bfloat16* probs, const uint8_t* keep, int B,
                               int H, int S, int h, float keep_scale) {
  const size_t n = static_cast<size_t>(B) * S * S;
  if (n == 0) return;
  bf16_apply_keep_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(attend), device_ptr(probs), keep, B, H, S,
                                                                  h, keep_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("bf16_apply_keep_kernel");
}

void bf16_attention_softmax_backward(const Stream& s, bfloat16* ds, float* dp, const bfloat16* probs,
                                     const uint8_t* keep, int B, int H, int S, int h, float keep_scale,
                                     float score_scale) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  bf16_softmax_backward_kernel<<<row_blocks(rows), kBlock, 0, s.stream>>>(device_ptr(ds), dp, device_ptr(probs), keep,
                                                                          B, H, S, h, keep_scale, score_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("bf16_softmax_backward_kernel");
}

}  // namespace electra::cuda
