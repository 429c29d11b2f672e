// The op interface the model is written against. The CPU backend (lib/backend/cpu) is the reference;
// other backends (CUDA) implement the same ops and are tested against it on random inputs.
//
// Conventions (all ops):
//  - Tensors are dense and row-major; pointers point into memory owned by this backend.
//  - Shapes are given as ints: B batch, S sequence, H heads, D head size, E/C feature width.
//  - Forward ops overwrite their outputs.
//  - Backward ops OVERWRITE input gradients (dx) and ACCUMULATE (+=) into parameter gradients
//    (dweight, dbias, dgamma, dtable), so parameter gradients can be summed over uses and micro-batches.
//  - Randomness comes from Philox streams (lib/core/philox.h) keyed by the global example index, so a
//    result does not depend on the batch split across ranks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "lib/core/bfloat16.h"
#include "lib/core/philox.h"

namespace electra {

// Backend<T>'s T is the storage type of activations (and of the weight copies GEMMs read). Wide<T> is the
// type of everything that must keep more precision: parameter gradients, normalisation statistics,
// losses and their weights, scalars. T itself for float and double; float for bfloat16 (bf16 mixed
// precision: bf16 activations and weight copies, fp32 master weights, gradients and statistics).
template <typename T>
struct WideOf {
  using type = T;
};
template <>
struct WideOf<bfloat16> {
  using type = float;
};
template <typename T>
using Wide = typename WideOf<T>::type;

// The names below (parse_*, to_string) are the ones flags, config keys, logs and metrics use; each is
// parsed once where its flag or key is read, and the code after that passes the enum.
enum class DeviceKind { kCpu, kCuda };
// "cpu" | "cuda"; fails "<what> must be cpu or cuda, got '<name>'" (`what` names the flag or key).
DeviceKind parse_device_kind(const std::string& name, const std::string& what);
std::string to_string(DeviceKind device);

// The arithmetic of GEMMs and attention (train.precision, --precision). Parameters, gradients, optimizer
// moments and the activations kept between ops are float32 in every mode (bf16 storage aside); the modes
// differ in what the tensor cores compute with. The CPU takes kFp32, and kBf16 with bf16 storage.
enum class CudaPrecision {
  kFp32,  // exact float32 GEMMs (CUBLAS_COMPUTE_32F): matches the CPU backend to fp32 tolerances
  kTf32,  // TF32 tensor cores (10 mantissa bits in products), fp32 accumulation
  kBf16,  // bf16 tensor cores (GEMM inputs rounded to bf16), fp32 accumulation; cuDNN SDPA attention
  kFp16,  // fp16 tensor cores, fp32 accumulation; cuDNN SDPA attention; needs loss scaling in training
};
// "fp32" | "tf32" | "bf16" | "fp16"; fails "<what> must be fp32, tf32, bf16 or fp16, got '<name>'".
CudaPrecision parse_cuda_precision(const std::string& name, const std::string& what);
std::string to_string(CudaPrecision precision);

// What activations and weight copies are stored in (train.storage, --storage): Backend<float> or
// Backend<bfloat16> under the model (lib/train/device.h's make_rank_model).
enum class StorageType { kFp32, kBf16 };
// "fp32" | "bf16", or "auto" (nullopt: chosen from the precision by resolve_storage); fails
// "<what> must be auto, fp32 or bf16, got '<name>'".
std::optional<StorageType> parse_storage_type(const std::string& name, const std::string& what);
std::string to_string(StorageType storage);

enum class Activation { kNone, kGelu, kRelu, kTanh };
Activation parse_activation(const std::string& name);  // "none"|"linear"|"gelu"|"relu"|"tanh"
std::string to_string(Activation activation);

enum class Transpose { kNo, kYes };

// Where the random numbers of one dropout site come from: element i of a [rows_per_example x ...]
// tensor block belongs to example first_example + i / elements_per_example and takes offset
// i % elements_per_example of stream (seed, kDropout, step, example, lane).
//
// Attention probabilities [B,H,S,S] are indexed as if their rows were key_seq_length long: element
// (b, h, q, k) is element ((b*H + h)*Sk + q)*Sk + k with Sk = key_seq_length (0: the call's S), and
// elements_per_example is then H*Sk*Sk. A batch trimmed from Sk slots to S < Sk (Batch::slot_seq_length)
// so draws, for every element it keeps, the bits of the untrimmed batch. Sk = S (or 0) is the plain index.
// Other ops ignore key_seq_length: their per-example offsets (position * width + feature) do not depend on S.
struct DropoutKey {
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t lane = 0;  // distinct per dropout site (network, layer, position in the layer)
  uint64_t first_example = 0;
  uint64_t elements_per_example = 1;
  int key_seq_length = 0;  // attention ops only: Sk >= S, see above
};

// Sk of an attention call over S keys (DropoutKey::key_seq_length, or S when 0).
constexpr int attention_key_seq(const DropoutKey& key, int S) {
  return key.key_seq_length > 0 ? key.key_seq_length : S;
}

// Whether a query whose mask value is query_mask attends a key whose mask value is key_mask (the rule
// of Backend::attention_forward's mask: block-diagonal over a row's packed examples).
constexpr bool attends_key(int32_t query_mask, int32_t key_mask) {
  return key_mask != 0 && (query_mask == 0 || query_mask == key_mask);
}

// Throws electra::Error: backend `name` has no fused attention for this shape.
[[noreturn]] void fail_fused_attention_unsupported(const std::string& name, int B, int S, int H, int D, float dropout);
// Throws electra::Error: backend `name` (narrow storage) does not override wide()/widen()/narrow().
[[noreturn]] void fail_no_wide_backend(const std::string& name);
// Throws electra::Error: backend `name` does not implement `op`.
[[noreturn]] void fail_op_unsupported(const std::string& name, const std::string& op);

template <typename T>
class Backend {
 public:
  using W = Wide<T>;
  virtual ~Backend() = default;
  virtual DeviceKind device() const = 0;
  virtual std::string name() const = 0;

