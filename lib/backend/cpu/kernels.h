// CPU kernels behind make_cpu_backend<T>() (T = float or double). Each function is the reference
// implementation of the Backend<T> op of the same name (lib/backend/backend.h has the contracts:
// shapes, which outputs are overwritten and which gradients accumulate). Kept as free functions so
// tests, benchmarks and the CUDA tests can call them without a Backend object. All pointers are host
// memory owned by the caller.
//
// Determinism promise: for the same inputs every kernel returns bitwise identical outputs, whatever
// the OpenMP thread count (OMP_NUM_THREADS) and however a batch is split into calls (for the random
// ops, given first_example). Reductions across rows (dbias, dgamma/dbeta, embedding tables,
// sum_squares) use fixed partitions that do not depend on the thread count. A GEMM is split over
// threads by rows or columns of C only, never along K, so every element of C is the same K-long dot
// product from the same OpenBLAS kernel whatever the split (tests/backend checks 1, 2 and 3 threads).
// Not promised: equal bits on different CPUs (OpenBLAS kernels, and the AVX-512 / AVX2 / baseline
// clones of our own loops, sum in different orders and may fuse multiply-adds).
//
// Threading: OpenMP (OMP_NUM_THREADS) is the only thread pool. GEMMs are split over the OpenMP
// threads, each piece a single-threaded OpenBLAS call; make_cpu_backend switches OpenBLAS (the pthread
// build on Debian) to one thread, and kernels that call BLAS inside their own parallel regions
// (attention, batched GEMM) force one thread for the region even if someone changed it. Two pools
// would oversubscribe the cores: OpenBLAS's threads spin after each call while the OpenMP loops run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/backend/backend.h"

namespace electra::cpu {

// ---- matrix products (blas.cpp) ----
template <typename T>
void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
          T beta, T* c, int ldc);
template <typename T>
void gemm_strided_batched(Transpose trans_a, Transpose trans_b, int m, int n, int k, T alpha, const T* a, int lda,
                          long long stride_a, const T* b, int ldb, long long stride_b, T beta, T* c, int ldc,
                          long long stride_c, int batch);
template <typename T>
void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in, int out);
template <typename T>
void linear_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, int rows, int in, int out);
// dbias[c] += sum_r dy[r, c] for dy [rows, cols], rows summed in order 0..rows-1 for every column.
template <typename T>
void column_sums_accumulate(T* dbias, const T* dy, int rows, int cols);
// C[m,n] = alpha * op(A) op(B), C overwritten (beta 0), on the calling thread only: the per-(batch, head)
// products of attention (small_gemm.cpp). float: an own register-tiled AVX-512 kernel when the CPU has
// it (each element one K-long chain of fused multiply-adds in order, then times alpha; A^T B^T goes to
// OpenBLAS), else OpenBLAS; double: OpenBLAS (gemm).
template <typename T>
void attention_gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
                    int ldb, T* c, int ldc);
// Whether attention_gemm<float> runs the own kernel on this CPU (tests and benchmarks report it).
bool attention_gemm_uses_own_kernel();

// ---- elementwise (elementwise.cpp) ----
template <typename T>
void fill(T* x, size_t n, T value);
template <typename T>
void activation_forward(Activation act, T* y, const T* x, size_t n);
template <typename T>
void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n);
template <typename T>
void add(T* out, const T* a, const T* b, size_t n);
template <typename T>
void accumulate(T* y, const T* x, size_t n);
template <typename T>
void scale(T* x, size_t n, T alpha);
// keep[i] = uniform >= p for element i of the tensor described by key (see DropoutKey); y = x * keep / (1-p).
// p must be in [0, 1). y may alias x.
template <typename T>
void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key);
template <typename T>
void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p);
// Only the keep mask of elements [begin, begin + count) of a dropout site: keep[j] is element begin + j.
// Used by dropout_forward and attention; exposed for tests.
void dropout_keep_mask(uint8_t* keep, size_t begin, size_t count, float p, const DropoutKey& key);
// The keep mask [S,S] of attention pair (b, h) of H heads: keep[q*S + k] is element (b, h, q, k) of the
// key, ((b*H + h)*Sk + q)*Sk + k with Sk = attention_key_seq(key, S) >= S (DropoutKey). Every attention
// kernel draws its bits here, so a trimmed batch's bits are the untrimmed one's.
void attention_keep_mask(uint8_t* keep, int b, int h, int H, int S, float p, const DropoutKey& key);

// ---- normalisation (layernorm.cpp) ----
// Biased variance, eps inside the square root (PyTorch): rstd = 1 / sqrt(var + eps).
template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols, T eps);
// dx overwritten (may be null), dgamma/dbeta accumulated (each may be null). Row sums for dgamma/dbeta
// are formed over fixed blocks of rows and added in block order.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean, const T* rstd,
                        const T* gamma, int rows, int cols);

