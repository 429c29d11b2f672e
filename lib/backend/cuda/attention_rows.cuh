// Device code of one attention query row, shared by the warp-per-row kernels of the materialised
// attention (reductions.cu, float), its bf16 storage twin (attention_bf16.cu) and the fused attention
// (attention_fused.cu), so that the three do the same arithmetic in the same order by construction.
//
// Lane ownership: lane l of the row's warp handles keys j = 128 t + 4 l + u (u < 4), the same in every
// pass, so a lane only reads back what it wrote, and each group of four keys shares one Philox block
// for dropout. Per-element arithmetic: attention_fused_math.h (tested on the CPU).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/backend/cuda/attention_fused_math.h"
#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/storage.cuh"

// The keys j of a row that `lane` owns, in its order (a loop header: a statement or block follows).
#define ELECTRA_ATTENTION_KEYS(j, S, lane)                   \
  for (int j##0 = 4 * (lane); j##0 < (S); j##0 += 4 * kWarp) \
    for (int j = j##0; j < j##0 + 4 && j < (S); ++j)

namespace electra::cuda {

// The row's largest valid score (-infinity when no key is valid) and sum of exp(score - max) (0 then).
struct SoftmaxRowStats {
  float max;
  float sum;
};

// The mask value of query i of a row (0 without a mask: then every key is valid anyway).
__device__ inline int32_t query_mask_of(const int32_t* mask_row, int i) {
  return mask_row != nullptr ? mask_row[i] : 0;
}

// Whether key j is valid for a query whose mask value is query_mask (backend.h's attends_key; every key
// without a mask).
__device__ inline bool key_valid(const int32_t* mask_row, int32_t query_mask, int j) {
  return mask_row == nullptr || math::attends_key(query_mask, mask_row[j]);
}

// Masked softmax of one query row in place: p [S] holds the scaled scores, on return the probabilities
// (all 0 when no key is valid). mask_row: the example's mask row [S] (0 padding, k the k-th packed
// example), or null; query_mask: the query's own entry of it (query_mask_of).
// Every lane of the warp must call it (it shuffles).
__device__ inline SoftmaxRowStats warp_masked_softmax_row(float* p, const int32_t* mask_row, int32_t query_mask, int S,
                                                          int lane) {
  float mx = -INFINITY;
  ELECTRA_ATTENTION_KEYS(j, S, lane) {
    if (key_valid(mask_row, query_mask, j)) mx = fmaxf(mx, p[j]);
  }
  mx = warp_reduce(mx, MaxOp{});
  float sum = 0.0f;
  if (mx == -INFINITY) {  // no valid key: all-zero probabilities
    ELECTRA_ATTENTION_KEYS(j, S, lane) p[j] = 0.0f;
  } else {
    ELECTRA_ATTENTION_KEYS(j, S, lane) {
      const float e = key_valid(mask_row, query_mask, j) ? math::exp_f(p[j] - mx) : 0.0f;
      p[j] = e;
      sum += e;
    }
    sum = warp_reduce(sum, SumOp{});
    const float inv = 1.0f / sum;
    ELECTRA_ATTENTION_KEYS(j, S, lane) p[j] *= inv;
  }
  return SoftmaxRowStats{mx, sum};
}

// Dropout of one row of probabilities p [S]: with dropout > 0, draws the keep bits of elements
// key_base + j of the key (math::attention_keep_index), stores them in keep[base + j] and the dropped
// probabilities in dropped [S] (rounded to D once); without dropout, keep (when non-null) is all ones
// and dropped is not touched.
template <typename D>
__device__ inline void warp_dropout_row(D* dropped, uint8_t* keep, const float* p, const DropoutKey& key, size_t base,
                                        uint64_t key_base, int S, int lane, float dropout, float keep_scale) {
  if (dropout > 0.0f) {
    for (int j0 = 4 * lane; j0 < S; j0 += 4 * kWarp) {
      const int count = S - j0 < 4 ? S - j0 : 4;
      uint8_t bits[4];
      math::dropout_keep_group(bits, key, key_base + j0, count, dropout);
      for (int u = 0; u < count; ++u) {
        keep[base + j0 + u] = bits[u];
        dropped[j0 + u] = from_float<D>(math::dropped_probability(p[j0 + u], bits[u], keep_scale));
      }
    }
  } else if (keep != nullptr) {
    ELECTRA_ATTENTION_KEYS(j, S, lane) keep[base + j] = 1;
  }
}

// First pass of the softmax backward of one row: d [S] holds d(dropped probabilities), on return
// d(probabilities) (times keep * keep_scale when keep_row is non-null); returns the row's
// dot = sum_j p_j d_j over the warp. p: the row's probabilities (float or __nv_bfloat16).
template <typename P>
__device__ inline float warp_dropout_gradient_dot(float* d, const P* p, const uint8_t* keep_row, int S, int lane,
                                                  float keep_scale) {
  float dot = 0.0f;
  ELECTRA_ATTENTION_KEYS(j, S, lane) {
    const float v = keep_row != nullptr ? math::dropped_probability(d[j], keep_row[j], keep_scale) : d[j];
    d[j] = v;
    dot += to_float(p[j]) * v;
  }
  return warp_reduce(dot, SumOp{});
}

}  // namespace electra::cuda
