// The non-GEMM ops of the fast CPU bf16 backend (onednn_bf16_backend.cpp), on bfloat16 storage. Each
// function has the contract of the Backend<bfloat16> op of the same name (lib/backend/backend.h) and of
// the float kernel in kernels.h, and computes what the bf16 reference (make_cpu_bf16_backend: widen every
// input, run the float kernel, round every output) computes, but reads and writes bfloat16 directly: values
// are widened in registers, or in per-thread tiles that stay in L1/L2 (one row, a few thousand elements),
// never into whole-tensor float copies. The wide arguments (float: statistics, losses, parameter
// gradients, grad_scale) are as in the reference.
//
// Results: bitwise equal to the reference on the same CPU, reductions included: they keep the float
// kernels' fixed orders (dgamma/dbeta over 32-row blocks, embedding tables and scatter-adds in token order,
// sum_squares over kSumSquaresChunk chunks, column sums in row order). Exceptions: where both operands of an
// operation are NaN, the result is a NaN that may carry the other operand's payload. Every kernel is
// bitwise independent of the OpenMP thread count (fixed partitions, as in kernels.h).
// Threading: as kernels.h (OpenMP only; inside the model's parallel chunks each call runs on one thread).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/backend/backend.h"
#include "lib/core/bfloat16.h"

namespace electra::cpu::bf16 {

using T = bfloat16;

// Fills the lookup tables (GELU's, 384 KiB) now rather than in the first step that needs them.
void prepare_tables();

// ---- elementwise ----
void fill(T* x, size_t n, T value);
void activation_forward(Activation act, T* y, const T* x, size_t n);
void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n);
void add(T* out, const T* a, const T* b, size_t n);
void accumulate(T* y, const T* x, size_t n);
void scale(T* x, size_t n, float alpha);
void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key);
void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p);

// ---- normalisation ----
void layernorm_forward(T* y, float* mean, float* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                       float eps);
void layernorm_backward(T* dx, float* dgamma, float* dbeta, const T* dy, const T* x, const float* mean,
                        const float* rstd, const T* gamma, int rows, int cols);
// The fused post-LN residual block (Backend<T>::dropout_add_layernorm_forward / layernorm_dropout_backward),
// one pass over each row. Results equal the unfused sequence's (the reference's) bitwise: res is rounded to
// bfloat16 before LayerNorm reads it, as when it is stored and read again, and dx is the dropout backward of
// the rounded d_res. layernorm_dropout_backward needs d_res when dx is non-null.
void dropout_add_layernorm_forward(T* y, T* res, uint8_t* keep, float* mean, float* rstd, const T* x, const T* residual,
                                   const T* gamma, const T* beta, int rows, int cols, float p, const DropoutKey& key,
                                   float eps);
void layernorm_dropout_backward(T* d_res, T* dx, float* dgamma, float* dbeta, const T* dy, const T* res,
                                const float* mean, const float* rstd, const T* gamma, const uint8_t* keep, int rows,
                                int cols, float p);

// ---- embeddings ----
void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                       const T* word_table, const T* position_table, const T* type_table, int B, int S, int E);
void embedding_backward(float* dword, float* dposition, float* dtype, const T* dout, const int32_t* ids,
                        const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E);
void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C);
void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C);

// ---- losses and sampling ----
void softmax_cross_entropy(float* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                           const float* grad_scale, int rows, int V);
void log_softmax(T* y, const T* x, int rows, int V);
void sigmoid_cross_entropy(float* loss, T* dlogit, const T* logit, const int32_t* label, const float* grad_scale,
                           size_t n);
void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                   uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example);

// ---- attention's row work (the fast backend's attention runs its products in oneDNN) ----
// Rows [S] of queries 0..rows-1 of one (batch, head), mask the batch row's [S]: probs = masked softmax of
// the float scores (keys the query does not attend, by attends_key, get exactly 0; a row without an
// attended key gets all zeros), rounded to bf16; when attend is non-null, also attend =
// round(probs * keep / (1 - p)) (keep: the row's dropout bits, keep_scale = 1 / (1 - p)). scores is
// overwritten (scratch).
void attention_softmax_rows(T* probs, T* attend, float* scores, const int32_t* mask, const uint8_t* keep,
                            float keep_scale, int rows, int S);
// attend = round(probs * keep * keep_scale) over n elements: backward recomputes forward's attend.
void attention_dropped_probs(T* attend, const T* probs, const uint8_t* keep, float keep_scale, size_t n);
// The softmax (and dropout) backward of rows [S]: ds = p * (dp - sum_j p dp), dp = d_attend * keep *
// keep_scale (keep may be null: no dropout). The 1/sqrt(D) score scale is left to the products after it.
void attention_softmax_backward_rows(T* ds, const float* d_attend, const T* probs, const uint8_t* keep,
                                     float keep_scale, int rows, int S);

// ---- reductions ----
double sum_squares(const T* x, size_t n);
// dbias[c] += sum_r dy[r, c] (float accumulation; rows in a fixed order): the bias gradient of a linear layer.
void column_sums_accumulate(float* dbias, const T* dy, int rows, int cols);

}  // namespace electra::cpu::bf16