// ---- embeddings (embedding.cpp) ----
// position_table / type_table may be null (that term is left out); type_ids may be null (type 0);
// position_ids may be null (token (b, s) at position s). Ids must be non-negative (checked) and inside
// their tables (not checked: the sizes are not passed).
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                       const T* word_table, const T* position_table, const T* type_table, int B, int S, int E);
// Each of dword / dposition / dtype may be null (skipped). Tokens are added in order (b, s) for every
// table row: deterministic, and parallel over column blocks so there are no races.
template <typename T>
void embedding_backward(T* dword, T* dposition, T* dtype, const T* dout, const int32_t* ids, const int32_t* type_ids,
                        const int32_t* position_ids, int B, int S, int E);
// Positions must lie in [0, S) (checked).
template <typename T>
void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C);
template <typename T>
void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C);

// ---- attention (attention.cpp) ----
// As Backend<T>::attention_forward. Keys query i does not attend (attends_key(mask[i], mask[j]) false:
// padding, or another packed example) get probability exactly 0; a query row with no attended key gets
// all-zero probabilities (and context 0). A null mask attends to every key.
// With dropout == 0, keep may be null
// (when given, it is set to all ones). The keep mask uses DropoutKey element indices of the
// [B,H,Sk,Sk] probability tensor: element ((b*H + h)*Sk + i)*Sk + j (attention_keep_mask).
template <typename T>
void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S, int H,
                       int D, float dropout, const DropoutKey& key);
// scratch: at least B*H*S*S elements (holds d(scores)). keep may be null when dropout == 0.
template <typename T>
void attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs, const uint8_t* keep,
                        const int32_t* mask, int B, int S, int H, int D, float dropout);
// As Backend<T>::fused_attention_forward / fused_attention_backward: per (batch, head) pair O(S*S)
// per-thread scratch, nothing [B,H,S,S]. stats [B,H,S]: max + log(sum exp(score - max)) over the row's
// attended keys (the sum taken in T as the softmax does, the log in double), +infinity for a row with no
// attended key (its probabilities recompute to 0). Forward's context equals attention_forward's (same
// GEMMs, softmax code and keep bits: attention_keep_mask's element of the key, regenerated in backward);
// backward recomputes p = exp(score - stats) and agrees with attention_backward to rounding. A null mask
// attends to every key. context is not read by this backward (it is part of the interface for libraries
// that need it).
template <typename T>
void fused_attention_forward(T* context, T* stats, const T* qkv, const int32_t* mask, int B, int S, int H, int D,
                             float dropout, const DropoutKey& key);
template <typename T>
void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const T* stats,
                              const int32_t* mask, int B, int S, int H, int D, float dropout, const DropoutKey& key);

// ---- losses and sampling (losses.cpp) ----
// labels must lie in [0, V) (checked). grad_scale may be null (1 for every row). loss may be null.
template <typename T>
void softmax_cross_entropy(T* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                           const T* grad_scale, int rows, int V);
template <typename T>
void log_softmax(T* y, const T* x, int rows, int V);
// loss = max(x,0) - x*y + log1p(exp(-|x|)); grad_scale may be null (1); loss may be null.
template <typename T>
void sigmoid_cross_entropy(T* loss, T* dlogit, const T* logit, const int32_t* label, const T* grad_scale, size_t n);
// Exactly what is computed, in double, for row r and token v:
//   z = double(logits[r,v]) - (disallow && v == disallow[r] ? 1000 : 0)
//   score = z / double(temperature) + PhiloxStream(seed, kSampling, step, first_example + r / rows_per_example)
//                                        .gumbel((r % rows_per_example) * V + v)
//   samples[r] = the smallest v with the largest score.
// temperature must be > 0; a disallow entry outside [0, V) disallows nothing.
template <typename T>
void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                   uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example);
// The scatter of backend.h's contract, row by row, predictions in order (tokens.cpp). Fails naming the
// row, prediction and position when a weighted position is outside [0, S).
template <typename T>
void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                           const int32_t* input_mask, const int32_t* positions, const T* weights,
                           const int32_t* samples, int B, int S, int P);

// ---- reductions and optimizer (optimizer.cpp) ----
// Squares summed in double within fixed chunks of kSumSquaresChunk elements, chunk sums added in order.
inline constexpr size_t kSumSquaresChunk = 16384;
template <typename T>
double sum_squares(const T* x, size_t n);
template <typename T>
void adamw_step(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2, float eps,
                float weight_decay, long long t, float grad_scale, bool bias_correction);
// adamw_step over runs (Backend<T>::AdamWRun), bitwise equal to one adamw_step per run, in one parallel
// region over fixed 16384-element pieces of the runs.
template <typename T>
void adamw_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::AdamWRun* runs, size_t num_runs,
                     float lr, float beta1, float beta2, float eps, long long t, float grad_scale,
                     bool bias_correction);
// Backend<T>::lamb_step_runs: the runs cut into the same fixed 16384-element pieces; a parallel pass updates
// the moments and sums each piece's squares of p and u in double, the pieces of a run are added in order,
// and a second parallel pass recomputes u from the stored moments and applies it.
template <typename T>
void lamb_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::LambRun* runs, size_t num_runs,
                    float lr, float beta1, float beta2, float eps, long long t, float grad_scale);

}  // namespace electra::cpu
