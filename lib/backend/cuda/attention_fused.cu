// The row kernels of the CUDA backend's own fused attention (cuda_backend.cpp runs the GEMMs, one head
// at a time, into a [B,S,S] slice of its workspace). One warp per query row (b, i) of head h; lane l
// handles keys j = 128 t + 4 l + u (u < 4) in every pass, so a lane reads back only what it wrote and
// each group of four keys shares one Philox block for the dropout keep bits, which are regenerated from
// the key (never stored). Softmax row: attention_rows.cuh; per-element arithmetic: attention_fused_math.h
// (tested on the CPU).
#include "lib/backend/cuda/attention_fused_math.h"
#include "lib/backend/cuda/attention_rows.cuh"
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/kernels.h"

namespace electra::cuda {
namespace {

constexpr int kRowsPerBlock = kBlock / kWarp;

// Keep bits of keys j0 .. j0 + count - 1 of query row (b, h, i); all ones without dropout.
__device__ inline void row_keep_bits(uint8_t* bits, const DropoutKey& key, float dropout, int b, int H, int h, int S,
                                     int i, int j0, int count) {
  if (dropout > 0.0f) {
    math::dropout_keep_group(bits, key, math::attention_keep_index(key, b, H, h, S, i, j0), count, dropout);
  } else {
    for (int u = 0; u < count; ++u) bits[u] = 1;
  }
}

// p [B,S,S] holds head h's scaled scores; on return its probabilities times keep / (1 - dropout), and
// stats[b, h, i] the row's log-sum-exp.
__global__ void fused_softmax_forward_kernel(float* p, float* stats, const int32_t* mask, int B, int H, int S, int h,
                                             float dropout, DropoutKey key, float keep_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;  // b * S + i
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<long long>(B) * S) return;  // the whole warp leaves together
  const int b = static_cast<int>(row / S), i = static_cast<int>(row % S);
  float* pr = p + static_cast<size_t>(row) * S;
  const int32_t* m = mask != nullptr ? mask + static_cast<size_t>(b) * S : nullptr;
  const SoftmaxRowStats row_stats = warp_masked_softmax_row(pr, m, query_mask_of(m, i), S, lane);
  if (lane == 0) stats[(static_cast<size_t>(b) * H + h) * S + i] = math::row_log_sum_exp(row_stats.max, row_stats.sum);
  if (dropout > 0.0f) {
    for (int j0 = 4 * lane; j0 < S; j0 += 4 * kWarp) {
      const int count = S - j0 < 4 ? S - j0 : 4;
      uint8_t bits[4] = {1, 1, 1, 1};
      row_keep_bits(bits, key, dropout, b, H, h, S, i, j0, count);
      for (int u = 0; u < count; ++u) pr[j0 + u] = math::dropped_probability(pr[j0 + u], bits[u], keep_scale);
    }
  }
}

// p [B,S,S] holds head h's scaled scores; on return its probabilities (from stats), and `dropped` (when
// non-null) the probabilities times keep / (1 - dropout).
__global__ void fused_recompute_kernel(float* p, float* dropped, const float* stats, const int32_t* mask, int B, int H,
                                       int S, int h, float dropout, DropoutKey key, float keep_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<long long>(B) * S) return;
  const int b = static_cast<int>(row / S), i = static_cast<int>(row % S);
  float* pr = p + static_cast<size_t>(row) * S;
  float* dr = dropped != nullptr ? dropped + static_cast<size_t>(row) * S : nullptr;
  const int32_t* m = mask != nullptr ? mask + static_cast<size_t>(b) * S : nullptr;
  const int32_t query_mask = query_mask_of(m, i);
  const float lse = stats[(static_cast<size_t>(b) * H + h) * S + i];
  for (int j0 = 4 * lane; j0 < S; j0 += 4 * kWarp) {
    const int count = S - j0 < 4 ? S - j0 : 4;
    uint8_t bits[4] = {1, 1, 1, 1};
    if (dr != nullptr) row_keep_bits(bits, key, dropout, b, H, h, S, i, j0, count);
    for (int u = 0; u < count; ++u) {
      const int j = j0 + u;
      const float pj = math::recomputed_probability(pr[j], lse, key_valid(m, query_mask, j));
      pr[j] = pj;
      if (dr != nullptr) dr[j] = math::dropped_probability(pj, bits[u], keep_scale);
    }
  }
}

// ds [B,S,S] holds d(dropped probabilities) of head h; on return d(scores). p: the probabilities.
__global__ void fused_softmax_backward_kernel(float* ds, const float* p, int B, int H, int S, int h, float dropout,
                                              DropoutKey key, float keep_scale, float score_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<long long>(B) * S) return;
  const int b = static_cast<int>(row / S), i = static_cast<int>(row % S);
  float* d = ds + static_cast<size_t>(row) * S;
  const float* pr = p + static_cast<size_t>(row) * S;
  float dot = 0.0f;
  for (int j0 = 4 * lane; j0 < S; j0 += 4 * kWarp) {
    const int count = S - j0 < 4 ? S - j0 : 4;
    uint8_t bits[4] = {1, 1, 1, 1};
    row_keep_bits(bits, key, dropout, b, H, h, S, i, j0, count);
    for (int u = 0; u < count; ++u) {
      const int j = j0 + u;
      const float dp = dropout > 0.0f ? math::dropped_probability(d[j], bits[u], keep_scale) : d[j];
      d[j] = dp;
      dot += pr[j] * dp;
    }
  }
  dot = warp_reduce(dot, SumOp{});
  ELECTRA_ATTENTION_KEYS(j, S, lane) d[j] = math::score_gradient(pr[j], d[j], dot, score_scale);
}

unsigned row_blocks(long long rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }
float keep_scale_of(float dropout) { return dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f; }

}  // namespace

void fused_attention_softmax_forward(const Stream& s, float* probs, float* stats, const int32_t* mask, int B, int H,
                                     int S, int h, float dropout, const DropoutKey& key) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  fused_softmax_forward_kernel<<<row_blocks(rows), kBlock, 0, s.stream>>>(probs, stats, mask, B, H, S, h, dropout, key,
                                                                          keep_scale_of(dropout));
  ELECTRA_CUDA_CHECK_LAUNCH("fused_softmax_forward_kernel");
}

void fused_attention_recompute(const Stream& s, float* probs, float* dropped, const float* stats, const int32_t* mask,
                               int B, int H, int S, int h, float dropout, const DropoutKey& key) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  fused_recompute_kernel<<<row_blocks(rows), kBlock, 0, s.stream>>>(probs, dropped, stats, mask, B, H, S, h, dropout,
                                                                    key, keep_scale_of(dropout));
  ELECTRA_CUDA_CHECK_LAUNCH("fused_recompute_kernel");
}

void fused_attention_softmax_backward(const Stream& s, float* ds, const float* probs, int B, int H, int S, int h,
                                      float dropout, const DropoutKey& key, float score_scale) {
  const long long rows = static_cast<long long>(B) * S;
  if (rows <= 0) return;
  fused_softmax_backward_kernel<<<row_blocks(rows), kBlock, 0, s.stream>>>(ds, probs, B, H, S, h, dropout, key,
                                                                           keep_scale_of(dropout), score_scale);
  ELECTRA_CUDA_CHECK_LAUNCH("fused_softmax_backward_kernel");
}

}  // namespace electra::cuda