  // ---- memory ----
  // Aligned, uninitialised storage for n elements; freed with deallocate.
  virtual T* allocate(size_t n) = 0;
  virtual void deallocate(T* p) = 0;
  virtual int32_t* allocate_ints(size_t n) = 0;
  virtual void deallocate_ints(int32_t* p) = 0;
  virtual uint8_t* allocate_bytes(size_t n) = 0;
  virtual void deallocate_bytes(uint8_t* p) = 0;
  virtual void copy_to_host(T* host, const T* src, size_t n) = 0;
  virtual void copy_from_host(T* dst, const T* host, size_t n) = 0;
  virtual void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) = 0;
  virtual void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) = 0;
  virtual void fill(T* x, size_t n, T value) = 0;
  virtual void copy(T* dst, const T* src, size_t n) = 0;
  virtual void synchronize() = 0;

  // ---- the wide type (bf16 mixed precision) ----
  // The backend of this device's Wide<T> buffers: the same memory and the same stream (work on the two
  // is ordered as enqueued), so buffers allocated by wide() may be passed to this backend's W* arguments.
  // *this when T is already wide.
  virtual Backend<W>& wide();
  // dst[i] = W(src[i]) (exact) and dst[i] = T(src[i]) rounded to nearest-even: the weight copies and the
  // outputs. Plain copies when T is wide.
  virtual void widen(W* dst, const T* src, size_t n);
  virtual void narrow(T* dst, const W* src, size_t n);

  // ---- matrix products ----
  // C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, row-major with leading dimensions.
  virtual void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a, int lda, const T* b,
                    int ldb, W beta, T* c, int ldc) = 0;
  // The same for `batch` independent products whose operands are stride_* elements apart.
  virtual void gemm_strided_batched(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a,
                                    int lda, long long stride_a, const T* b, int ldb, long long stride_b, W beta, T* c,
                                    int ldc, long long stride_c, int batch) = 0;

  // ---- linear layers (weights stored [out, in] as in PyTorch / Hugging Face) ----
  // y[rows,out] = x[rows,in] * W^T + bias (bias may be null).
  virtual void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in, int out) = 0;
  // dx = dy * W (skipped when dx is null); dW += dy^T * x; dbias += sum_rows(dy) (skipped when null).
  // The parameter gradients are wide: dW is accumulated in W (for bfloat16: the fp32 sum of bf16 products).
  virtual void linear_backward(T* dx, W* dweight, W* dbias, const T* dy, const T* x, const T* weight, int rows, int in,
                               int out) = 0;

  // ---- elementwise ----
  virtual void activation_forward(Activation act, T* y, const T* x, size_t n) = 0;
  // dx = dy * act'(x); x is the activation's input.
  virtual void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) = 0;
  // out = a + b (out may alias a or b).
  virtual void add(T* out, const T* a, const T* b, size_t n) = 0;
  // y += x
  virtual void accumulate(T* y, const T* x, size_t n) = 0;
  virtual void scale(T* x, size_t n, W alpha) = 0;
  // y = x * keep / (1 - p) with keep ~ Bernoulli(1 - p) from the key; keep mask saved (1 byte/element).
  // p == 0 copies and sets all keep bits.
  virtual void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) = 0;
  // dx = dy * keep / (1 - p)
  virtual void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) = 0;

  // ---- normalisation ----
  // y = (x - mean) * rstd * gamma + beta over the last dimension; mean and rstd [rows] saved for backward.
  virtual void layernorm_forward(T* y, W* mean, W* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                                 W eps) = 0;
  virtual void layernorm_backward(T* dx, W* dgamma, W* dbeta, const T* dy, const T* x, const W* mean, const W* rstd,
                                  const T* gamma, int rows, int cols) = 0;

  // ---- fused post-LN residual block (the end of each transformer sub-block) ----
  // The defaults ARE the op sequences below, so a backend without its own version gives bitwise the
  // unfused results; a GPU fuses them into one pass over [rows, cols] (and promises the same values).
  // res = residual + dropout(x) (dropout_forward's keep bits from `key`, element i = r * cols + c);
  // y = LayerNorm(res) with mean/rstd [rows] saved:
  //   dropout_forward(res, keep, x); add(res, res, residual); layernorm_forward(y, mean, rstd, res, ...)
  // res may alias x; no other output may alias an input or another output.
  virtual void dropout_add_layernorm_forward(T* y, T* res, uint8_t* keep, W* mean, W* rstd, const T* x,
                                             const T* residual, const T* gamma, const T* beta, int rows, int cols,
                                             float p, const DropoutKey& key, W eps);
  // Its backward: d_res = LayerNorm backward of dy (dgamma/dbeta accumulate), dx = dropout backward of
  // d_res (skipped when dx is null; keep may be null when p == 0):
  //   layernorm_backward(d_res, dgamma, dbeta, dy, res, ...); dropout_backward(dx, d_res, keep)
  // d_res is what flows down the residual path, dx what flows into the dropped branch. No output may
  // alias an input or another output.
  virtual void layernorm_dropout_backward(T* d_res, T* dx, W* dgamma, W* dbeta, const T* dy, const T* res,
                                          const W* mean, const W* rstd, const T* gamma, const uint8_t* keep, int rows,
                                          int cols, float p);

  // ---- embeddings ----
  // out[b,s,:] = word[ids[b,s]] + position[pos(b,s)] + type[type_ids[b,s]]; width E. pos(b,s) is
  // position_ids[b,s] when given (packed rows, where each example's positions restart at 0), else s.
  virtual void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                                 const T* word_table, const T* position_table, const T* type_table, int B, int S,
                                 int E) = 0;
  // Scatter-add of dout into the three tables (position_ids as in forward; nullptr: position s).
  virtual void embedding_backward(W* dword, W* dposition, W* dtype, const T* dout, const int32_t* ids,
                                  const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E) = 0;
  // out[b,p,:] = x[b, positions[b,p], :]   (x [B,S,C], out [B,P,C])
  virtual void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) = 0;
  // dx[b, positions[b,p], :] += dout[b,p,:]  (dx is accumulated; duplicates add up)
  virtual void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) = 0;

  // ---- attention ----
  // qkv [B,S,3,H,D] (query, key, value of each token side by side, as the fused projection writes them);
  // mask [B,S]: 0 = padding, k > 0 = the token belongs to the row's k-th example (1 everywhere real when
  // a row holds one example; 1, 2, ... when examples are packed into a row). Query i attends key j when
  // mask[j] != 0 and (mask[i] == mask[j] or mask[i] == 0): block-diagonal over a row's examples, and a
  // padding query (whose output nothing reads) attends every real key, as it did with 0/1 masks.
  // probs [B,H,S,S] = softmax(q k^T / sqrt(D) over the attended keys), saved for backward; dropout on
  // probs with keep mask [B,H,S,S]; context [B,S,H,D].
  virtual void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S,
                                 int H, int D, float dropout, const DropoutKey& key) = 0;
  // dqkv [B,S,3,H,D] overwritten. scratch: at least B*H*S*S elements.
  virtual void attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs,
                                  const uint8_t* keep, const int32_t* mask, int B, int S, int H, int D,
                                  float dropout) = 0;

  // ---- fused (memory-efficient) attention ----
  // The same function as attention_forward / attention_backward, but nothing of size [B,H,S,S] is kept
  // between forward and backward: forward saves stats [B,H,S] (per query row, the log-sum-exp of the
  // masked, scaled scores q.k/sqrt(D)), and backward recomputes the probabilities from qkv and stats. The
  // CPU backend and the CUDA backend's own kernels draw exactly attention_forward's dropout keep bits
  // from `key` (forward and backward regenerate them), so they agree with the materialised path to
  // rounding. A library implementation with its own random numbers (cuDNN SDPA in the CUDA backend's
  // bf16/fp16 modes) documents its dropout in its own header. Scratch is the backend's own.
  // fused_attention_supported says whether these ops serve this shape; when false they fail.
  virtual bool fused_attention_supported(int B, int S, int H, int D, float dropout) const {
    (void)B, (void)S, (void)H, (void)D, (void)dropout;
    return false;
  }
  virtual void fused_attention_forward(T* context, W* stats, const T* qkv, const int32_t* mask, int B, int S, int H,
                                       int D, float dropout, const DropoutKey& key);
  // dqkv [B,S,3,H,D] overwritten; context and stats are forward's outputs for the same qkv, mask and key.
  virtual void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const W* stats,
                                        const int32_t* mask, int B, int S, int H, int D, float dropout,
                                        const DropoutKey& key);

  // ---- losses and sampling ----
  // Per row r of logits [rows,V]: loss[r] = logsumexp(logits[r]) - logits[r, labels[r]];
  // dlogits[r] = (softmax(logits[r]) - onehot(labels[r])) * grad_scale[r]  (dlogits may be null, and
  // may alias logits). argmax[r] written when non-null.
  virtual void softmax_cross_entropy(W* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                                     const W* grad_scale, int rows, int V) = 0;
  // y[r] = log_softmax(x[r]) (y may alias x).
  virtual void log_softmax(T* y, const T* x, int rows, int V) = 0;
  // Per element: loss[i] = BCE-with-logits(logit[i], label[i]); dlogit[i] = (sigmoid(logit) - label) *
  // grad_scale[i]; dlogit may be null.
  virtual void sigmoid_cross_entropy(W* loss, T* dlogit, const T* logit, const int32_t* label, const W* grad_scale,
                                     size_t n) = 0;
  // Gumbel-max sampling of one token per row of logits [rows,V] at temperature t:
  // sample = argmax(logits / t + gumbel), gumbel from stream (seed, kSampling, step,
  // first_example + r / rows_per_example) at offset (r % rows_per_example) * V + v. With disallow (non-null),
  // logit[disallow[r]] is lowered by 1000 first, so that token is never drawn.
  // Precisely (the CPU reference, lib/backend/cpu/kernels.h): score = (double(logit) - 1000 * [v ==
  // disallow[r]]) / double(t) + gumbel, in double; the lowest v with the largest score wins; a disallow
  // entry outside [0, V) disallows nothing.
  virtual void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V,
                             float temperature, uint64_t seed, uint64_t step, uint64_t first_example,
                             int rows_per_example) = 0;
  // ELECTRA's replaced-token input and labels. original_ids, input_mask, corrupted, disc_label [B,S];
  // positions, weights, samples [B,P]. original_ids are the real tokens (the generator's input with the
  // masked positions restored). Per row b:
  //   corrupted[b,:] = original_ids[b,:]; then for p = 0..P-1 in order, where weights[b,p] > 0:
  //     corrupted[b, positions[b,p]] = samples[b,p]   (so a later duplicate position wins)
  //   disc_label[b,s] = input_mask[b,s] != 0 && corrupted[b,s] != original_ids[b,s]   (1 or 0)
  // Positions of predictions with weight <= 0 are ignored; weighted ones must be in [0, S). Both outputs
  // overwritten; no input may alias an output.
  virtual void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                                     const int32_t* input_mask, const int32_t* positions, const W* weights,
                                     const int32_t* samples, int B, int S, int P) = 0;

  // ---- reductions and optimizer ----
  // (Gradients, master weights and moments are wide, so the trainer runs these on wide(); a backend with
  // a narrow T may fail them.)
  // Sum of squares in double, summed in a fixed order (deterministic).
  virtual double sum_squares(const T* x, size_t n) = 0;
  // Decoupled AdamW (Loshchilov & Hutter) at step t (1-based), g = grads * grad_scale (clipping factor):
  // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), where
  // m_hat, v_hat are bias-corrected when bias_correction is set (PyTorch AdamW) and m, v otherwise
  // (google-research/electra's AdamWeightDecayOptimizer).
  virtual void adamw_step(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2,
                          float eps, float weight_decay, long long t, float grad_scale, bool bias_correction) = 0;
  // adamw_step over several runs of the same buffers in one call: run r updates elements
  // [runs[r].offset, runs[r].offset + runs[r].size) with weight decay runs[r].weight_decay; the result is
  // exactly that of one adamw_step per run. (The CPU backend does it in one parallel region instead of one
  // per run: a parameter layout has hundreds of runs, as weights and biases alternate.) `runs` is host
  // memory.
  struct AdamWRun {
    size_t offset = 0;
    size_t size = 0;
    float weight_decay = 0.0f;
  };
  virtual void adamw_step_runs(T* params, const T* grads, T* m, T* v, const AdamWRun* runs, size_t num_runs, float lr,
                               float beta1, float beta2, float eps, long long t, float grad_scale,
                               bool bias_correction) {
    for (size_t r = 0; r < num_runs; ++r) {
      const size_t o = runs[r].offset;
      adamw_step(params + o, grads + o, m + o, v + o, runs[r].size, lr, beta1, beta2, eps, runs[r].weight_decay, t,
                 grad_scale, bias_correction);
    }
  }
  // LAMB (You et al., "Large Batch Optimization for Deep Learning") as tfa.optimizers.LAMB, the optimizer of
  // NVIDIA DeepLearningExamples' ELECTRA, at step t (1-based), over runs of the same buffers: one run per
  // parameter tensor, as the trust ratio is per tensor. Per element, with g = grads * grad_scale:
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  u = m_hat / (sqrt(v_hat) + eps) + wd * p,
  // m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t) (always bias-corrected, as tfa's LAMB); then per run
  //   r = ||p|| / ||u|| over the run's elements (1 when either norm is 0, or when the run's adapt is false),
  //   p -= lr * r * u,
  // with ||p|| taken before the update. The norms are sums of squares in double in a fixed order, so the
  // result does not depend on the thread count. `runs` is host memory; runs must not overlap; elements
  // outside every run are untouched; num_runs = 0 does nothing. The default fails naming the backend: a
  // backend without LAMB refuses optim.name = lamb (Lamb makes an empty call at construction to say so
  // before training).
  struct LambRun {
    size_t offset = 0;
    size_t size = 0;
    float weight_decay = 0.0f;
    bool adapt = true;  // false: trust ratio 1 (LayerNorm parameters and biases in NVIDIA's recipe)
  };
  virtual void lamb_step_runs(T* params, const T* grads, T* m, T* v, const LambRun* runs, size_t num_runs, float lr,
                              float beta1, float beta2, float eps, long long t, float grad_scale);
};

