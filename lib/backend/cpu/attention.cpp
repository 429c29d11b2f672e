// Multi-head scaled dot-product attention on the fused qkv layout [B,S,3,H,D]. One (batch, head) pair
// at a time: its query/key/value are strided views into qkv (leading dimension 3*H*D), so the products
// are plain GEMMs with no repacking; pairs run in parallel on OpenMP, each product on its thread through
// attention_gemm (small_gemm.cpp: an own AVX-512 kernel in float, OpenBLAS single-threaded otherwise).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

thread_local std::vector<int32_t> all_ones;  // the mask used when none is given

void check_attention_shape(int B, int S, int H, int D, float dropout, const char* op) {
  ELECTRA_CHECK(B >= 0 && S > 0 && H > 0 && D > 0, op, ": bad shape B=", B, " S=", S, " H=", H, " D=", D);
  ELECTRA_CHECK(dropout >= 0.0f && dropout < 1.0f, op, ": dropout ", dropout, " outside [0, 1)");
}

// Masked softmax of the rows [S] of queries 0..rows-1 in place, mask the batch row's [S]: keys query i
// does not attend (attends_key(mask[i], mask[j]) false) get exactly 0; no attended key -> all 0.
// lse (may be null): per row, max + log(sum of exp(score - max)) over attended keys, +infinity for a row
// with none (so that exp(score - lse) is 0 for every key when the row is recomputed).
template <typename T>
ELECTRA_CPU_CLONES void masked_softmax_rows(T* p, T* lse, const int32_t* mask, int rows, int S) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int i = 0; i < rows; ++i) {
    T* row = p + static_cast<size_t>(i) * S;
    const int32_t query = mask[i];
    T max_score = kNegInf;
#pragma omp simd reduction(max : max_score)
    for (int j = 0; j < S; ++j) max_score = std::max(max_score, attends_key(query, mask[j]) ? row[j] : kNegInf);
    if (max_score == kNegInf) {
      std::fill(row, row + S, T(0));
      if (lse != nullptr) lse[i] = std::numeric_limits<T>::infinity();
      continue;
    }
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < S; ++j) {
      const T e = attends_key(query, mask[j]) ? vmath::exp_t(row[j] - max_score) : T(0);
      row[j] = e;
      sum += e;
    }
    const T inv = T(1) / sum;
#pragma omp simd
    for (int j = 0; j < S; ++j) row[j] *= inv;
    // In double, so the float statistic is the correctly rounded log-sum-exp of the float scores.
    if (lse != nullptr) lse[i] = static_cast<T>(static_cast<double>(max_score) + std::log(static_cast<double>(sum)));
  }
}

// The probabilities of rows [S] again from their scores (in place) and forward's log-sum-exp:
// p = exp(score - lse) for attended keys, exactly 0 for the others (and for rows with lse = +infinity).
template <typename T>
ELECTRA_CPU_CLONES void recompute_probability_rows(T* p, const T* lse, const int32_t* mask, int rows, int S) {
  for (int i = 0; i < rows; ++i) {
    T* row = p + static_cast<size_t>(i) * S;
    const T row_lse = lse[i];
    const int32_t query = mask[i];
    if (!(row_lse < std::numeric_limits<T>::infinity())) {
      std::fill(row, row + S, T(0));
      continue;
    }
#pragma omp simd
    for (int j = 0; j < S; ++j) row[j] = attends_key(query, mask[j]) ? vmath::exp_t(row[j] - row_lse) : T(0);
  }
}

// Backward through dropout (keep may be null) and softmax, rows [S] in place:
// ds = p * (dp - sum_j p dp) * score_scale, with dp = d(attend) * keep / (1 - p).
template <typename T>
ELECTRA_CPU_CLONES void softmax_backward_rows(T* ds, const T* p, const uint8_t* keep, T keep_scale, T score_scale,
                                              int rows, int S) {
  for (int i = 0; i < rows; ++i) {
    T* dsr = ds + static_cast<size_t>(i) * S;
    const T* pr = p + static_cast<size_t>(i) * S;
    if (keep != nullptr) {
      const uint8_t* kr = keep + static_cast<size_t>(i) * S;
#pragma omp simd
      for (int j = 0; j < S; ++j) dsr[j] *= kr[j] ? keep_scale : T(0);
    }
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < S; ++j) dot += pr[j] * dsr[j];
#pragma omp simd
    for (int j = 0; j < S; ++j) dsr[j] = pr[j] * (dsr[j] - dot) * score_scale;
  }
}

