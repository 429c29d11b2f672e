// Launchers of the CUDA kernels behind make_cuda_backend and make_cuda_bf16_backend (host functions; the
// kernels are in the .cu files named below). Internal to lib/backend/cuda: the backends check shapes and
// arguments and call these; each enqueues its kernels on the given stream and returns without waiting.
// Shapes, aliasing and accumulate-vs-overwrite rules are backend.h's; pointers are device memory.
// Launchers templated on T (the storage type) exist for T = float and T = bfloat16 (explicitly
// instantiated in the .cu files): T elements are widened to float, computed in float and stored rounded
// to nearest-even; gradients of parameters, statistics, losses and scalars are float for both (Wide<T>).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/elementwise_math.h"

namespace electra::cuda {

// Bits of the device error word. A kernel that meets an index it must not use skips that element and
// sets its bit; the backend turns the word into an electra::Error at its next blocking call.
enum DeviceError : unsigned {
  kErrorNegativeId = 1u,     // embedding ids / type ids / position ids / embedding_backward keys < 0
  kErrorPosition = 2u,       // gather_rows / scatter_add_rows position outside [0, S)
  kErrorLabel = 4u,          // softmax_cross_entropy label outside [0, V)
  kErrorAttentionMask = 8u,  // cuDNN SDPA: a mask row that is not ones-then-zeros with at least one 1
  kErrorPackedMask = 16u,    // cuDNN SDPA: a mask row with several packed examples (values 1, 2, ...)
};

struct Stream {
  cudaStream_t stream = nullptr;
  unsigned* errors = nullptr;  // device word of DeviceError bits
  int sms = 1;                 // multiprocessors (grid sizes of grid-stride loops)
};

// ---- elementwise.cu ----
template <typename T>
void fill(const Stream& s, T* x, size_t n, T value);
// dst[i] = float(src[i]) (exact); dst[i] = bfloat16(src[i]) rounded to nearest-even.
void widen(const Stream& s, float* dst, const bfloat16* src, size_t n);
void narrow(const Stream& s, bfloat16* dst, const float* src, size_t n);
template <typename T>
void activation_forward(const Stream& s, Activation act, T* y, const T* x, size_t n);
template <typename T>
void activation_backward(const Stream& s, Activation act, T* dx, const T* dy, const T* x, size_t n);
template <typename T>
void add(const Stream& s, T* out, const T* a, const T* b, size_t n);
// y = y + x, one rounding per element.
template <typename T>
void accumulate(const Stream& s, T* y, const T* x, size_t n);
template <typename T>
void scale(const Stream& s, T* x, size_t n, float alpha);
// p in (0, 1); keep non-null. y may alias x.
template <typename T>
void dropout_forward(const Stream& s, T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key);
// dx = dy * keep * keep_scale
template <typename T>
void dropout_backward(const Stream& s, T* dx, const T* dy, const uint8_t* keep, size_t n, float keep_scale);
// y[r, :] = bias for rows r (the start of linear_forward).
template <typename T>
void broadcast_rows(const Stream& s, T* y, const T* bias, int rows, int cols);
template <typename T>
void sigmoid_cross_entropy(const Stream& s, float* loss, T* dlogit, const T* logit, const int32_t* label,
                           const float* grad_scale, size_t n);
void adamw_step(const Stream& s, float* params, const float* grads, float* m, float* v, size_t n,
                const math::AdamParams& a);
// Sum of squares in double: per chunk of kSumSquaresChunk elements (as the CPU backend), then the chunk
// sums with a fixed tree. partials: sum_squares_partials(n) doubles; *result is device memory.
inline constexpr size_t kSumSquaresChunk = 16384;
size_t sum_squares_partials(size_t n);
template <typename T>
void sum_squares(const Stream& s, double* result, double* partials, const T* x, size_t n);

// ---- reductions.cu ----
// Column sums over rows are formed per block of kPartialRows rows (fixed tree inside a block), then the
// block sums are added with a fixed tree: deterministic, no atomics. partials: column_partials(rows, cols)
// floats.
inline constexpr int kPartialRows = 128;
size_t column_partials(int rows, int cols);
// out[c] += sum_r x[r, c] (the sums in float)
template <typename T>
void column_sums_accumulate(const Stream& s, float* out, const T* x, int rows, int cols, float* partials);
template <typename T>
void layernorm_forward(const Stream& s, T* y, float* mean, float* rstd, const T* x, const T* gamma, const T* beta,
                       int rows, int cols, float eps);
// partials: 2 * column_partials(rows, cols) floats (used when dgamma or dbeta is non-null).
template <typename T>
void layernorm_backward(const Stream& s, T* dx, float* dgamma, float* dbeta, const T* dy, const T* x, const float* mean,
                        const float* rstd, const T* gamma, int rows, int cols, float* partials);
template <typename T>
void softmax_cross_entropy(const Stream& s, float* loss, T* dlogits, int32_t* argmax, const T* logits,
                           const int32_t* labels, const float* grad_scale, int rows, int V);
template <typename T>
void log_softmax(const Stream& s, T* y, const T* x, int rows, int V);
// The logits are widened to float per element, so bf16 logits draw exactly the samples of their float values.
template <typename T>
void gumbel_sample(const Stream& s, int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V,
                   float temperature, uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example);
// Attention, one head h at a time. probs and keep are the whole [B,H,S,S] tensors (keep may be null when
// dropout == 0); `dropped` is [B,S,S] for head h (probs * keep / (1 - p)), null when dropout == 0.
// mask [B,S] (or null) is backend.h's: 0 padding, k > 0 the row's k-th packed example; query i attends key
// j when math::attends_key(mask[i], mask[j]) (attention_fused_math.h). The same in every attention kernel.
// On entry probs holds head h's scaled scores; on return its masked softmax.
void attention_softmax_forward(const Stream& s, float* probs, uint8_t* keep, float* dropped, const int32_t* mask, int B,
                               int H, int S, int h, float dropout, const DropoutKey& key);
// dropped [B,S,S] = probs * keep * keep_scale for head h.
void attention_apply_keep(const Stream& s, float* dropped, const float* probs, const uint8_t* keep, int B, int H, int S,
                          int h, float keep_scale);
// ds (the [B,H,S,S] scratch, head h) holds d(attend); on return d(scores):
// ds = p * (dp - sum_j p dp) * score_scale with dp = ds * keep * keep_scale (keep may be null: no dropout).
void attention_softmax_backward(const Stream& s, float* ds, const float* probs, const uint8_t* keep, int B, int H,
                                int S, int h, float keep_scale, float score_scale);

// ---- attention_fused.cu: the row kernels of the own fused attention ----
// One head h at a time on a [B,S,S] slice (not the whole [B,H,S,S]); keep bits are regenerated from the
// key at the [B,H,S,S] element indices attention_forward uses, never stored. stats [B,H,S] (backend.h).
// probs holds head h's scaled scores; on return its probabilities times keep / (1 - dropout); stats
// of head h written.
void fused_attention_softmax_forward(const Stream& s, float* probs, float* stats, const int32_t* mask, int B, int H,
                                     int S, int h, float dropout, const DropoutKey& key);
// probs holds head h's scaled scores; on return exp(score - stats) (0 for masked keys); dropped (may be
// null) gets the probabilities times keep / (1 - dropout).
void fused_attention_recompute(const Stream& s, float* probs, float* dropped, const float* stats, const int32_t* mask,
                               int B, int H, int S, int h, float dropout, const DropoutKey& key);
// ds holds d(dropped probabilities) of head h; on return d(scores) = p * (dp - sum_j p dp) * score_scale
// with dp = ds * keep / (1 - dropout).
void fused_attention_softmax_backward(const Stream& s, float* ds, const float* probs, int B, int H, int S, int h,
                                      float dropout, const DropoutKey& key, float score_scale);

// ---- attention_bf16.cu: the rows of the bf16 storage backend's materialised attention ----
// attention_softmax_forward / _backward above with bf16 storage, one head h at a time: the scores and
// d(attend) are fp32 [B,S,S] slices (bf16 GEMM operands, fp32 accumulation), probs [B,H,S,S] is bf16, and
// the operands of the GEMMs that follow (attend, ds: [B,S,S]) are rounded to bf16. Same arithmetic and
// keep bits as the float kernels.
// scores holds head h's scaled scores; on return its probabilities (fp32); probs (head h) gets them
// rounded; keep (may be null when dropout == 0) the keep bits; attend (null when dropout == 0) the
// probabilities times keep / (1 - dropout), rounded.
void bf16_attention_softmax_forward(const Stream& s, float* scores, bfloat16* probs, uint8_t* keep, bfloat16* attend,
                                    const int32_t* mask, int B, int H, int S, int h, float dropout,
                                    const DropoutKey& key);
// attend [B,S,S] = probs (head h) * keep * keep_scale, rounded.
void bf16_attention_apply_keep(const Stream& s, bfloat16* attend, const bfloat16* probs, const uint8_t* keep, int B,
                               int H, int S, int h, float keep_scale);
// dp holds d(attend) of head h; on return dp * keep * keep_scale (keep may be null: no dropout), and ds
// [B,S,S] = p * (dp - sum_j p dp) * score_scale rounded, p the probabilities of head h.
void bf16_attention_softmax_backward(const Stream& s, bfloat16* ds, float* dp, const bfloat16* probs,
                                     const uint8_t* keep, int B, int H, int S, int h, float keep_scale,
                                     float score_scale);

// ---- embedding.cu ----
// position_ids [B,S] may be null (token (b, s) at position s); a negative id, type id or position id sets
// kErrorNegativeId and writes a zero row.
template <typename T>
void embedding_forward(const Stream& s, T* out, const int32_t* ids, const int32_t* type_ids,
                       const int32_t* position_ids, const T* word_table, const T* position_table, const T* type_table,
                       int B, int S, int E);
// Whether embedding_backward needs its workspace for these gradients: for every sorted scatter-add (word,
// type, and position when position_ids are given; the plain position sum needs none).
inline bool embedding_backward_sorts(const float* dword, const float* dposition, const float* dtype,
                                     const int32_t* position_ids) {
  return dword != nullptr || dtype != nullptr || (dposition != nullptr && position_ids != nullptr);
}
// Bytes of workspace embedding_backward needs for B*S tokens of width E.
size_t embedding_backward_workspace(int tokens, int E);
// The table gradients are float for both storage types (dout is widened per element). Without
// position_ids, dposition[s] sums the batch's rows s in order (bitwise the CPU's); with them, dposition is
// a sorted scatter-add keyed by position id like dword (segment_sum.h), deterministic without atomics.
template <typename T>
void embedding_backward(const Stream& s, float* dword, float* dposition, float* dtype, const T* dout,
                        const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E,
                        void* workspace, size_t workspace_bytes);
template <typename T>
void gather_rows(const Stream& s, T* out, const T* x, const int32_t* positions, int B, int S, int P, int C);
// For bfloat16 each destination row is rounded once: its old value plus all its predictions, summed in
// float in prediction order (the float op on the widened dx, then narrowed).
template <typename T>
void scatter_add_rows(const Stream& s, T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C);

// ---- tokens.cu ----
// backend.h's replace_masked_tokens; a weighted position outside [0, S) sets kErrorPosition.
void replace_masked_tokens(const Stream& s, int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                           const int32_t* input_mask, const int32_t* positions, const float* weights,
                           const int32_t* samples, int B, int S, int P);

// ---- layernorm_fused.cu: the fused post-LN residual block ----
// backend.h's dropout_add_layernorm_forward / layernorm_dropout_backward, one warp per row, bitwise the
// unfused kernels' results (dropout_forward, add, layernorm_forward; layernorm_backward, dropout_backward).
// p in [0, 1); keep non-null when p > 0 (may be null when p == 0). res may alias x.
template <typename T>
void dropout_add_layernorm_forward(const Stream& s, T* y, T* res, uint8_t* keep, float* mean, float* rstd, const T* x,
                                   const T* residual, const T* gamma, const T* beta, int rows, int cols, float p,
                                   const DropoutKey& key, float eps);
// dx may be null; keep is ignored when p == 0. partials: 2 * column_partials(rows, cols) floats (used when
// dgamma or dbeta is non-null).
template <typename T>
void layernorm_dropout_backward(const Stream& s, T* d_res, T* dx, float* dgamma, float* dbeta, const T* dy, const T* x,
                                const float* mean, const float* rstd, const T* gamma, const uint8_t* keep, int rows,
                                int cols, float p, float* partials);

}  // namespace electra::cuda