template <typename T>
Backend<Wide<T>>& Backend<T>::wide() {
  if constexpr (std::is_same_v<T, Wide<T>>) {
    return *this;
  } else {
    fail_no_wide_backend(name());
  }
}
template <typename T>
void Backend<T>::widen(W* dst, const T* src, size_t n) {
  if constexpr (std::is_same_v<T, Wide<T>>) {
    copy(dst, src, n);
  } else {
    (void)dst, (void)src, (void)n;
    fail_no_wide_backend(name());
  }
}
template <typename T>
void Backend<T>::narrow(T* dst, const W* src, size_t n) {
  if constexpr (std::is_same_v<T, Wide<T>>) {
    copy(dst, src, n);
  } else {
    (void)dst, (void)src, (void)n;
    fail_no_wide_backend(name());
  }
}

template <typename T>
void Backend<T>::dropout_add_layernorm_forward(T* y, T* res, uint8_t* keep, W* mean, W* rstd, const T* x,
                                               const T* residual, const T* gamma, const T* beta, int rows, int cols,
                                               float p, const DropoutKey& key, W eps) {
  // A bad shape does nothing here and is reported by layernorm_forward.
  const size_t n = rows > 0 && cols > 0 ? static_cast<size_t>(rows) * static_cast<size_t>(cols) : 0;
  dropout_forward(res, keep, x, n, p, key);
  add(res, res, residual, n);
  layernorm_forward(y, mean, rstd, res, gamma, beta, rows, cols, eps);
}
template <typename T>
void Backend<T>::layernorm_dropout_backward(T* d_res, T* dx, W* dgamma, W* dbeta, const T* dy, const T* res,
                                            const W* mean, const W* rstd, const T* gamma, const uint8_t* keep, int rows,
                                            int cols, float p) {
  layernorm_backward(d_res, dgamma, dbeta, dy, res, mean, rstd, gamma, rows, cols);
  const size_t n = rows > 0 && cols > 0 ? static_cast<size_t>(rows) * static_cast<size_t>(cols) : 0;
  if (dx != nullptr) dropout_backward(dx, d_res, keep, n, p);
}