template <typename T>
ELECTRA_CPU_CLONES void apply_keep(T* out, const T* p, const uint8_t* keep, T keep_scale, size_t n) {
#pragma omp simd
  for (size_t e = 0; e < n; ++e) out[e] = p[e] * (keep[e] ? keep_scale : T(0));
}

// S ones: the mask row used when no mask is given (the calling thread's, grown on demand).
const int32_t* all_valid_keys(int S) {
  std::vector<int32_t>& ones = all_ones;
  if (ones.size() < static_cast<size_t>(S)) ones.assign(S, 1);
  return ones.data();
}

}  // namespace

template <typename T>
void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S, int H,
                       int D, float dropout, const DropoutKey& key) {
  check_attention_shape(B, S, H, D, dropout, "attention_forward");
  ELECTRA_CHECK(dropout == 0.0f || keep != nullptr, "attention_forward: keep mask is null with dropout ", dropout);
  ELECTRA_CHECK(dropout == 0.0f || key.elements_per_example > 0, "attention_forward: elements_per_example is 0");
  const int ld_qkv = 3 * H * D, ld_ctx = H * D;
  const T score_scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout > 0.0f ? T(1) / (T(1) - T(dropout)) : T(1);
  const size_t SS = static_cast<size_t>(S) * S;
  const int pairs = B * H;
  // Without a mask every key is valid.
  const int32_t* all_valid = all_valid_keys(S);

  detail::BlasSingleThreaded single;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < pairs; ++bh) {
    const int b = bh / H, h = bh % H;
    const T* q = qkv + static_cast<size_t>(b) * S * ld_qkv + h * D;
    const T* k = q + H * D;
    const T* v = q + 2 * H * D;
    const int32_t* mask_b = mask != nullptr ? mask + static_cast<size_t>(b) * S : all_valid;
    T* p = probs + bh * SS;
    // scores = q k^T / sqrt(D)
    attention_gemm(Transpose::kNo, Transpose::kYes, S, S, D, score_scale, q, ld_qkv, k, ld_qkv, p, S);
    masked_softmax_rows(p, static_cast<T*>(nullptr), mask_b, S, S);

    const T* attend = p;
    if (dropout > 0.0f) {
      uint8_t* kb = keep + bh * SS;
      attention_keep_mask(kb, b, h, H, S, dropout, key);
      T* dropped = detail::thread_scratch<T, detail::kScratchAttention>(SS);
      apply_keep(dropped, p, kb, keep_scale, SS);
      attend = dropped;
    } else if (keep != nullptr) {
      std::fill(keep + bh * SS, keep + (bh + 1) * SS, uint8_t{1});
    }
    // context[b,:,h,:] = attend v
    T* ctx = context + static_cast<size_t>(b) * S * ld_ctx + h * D;
    attention_gemm(Transpose::kNo, Transpose::kNo, S, D, S, T(1), attend, S, v, ld_qkv, ctx, ld_ctx);
  }
}

