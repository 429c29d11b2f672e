// Per-row arithmetic of the CUDA backend's own fused attention kernels (attention_fused.cu), as
// __host__ __device__ functions so that tests/cuda/fused_attention_math_test.cpp runs the same code on
// the CPU and compares it with the CPU backend's fused attention. Plain C++: includable without nvcc.
//
// The contract is backend.h's fused_attention_*: stats [B,H,S] holds each query row's log-sum-exp of the
// scores of the keys the row attends (attends_key below), scaled (+infinity for a row without a valid key, whose
// probabilities are all 0), and the dropout keep bit of probability (b, h, i, j) is element ((b*H + h)*Sk + i)*Sk + j
// of the key, as attention_forward draws it (Sk = key.key_seq_length, or S when 0: the untrimmed length of a trimmed
// batch).
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "lib/backend/cuda/elementwise_math.h"

namespace electra::cuda::math {

// backend.h's attends_key (constexpr host code) for the kernels: query i attends key j when the key is
// real and belongs to the query's example (a padding query attends every real key). With 0/1 masks it is
// key_mask != 0, the rule before packing.
ELECTRA_HD inline bool attends_key(int32_t query_mask, int32_t key_mask) {
  return key_mask != 0 && (query_mask == 0 || query_mask == key_mask);
}

// Element index of probability (b, h, i, j) in the [B,H,S,S] tensor whose keep bits the key describes.
ELECTRA_HD inline uint64_t attention_keep_index(int b, int H, int h, int S, int i, int j) {
  return ((static_cast<uint64_t>(b) * H + h) * S + i) * S + j;
}
// The same for a call over S keys with `key`: rows key_seq_length long when it is set (a trimmed batch,
// DropoutKey), so a kept element draws the untrimmed batch's bit.
ELECTRA_HD inline uint64_t attention_keep_index(const DropoutKey& key, int b, int H, int h, int S, int i, int j) {
  return attention_keep_index(b, H, h, key.key_seq_length > 0 ? key.key_seq_length : S, i, j);
}

// A row's stats from its largest valid score and sum of exp(score - max): max + log(sum) in double (as
// the CPU backend), +infinity when no key is valid (max == -infinity).
ELECTRA_HD inline float row_log_sum_exp(float max_score, float sum) {
  if (max_score == -INFINITY) return INFINITY;
  return static_cast<float>(static_cast<double>(max_score) + log(static_cast<double>(sum)));
}

// A probability again from its scaled score and the row's stats (0 for keys the row does not attend, and
// for empty rows).
ELECTRA_HD inline float recomputed_probability(float score, float row_lse, bool valid) {
  return valid && row_lse < INFINITY ? exp_f(score - row_lse) : 0.0f;
}

// The probability after dropout: p * keep / (1 - dropout).
ELECTRA_HD inline float dropped_probability(float p, uint8_t keep, float keep_scale) {
  return p * (keep ? keep_scale : 0.0f);
}

// d(score) of one key from its probability p, the gradient dp of its dropped probability (already
// multiplied by keep * keep_scale) and the row's dot = sum_j p_j dp_j.
ELECTRA_HD inline float score_gradient(float p, float dp, float dot, float score_scale) {
  return p * (dp - dot) * score_scale;
}

}  // namespace electra::cuda::math