template <typename T>
void Backend<T>::lamb_step_runs(T*, const T*, T*, T*, const LambRun*, size_t, float, float, float, float, long long,
                                float) {
  fail_op_unsupported(name(), "lamb_step_runs (optim.name = lamb)");
}

template <typename T>
void Backend<T>::fused_attention_forward(T*, W*, const T*, const int32_t*, int B, int S, int H, int D, float dropout,
                                         const DropoutKey&) {
  fail_fused_attention_unsupported(name(), B, S, H, D, dropout);
}
template <typename T>
void Backend<T>::fused_attention_backward(T*, const T*, const T*, const T*, const W*, const int32_t*, int B, int S,
                                          int H, int D, float dropout, const DropoutKey&) {
  fail_fused_attention_unsupported(name(), B, S, H, D, dropout);
}

// The CPU backend for float and double (double is used by the finite-difference gradient checks).
// Threads with OpenMP only (OMP_NUM_THREADS; it switches OpenBLAS to one thread); bitwise deterministic
// for any thread count. It keeps no state between calls, so several host threads may call it at once on
// disjoint buffers (the model's parallel chunks do). Details: lib/backend/cpu/kernels.h.
template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend();

// The CPU reference of bf16 storage (name "cpu-bf16"): every op widens its bfloat16 inputs to float, runs
// the float CPU kernel (W arguments passed as they are, so gradients accumulate in float) and rounds its
// bfloat16 outputs to nearest-even; so its results are bitwise the float backend's on the widened inputs.
// `wide` must be a CPU backend (fails otherwise) and outlive the result; wide() returns it. adamw_step
// fails (the optimizer runs on wide()). Its float scratch is per host thread, so several threads may call it
// at once as they call the float backend (the model's parallel chunks).
std::unique_ptr<Backend<bfloat16>> make_cpu_bf16_backend(Backend<float>& wide);

// The fast CPU bf16 backend (name "cpu-bf16-onednn", lib/backend/cpu/onednn_bf16_backend.cpp): matrix
// products in oneDNN on the CPU's bf16 instructions (AMX, AVX512_BF16) with float accumulation, the other
// ops on bfloat16 directly; results agree with make_cpu_bf16_backend to bf16 rounding. On a CPU without
// bf16 instructions its products are the reference's. Fails when this build has no oneDNN;
// cpu::cpu_bf16_support() (lib/backend/cpu/onednn_matmul.h) says what the machine offers. `wide` as above.
std::unique_ptr<Backend<bfloat16>> make_onednn_bf16_backend(Backend<float>& wide);

}  // namespace electra