template <typename T>
void attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs, const uint8_t* keep,
                        const int32_t* mask, int B, int S, int H, int D, float dropout) {
  check_attention_shape(B, S, H, D, dropout, "attention_backward");
  ELECTRA_CHECK(dropout == 0.0f || keep != nullptr, "attention_backward: keep mask is null with dropout ", dropout);
  (void)mask;  // keys a query does not attend have probability 0: their score gradients vanish through probs
  const int ld_qkv = 3 * H * D, ld_ctx = H * D;
  const T score_scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout > 0.0f ? T(1) / (T(1) - T(dropout)) : T(1);
  const size_t SS = static_cast<size_t>(S) * S;
  const int pairs = B * H;

  detail::BlasSingleThreaded single;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < pairs; ++bh) {
    const int b = bh / H, h = bh % H;
    const size_t qkv_off = static_cast<size_t>(b) * S * ld_qkv + h * D;
    const T* q = qkv + qkv_off;
    const T* k = q + H * D;
    const T* v = q + 2 * H * D;
    T* dq = dqkv + qkv_off;
    T* dk = dq + H * D;
    T* dv = dq + 2 * H * D;
    const T* p = probs + bh * SS;
    const T* dctx = dcontext + static_cast<size_t>(b) * S * ld_ctx + h * D;
    T* ds = scratch + bh * SS;

    const T* attend = p;
    const uint8_t* kb = dropout > 0.0f ? keep + bh * SS : nullptr;
    if (kb != nullptr) {
      T* dropped = detail::thread_scratch<T, detail::kScratchAttention>(SS);
      apply_keep(dropped, p, kb, keep_scale, SS);
      attend = dropped;
    }
    // dv = attend^T dctx
    attention_gemm(Transpose::kYes, Transpose::kNo, S, D, S, T(1), attend, S, dctx, ld_ctx, dv, ld_qkv);
    // d(attend) = dctx v^T
    attention_gemm(Transpose::kNo, Transpose::kYes, S, S, D, T(1), dctx, ld_ctx, v, ld_qkv, ds, S);
    // Through dropout, then softmax.
    softmax_backward_rows(ds, p, kb, keep_scale, score_scale, S, S);
    // dq = ds k; dk = ds^T q
    attention_gemm(Transpose::kNo, Transpose::kNo, S, D, S, T(1), ds, S, k, ld_qkv, dq, ld_qkv);
    attention_gemm(Transpose::kYes, Transpose::kNo, S, D, S, T(1), ds, S, q, ld_qkv, dk, ld_qkv);
  }
}

// Fused attention: one (batch, head) pair per OpenMP iteration with O(S*S) per-thread scratch. The
// scores come from the same GEMM and the probabilities from the same softmax code as attention_forward,
// and the keep bits from the same attention_keep_mask indices, so forward's context equals the
// materialised one; backward recomputes the probabilities from the scores and the saved log-sum-exp.
template <typename T>
void fused_attention_forward(T* context, T* stats, const T* qkv, const int32_t* mask, int B, int S, int H, int D,
                             float dropout, const DropoutKey& key) {
  check_attention_shape(B, S, H, D, dropout, "fused_attention_forward");
  ELECTRA_CHECK(dropout == 0.0f || key.elements_per_example > 0, "fused_attention_forward: elements_per_example is 0");
  const int ld_qkv = 3 * H * D, ld_ctx = H * D;
  const T score_scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout > 0.0f ? T(1) / (T(1) - T(dropout)) : T(1);
  const size_t SS = static_cast<size_t>(S) * S;
  const int pairs = B * H;
  const int32_t* all_valid = all_valid_keys(S);

  detail::BlasSingleThreaded single;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < pairs; ++bh) {
    const int b = bh / H, h = bh % H;
    const T* q = qkv + static_cast<size_t>(b) * S * ld_qkv + h * D;
    const T* k = q + H * D;
    const T* v = q + 2 * H * D;
    const int32_t* mask_b = mask != nullptr ? mask + static_cast<size_t>(b) * S : all_valid;
    T* p = detail::thread_scratch<T, detail::kScratchAttention>(SS);
    attention_gemm(Transpose::kNo, Transpose::kYes, S, S, D, score_scale, q, ld_qkv, k, ld_qkv, p, S);
    masked_softmax_rows(p, stats + static_cast<size_t>(bh) * S, mask_b, S, S);
    if (dropout > 0.0f) {
      uint8_t* kb = detail::thread_scratch<uint8_t, detail::kScratchAttentionKeep>(SS);
      attention_keep_mask(kb, b, h, H, S, dropout, key);
      apply_keep(p, p, kb, keep_scale, SS);
    }
    T* ctx = context + static_cast<size_t>(b) * S * ld_ctx + h * D;
    attention_gemm(Transpose::kNo, Transpose::kNo, S, D, S, T(1), p, S, v, ld_qkv, ctx, ld_ctx);
  }
}

template <typename T>
void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const T* stats,
                              const int32_t* mask, int B, int S, int H, int D, float dropout, const DropoutKey& key) {
  check_attention_shape(B, S, H, D, dropout, "fused_attention_backward");
  ELECTRA_CHECK(dropout == 0.0f || key.elements_per_example > 0, "fused_attention_backward: elements_per_example is 0");
  (void)context;  // only the probabilities' log-sum-exp is needed here
  const int ld_qkv = 3 * H * D, ld_ctx = H * D;
  const T score_scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout > 0.0f ? T(1) / (T(1) - T(dropout)) : T(1);
  const size_t SS = static_cast<size_t>(S) * S;
  const int pairs = B * H;
  const int32_t* all_valid = all_valid_keys(S);

  detail::BlasSingleThreaded single;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < pairs; ++bh) {
    const int b = bh / H, h = bh % H;
    const size_t qkv_off = static_cast<size_t>(b) * S * ld_qkv + h * D;
    const T* q = qkv + qkv_off;
    const T* k = q + H * D;
    const T* v = q + 2 * H * D;
    T* dq = dqkv + qkv_off;
    T* dk = dq + H * D;
    T* dv = dq + 2 * H * D;
    const T* dctx = dcontext + static_cast<size_t>(b) * S * ld_ctx + h * D;
    const int32_t* mask_b = mask != nullptr ? mask + static_cast<size_t>(b) * S : all_valid;
    T* p = detail::thread_scratch<T, detail::kScratchAttention>(SS);
    T* ds = detail::thread_scratch<T, detail::kScratchAttentionGrad>(SS);

    // The probabilities again: forward's scores, then exp(score - lse).
    attention_gemm(Transpose::kNo, Transpose::kYes, S, S, D, score_scale, q, ld_qkv, k, ld_qkv, p, S);
    recompute_probability_rows(p, stats + static_cast<size_t>(bh) * S, mask_b, S, S);
    const T* attend = p;
    const uint8_t* kb = nullptr;
    if (dropout > 0.0f) {
      uint8_t* bits = detail::thread_scratch<uint8_t, detail::kScratchAttentionKeep>(SS);
      attention_keep_mask(bits, b, h, H, S, dropout, key);
      kb = bits;
      apply_keep(ds, p, kb, keep_scale, SS);  // ds holds the dropped probabilities until d(attend) below
      attend = ds;
    }
    // dv = attend^T dctx
    attention_gemm(Transpose::kYes, Transpose::kNo, S, D, S, T(1), attend, S, dctx, ld_ctx, dv, ld_qkv);
    // d(attend) = dctx v^T, then through dropout and softmax.
    attention_gemm(Transpose::kNo, Transpose::kYes, S, S, D, T(1), dctx, ld_ctx, v, ld_qkv, ds, S);
    softmax_backward_rows(ds, p, kb, keep_scale, score_scale, S, S);
    // dq = ds k; dk = ds^T q
    attention_gemm(Transpose::kNo, Transpose::kNo, S, D, S, T(1), ds, S, k, ld_qkv, dq, ld_qkv);
    attention_gemm(Transpose::kYes, Transpose::kNo, S, D, S, T(1), ds, S, q, ld_qkv, dk, ld_qkv);
  }
}

#define ELECTRA_INSTANTIATE(T)                                                                                         \
  template void attention_forward<T>(T*, T*, uint8_t*, const T*, const int32_t*, int, int, int, int, float,            \
                                     const DropoutKey&);                                                               \
  template void attention_backward<T>(T*, T*, const T*, const T*, const T*, const uint8_t*, const int32_t*, int, int,  \
                                      int, int, float);                                                                \
  template void fused_attention_forward<T>(T*, T*, const T*, const int32_t*, int, int, int, int, float,                \
                                           const DropoutKey&);                                                         \
  template void fused_attention_backward<T>(T*, const T*, const T*, const T*, const T*, const int32_t*, int, int, int, \
                                            int, float, const DropoutKey&);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
