// The fast CPU Backend<bfloat16> (name "cpu-bf16-onednn"): bf16 storage computed on the CPU's bf16 matrix
// instructions. Matrix products (GEMMs, linear layers, attention's per-head products) run in oneDNN's
// matmul (onednn_matmul.h: bf16 operands, float accumulation); every other op reads and writes bfloat16
// directly (bf16_kernels.h). Master weights, gradients, statistics and losses stay float, as in the
// reference (make_cpu_bf16_backend), which is the oracle this backend is tested against
// (tests/backend/onednn_bf16_backend_test.cpp).
//
// On a CPU without bf16 dot-product instructions (neither AVX512_BF16 nor AMX in oneDNN's effective ISA)
// oneDNN would emulate bf16 far below float OpenBLAS, or have no kernel at all: the products then go
// through the reference (float OpenBLAS on widened operands), and make_bf16_backend says so at start.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/bf16_kernels.h"
#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cpu/onednn_matmul.h"
#include "lib/core/error.h"

namespace electra {
namespace {

using cpu::MatmulOutput;
using cpu::MatmulProblem;

// Per-thread scratch of attention (slots of detail::thread_scratch not used by the float kernels): float
// scores, dropped probabilities, and the dense per-head copies of q, k, v and of a context-shaped operand.
enum AttentionScratch : int {
  kScores = 40,
  kAttend = 41,
  kHeadsQ = 42,
  kHeadsK = 43,
  kHeadsV = 44,
  kHeadsOther = 45,
  kHeadsGrad = 46
};
// Attention works on groups of batch rows whose float scores [g, H, S, S] fit this many elements (16 MB):
// the whole chunk for ELECTRA-small at S = 128, one row at a time for base at S = 512.
constexpr size_t kScoreBudget = size_t{4} << 20;

// The per-head products of attention over batch rows [b0, b0 + g) of qkv [B,S,3,H,D]: each is one oneDNN
// call over g x H products. The operands are dense per-head copies [g, H, S, D] of q, k, v, context and
// their gradients: oneDNN 2.6 serves products read in place from qkv through strides (leading dimension
// 3HD) with gemm:jit, which does not use AMX tiles (61 against ~500 GFLOP/s for brgemm on ELECTRA-small's
// heads on a Xeon with AMX; on Zen 4 about even). A copy costs one memory pass.
struct HeadProducts {
  int S, H, D;
  long long row_stride() const { return 3LL * H * D; }  // between tokens in qkv
  long long qkv_batch() const { return static_cast<long long>(S) * row_stride(); }
  long long ctx_batch() const { return static_cast<long long>(S) * H * D; }
  long long pair() const { return static_cast<long long>(S) * S; }
  long long head_block() const { return static_cast<long long>(S) * D; }

  // Dense [S, D] blocks of [g, H, S, D] and dense [S, S] blocks of [g, H, S, S].
  void set_a_heads(MatmulProblem& p) const {
    p.lda = D;
    p.stride_a_outer = H * head_block(), p.stride_a_inner = head_block();
  }
  void set_b_heads(MatmulProblem& p) const {
    p.ldb = D;
    p.stride_b_outer = H * head_block(), p.stride_b_inner = head_block();
  }
  void set_c_heads(MatmulProblem& p) const {
    p.ldc = D;
    p.stride_c_outer = H * head_block(), p.stride_c_inner = head_block();
  }
  void set_a_dense(MatmulProblem& p) const {
    p.lda = S;
    p.stride_a_outer = H * pair(), p.stride_a_inner = pair();
  }
  void set_c_dense(MatmulProblem& p) const {
    p.ldc = S;
    p.stride_c_outer = H * pair(), p.stride_c_inner = pair();
  }
  MatmulProblem base(int g, int m, int n, int k) const {
    MatmulProblem p;
    p.m = m, p.n = n, p.k = k;
    p.batch_outer = g, p.batch_inner = H;
    return p;
  }

  // Copies the heads of g rows of tokens [g, S, ld] (columns [0, H D) of each token's row) into dense
  // [g, H, S, D], or back (to_rows). The tokens of qkv hold q, k and v at columns 0, HD and 2HD (ld 3HD);
  // context and its gradient are [g, S, HD].
  template <bool kToRows, typename Heads, typename Rows>
  void copy_heads(Heads* heads, Rows* rows, long long ld, int g) const {
    const size_t bytes = static_cast<size_t>(D) * sizeof(bfloat16);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < g * H; ++bh) {
      const int b = bh / H, h = bh % H;
      Heads* dense = heads + bh * head_block();
      Rows* row = rows + b * S * ld + static_cast<long long>(h) * D;
      for (int s = 0; s < S; ++s, dense += D, row += ld) {
        if constexpr (kToRows) {
          std::memcpy(row, dense, bytes);
        } else {
          std::memcpy(dense, row, bytes);
        }
      }
    }
  }
  void gather(bfloat16* heads, const bfloat16* rows, long long ld, int g) const {
    copy_heads<false>(heads, rows, ld, g);
  }
  void scatter(bfloat16* rows, const bfloat16* heads, long long ld, int g) const {
    copy_heads<true>(heads, rows, ld, g);
  }
};

class OnednnBf16Backend final : public Backend<bfloat16> {
 public:
  using T = bfloat16;

  OnednnBf16Backend(Backend<float>& wide, bool native)
      : wide_(wide), reference_(make_cpu_bf16_backend(wide)), native_(native) {
    cpu::bf16::prepare_tables();  // not inside the first step
  }

  DeviceKind device() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu-bf16-onednn"; }

  // ---- memory: the reference's (host memory, 64-byte aligned) ----
  T* allocate(size_t n) override { return reference_->allocate(n); }
  void deallocate(T* p) override { reference_->deallocate(p); }
  int32_t* allocate_ints(size_t n) override { return reference_->allocate_ints(n); }
  void deallocate_ints(int32_t* p) override { reference_->deallocate_ints(p); }
  uint8_t* allocate_bytes(size_t n) override { return reference_->allocate_bytes(n); }
  void deallocate_bytes(uint8_t* p) override { reference_->deallocate_bytes(p); }
  void copy_to_host(T* host, const T* src, size_t n) override { reference_->copy_to_host(host, src, n); }
  void copy_from_host(T* dst, const T* host, size_t n) override { reference_->copy_from_host(dst, host, n); }
  void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) override {
    reference_->copy_ints_from_host(dst, host, n);
  }
  void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) override {
    reference_->copy_ints_to_host(host, src, n);
  }
  void fill(T* x, size_t n, T value) override { cpu::bf16::fill(x, n, value); }
  void copy(T* dst, const T* src, size_t n) override { reference_->copy(dst, src, n); }
  void synchronize() override {}

  Backend<W>& wide() override { return wide_; }
  void widen(W* dst, const T* src, size_t n) override { reference_->widen(dst, src, n); }
  void narrow(T* dst, const W* src, size_t n) override { reference_->narrow(dst, src, n); }

  // ---- matrix products ----
  void gemm(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a, int lda, const T* b,
            int ldb, W beta, T* c, int ldc) override {
    if (!native_) return reference_->gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
  }
  void gemm_strided_batched(Transpose trans_a, Transpose trans_b, int m, int n, int k, W alpha, const T* a, int lda,
                            long long stride_a, const T* b, int ldb, long long stride_b, W beta, T* c, int ldc,
                            long long stride_c, int batch) override {
    if (!native_) {
      return reference_->gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                                              beta, c, ldc, stride_c, batch);
    }
    ELECTRA_CHECK(batch >= 0, name(), " gemm_strided_batched: negative batch ", batch);
    if (batch == 0) return;
    MatmulProblem p;
    p.trans_a = trans_a, p.trans_b = trans_b;
    p.m = m, p.n = n, p.k = k;
    p.lda = lda, p.ldb = ldb, p.ldc = ldc;
    p.batch_outer = batch;
    p.stride_a_outer = stride_a, p.stride_b_outer = stride_b, p.stride_c_outer = stride_c;
    p.alpha = alpha, p.beta = beta;
    cpu::onednn_matmul(p, a, b, nullptr, c);
  }

  // ---- linear layers ----
  void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in_features,
                      int out_features) override {
    if (!native_) return reference_->linear_forward(y, x, weight, bias, rows, in_features, out_features);
    check_linear("linear_forward", rows, in_features, out_features);
    if (rows == 0) return;
    // y[rows, out] = x[rows, in] W^T + bias, W stored [out, in].
    MatmulProblem p;
    p.trans_b = Transpose::kYes;
    p.m = rows, p.n = out_features, p.k = in_features;
    p.lda = in_features, p.ldb = in_features, p.ldc = out_features;
    p.has_bias = bias != nullptr;
    cpu::onednn_matmul(p, x, weight, bias, y);
  }
  void linear_backward(T* dx, W* dweight, W* dbias, const T* dy, const T* x, const T* weight, int rows, int in_features,
                       int out_features) override {
    if (!native_) {
      return reference_->linear_backward(dx, dweight, dbias, dy, x, weight, rows, in_features, out_features);
    }
    check_linear("linear_backward", rows, in_features, out_features);
    if (rows == 0) return;
    if (dx != nullptr) {  // dx[rows, in] = dy[rows, out] W[out, in]
      MatmulProblem p;
      p.m = rows, p.n = in_features, p.k = out_features;
      p.lda = out_features, p.ldb = in_features, p.ldc = in_features;
      cpu::onednn_matmul(p, dy, weight, nullptr, dx);
    }
    if (dweight != nullptr) {  // dW[out, in] += dy^T x, accumulated in float
      MatmulProblem p;
      p.trans_a = Transpose::kYes;
      p.m = out_features, p.n = in_features, p.k = rows;
      p.lda = out_features, p.ldb = in_features, p.ldc = in_features;
      p.output = MatmulOutput::kF32;
      p.beta = 1.0f;
      cpu::onednn_matmul(p, dy, x, nullptr, dweight);
    }
    if (dbias != nullptr) cpu::bf16::column_sums_accumulate(dbias, dy, rows, out_features);
  }

  // ---- elementwise ----
  void activation_forward(Activation act, T* y, const T* x, size_t n) override {
    cpu::bf16::activation_forward(act, y, x, n);
  }
  void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) override {
    cpu::bf16::activation_backward(act, dx, dy, x, n);
  }
  void add(T* out, const T* a, const T* b, size_t n) override { cpu::bf16::add(out, a, b, n); }
  void accumulate(T* y, const T* x, size_t n) override { cpu::bf16::accumulate(y, x, n); }
  void scale(T* x, size_t n, W alpha) override { cpu::bf16::scale(x, n, alpha); }
  void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) override {
    cpu::bf16::dropout_forward(y, keep, x, n, p, key);
  }
  void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) override {
    cpu::bf16::dropout_backward(dx, dy, keep, n, p);
  }

  // ---- normalisation ----
  void layernorm_forward(T* y, W* mean, W* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols,
                         W eps) override {
    cpu::bf16::layernorm_forward(y, mean, rstd, x, gamma, beta, rows, cols, eps);
  }
  void layernorm_backward(T* dx, W* dgamma, W* dbeta, const T* dy, const T* x, const W* mean, const W* rstd,
                          const T* gamma, int rows, int cols) override {
    cpu::bf16::layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols);
  }
  void dropout_add_layernorm_forward(T* y, T* res, uint8_t* keep, W* mean, W* rstd, const T* x, const T* residual,
                                     const T* gamma, const T* beta, int rows, int cols, float p, const DropoutKey& key,
                                     W eps) override {
    cpu::bf16::dropout_add_layernorm_forward(y, res, keep, mean, rstd, x, residual, gamma, beta, rows, cols, p, key,
                                             eps);
  }
  void layernorm_dropout_backward(T* d_res, T* dx, W* dgamma, W* dbeta, const T* dy, const T* res, const W* mean,
                                  const W* rstd, const T* gamma, const uint8_t* keep, int rows, int cols,
                                  float p) override {
    cpu::bf16::layernorm_dropout_backward(d_res, dx, dgamma, dbeta, dy, res, mean, rstd, gamma, keep, rows, cols, p);
  }

  // ---- embeddings ----
  void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                         const T* word_table, const T* position_table, const T* type_table, int B, int S,
                         int E) override {
    cpu::bf16::embedding_forward(out, ids, type_ids, position_ids, word_table, position_table, type_table, B, S, E);
  }
  void embedding_backward(W* dword, W* dposition, W* dtype, const T* dout, const int32_t* ids, const int32_t* type_ids,
                          const int32_t* position_ids, int B, int S, int E) override {
    cpu::bf16::embedding_backward(dword, dposition, dtype, dout, ids, type_ids, position_ids, B, S, E);
  }
  void gather_rows(T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) override {
    cpu::bf16::gather_rows(out, x, positions, B, S, P, C);
  }
  void scatter_add_rows(T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) override {
    cpu::bf16::scatter_add_rows(dx, dout, positions, B, S, P, C);
  }

  // ---- attention ----
  void attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B, int S, int H,
                         int D, float dropout, const DropoutKey& key) override;
  void attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs, const uint8_t* keep,
                          const int32_t* mask, int B, int S, int H, int D, float dropout) override;
  // The memory-efficient path is the reference's (the CPU default is the materialised one).
  bool fused_attention_supported(int B, int S, int H, int D, float dropout) const override {
    return reference_->fused_attention_supported(B, S, H, D, dropout);
  }
  void fused_attention_forward(T* context, W* stats, const T* qkv, const int32_t* mask, int B, int S, int H, int D,
                               float dropout, const DropoutKey& key) override {
    reference_->fused_attention_forward(context, stats, qkv, mask, B, S, H, D, dropout, key);
  }
  void fused_attention_backward(T* dqkv, const T* dcontext, const T* qkv, const T* context, const W* stats,
                                const int32_t* mask, int B, int S, int H, int D, float dropout,
                                const DropoutKey& key) override {
    reference_->fused_attention_backward(dqkv, dcontext, qkv, context, stats, mask, B, S, H, D, dropout, key);
  }

  // ---- losses and sampling ----
  void softmax_cross_entropy(W* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                             const W* grad_scale, int rows, int V) override {
    cpu::bf16::softmax_cross_entropy(loss, dlogits, argmax, logits, labels, grad_scale, rows, V);
  }
  void log_softmax(T* y, const T* x, int rows, int V) override { cpu::bf16::log_softmax(y, x, rows, V); }
  void sigmoid_cross_entropy(W* loss, T* dlogit, const T* logit, const int32_t* label, const W* grad_scale,
                             size_t n) override {
    cpu::bf16::sigmoid_cross_entropy(loss, dlogit, logit, label, grad_scale, n);
  }
  void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                     uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) override {
    cpu::bf16::gumbel_sample(samples, logits, disallow, rows, V, temperature, seed, step, first_example,
                             rows_per_example);
  }
  void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                             const int32_t* input_mask, const int32_t* positions, const W* weights,
                             const int32_t* samples, int B, int S, int P) override {
    reference_->replace_masked_tokens(corrupted, disc_label, original_ids, input_mask, positions, weights, samples, B,
                                      S, P);
  }

  // ---- reductions and optimizer ----
  double sum_squares(const T* x, size_t n) override { return cpu::bf16::sum_squares(x, n); }
  void adamw_step(T*, const T*, T*, T*, size_t, float, float, float, float, float, long long, float, bool) override {
    fail_optimizer("adamw_step");
  }
  void adamw_step_runs(T*, const T*, T*, T*, const AdamWRun*, size_t, float, float, float, float, long long, float,
                       bool) override {
    fail_optimizer("adamw_step_runs");
  }

 private:
  void check_linear(const char* op, int rows, int in_features, int out_features) const {
    ELECTRA_CHECK(rows >= 0 && in_features > 0 && out_features > 0, name(), " ", op, ": bad shape rows=", rows,
                  " in=", in_features, " out=", out_features);
  }
  static void check_attention(const char* op, int B, int S, int H, int D, float dropout) {
    ELECTRA_CHECK(B >= 0 && S > 0 && H > 0 && D > 0, op, ": bad shape B=", B, " S=", S, " H=", H, " D=", D);
    ELECTRA_CHECK(dropout >= 0.0f && dropout < 1.0f, op, ": dropout ", dropout, " outside [0, 1)");
  }
  [[noreturn]] void fail_optimizer(const char* op) const {
    fail("backend ", name(), ": ", op,
         " is not available on bfloat16 storage; the optimizer runs on wide() (fp32 master weights, gradients and "
         "moments)");
  }
  // Batch rows per attention group: float scores [g, H, S, S] within kScoreBudget, at least one row.
  static int group_rows(int B, int S, int H) {
    const size_t per_row = static_cast<size_t>(H) * S * S;
    return static_cast<int>(std::clamp<size_t>(kScoreBudget / per_row, 1, static_cast<size_t>(std::max(B, 1))));
  }

  Backend<float>& wide_;
  std::unique_ptr<Backend<bfloat16>> reference_;
  bool native_;
};

void OnednnBf16Backend::attention_forward(T* context, T* probs, uint8_t* keep, const T* qkv, const int32_t* mask, int B,
                                          int S, int H, int D, float dropout, const DropoutKey& key) {
  if (!native_) return reference_->attention_forward(context, probs, keep, qkv, mask, B, S, H, D, dropout, key);
  check_attention("attention_forward", B, S, H, D, dropout);
  ELECTRA_CHECK(dropout == 0.0f || keep != nullptr, "attention_forward: keep mask is null with dropout ", dropout);
  ELECTRA_CHECK(dropout == 0.0f || key.elements_per_example > 0, "attention_forward: elements_per_example is 0");
  const HeadProducts hp{S, H, D};
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  const int g_max = group_rows(B, S, H);
  float* scores = cpu::detail::thread_scratch<float, kScores>(static_cast<size_t>(g_max) * H * hp.pair());
  T* attend =
      dropout > 0.0f ? cpu::detail::thread_scratch<T, kAttend>(static_cast<size_t>(g_max) * H * hp.pair()) : nullptr;
  const size_t heads = static_cast<size_t>(g_max) * H * hp.head_block();
  T* q_heads = cpu::detail::thread_scratch<T, kHeadsQ>(heads);
  T* k_heads = cpu::detail::thread_scratch<T, kHeadsK>(heads);
  T* v_heads = cpu::detail::thread_scratch<T, kHeadsV>(heads);
  T* context_heads = cpu::detail::thread_scratch<T, kHeadsOther>(heads);
  // The mask when none is given: this (calling) thread's, grown once, read by the region's threads.
  thread_local std::vector<int32_t> all_valid;
  if (mask == nullptr && all_valid.size() < static_cast<size_t>(S)) all_valid.assign(static_cast<size_t>(S), 1);
  const int32_t* all_keys = all_valid.data();

  for (int b0 = 0; b0 < B; b0 += g_max) {
    const int g = std::min(g_max, B - b0);
    const T* q = qkv + b0 * hp.qkv_batch();
    hp.gather(q_heads, q, hp.row_stride(), g);
    hp.gather(k_heads, q + H * D, hp.row_stride(), g);
    hp.gather(v_heads, q + 2 * H * D, hp.row_stride(), g);
    // scores = q k^T / sqrt(D), float
    MatmulProblem qk = hp.base(g, S, S, D);
    qk.trans_b = Transpose::kYes;
    hp.set_a_heads(qk), hp.set_b_heads(qk), hp.set_c_dense(qk);
    qk.output = MatmulOutput::kF32;
    qk.alpha = 1.0f / std::sqrt(static_cast<float>(D));
    cpu::onednn_matmul(qk, q_heads, k_heads, nullptr, scores);

    const int pairs = g * H;
    T* group_probs = probs + static_cast<size_t>(b0) * H * hp.pair();
#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; ++pair) {
      const int b = b0 + pair / H;
      const int32_t* mask_b = mask != nullptr ? mask + static_cast<size_t>(b) * S : all_keys;
      const size_t offset = static_cast<size_t>(pair) * hp.pair();
      const size_t global = static_cast<size_t>(b0) * H * hp.pair() + offset;
      if (dropout > 0.0f) cpu::attention_keep_mask(keep + global, b, pair % H, H, S, dropout, key);
      cpu::bf16::attention_softmax_rows(group_probs + offset, dropout > 0.0f ? attend + offset : nullptr,
                                        scores + offset, mask_b, dropout > 0.0f ? keep + global : nullptr, keep_scale,
                                        S, S);
    }
    if (dropout == 0.0f && keep != nullptr) {
      std::memset(keep + static_cast<size_t>(b0) * H * hp.pair(), 1, static_cast<size_t>(pairs) * hp.pair());
    }
    // context = attend v
    MatmulProblem pv = hp.base(g, S, D, S);
    hp.set_a_dense(pv), hp.set_b_heads(pv), hp.set_c_heads(pv);
    cpu::onednn_matmul(pv, dropout > 0.0f ? attend : group_probs, v_heads, nullptr, context_heads);
    hp.scatter(context + b0 * hp.ctx_batch(), context_heads, static_cast<long long>(H) * D, g);
  }
}

void OnednnBf16Backend::attention_backward(T* dqkv, T* scratch, const T* dcontext, const T* qkv, const T* probs,
                                           const uint8_t* keep, const int32_t* mask, int B, int S, int H, int D,
                                           float dropout) {
  if (!native_) {
    return reference_->attention_backward(dqkv, scratch, dcontext, qkv, probs, keep, mask, B, S, H, D, dropout);
  }
  check_attention("attention_backward", B, S, H, D, dropout);
  ELECTRA_CHECK(dropout == 0.0f || keep != nullptr, "attention_backward: keep mask is null with dropout ", dropout);
  (void)mask;  // keys a query does not attend have probability 0, so their score gradients are 0 without it
  const HeadProducts hp{S, H, D};
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  const float score_scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int g_max = group_rows(B, S, H);
  float* d_attend = cpu::detail::thread_scratch<float, kScores>(static_cast<size_t>(g_max) * H * hp.pair());
  const size_t heads = static_cast<size_t>(g_max) * H * hp.head_block();
  T* q_heads = cpu::detail::thread_scratch<T, kHeadsQ>(heads);
  T* k_heads = cpu::detail::thread_scratch<T, kHeadsK>(heads);
  T* v_heads = cpu::detail::thread_scratch<T, kHeadsV>(heads);
  T* dcontext_heads = cpu::detail::thread_scratch<T, kHeadsOther>(heads);
  T* grad_heads = cpu::detail::thread_scratch<T, kHeadsGrad>(heads);  // dv, dq, dk in turn

  for (int b0 = 0; b0 < B; b0 += g_max) {
    const int g = std::min(g_max, B - b0);
    const int pairs = g * H;
    const size_t first = static_cast<size_t>(b0) * H * hp.pair();
    const T* q = qkv + b0 * hp.qkv_batch();
    const T* dctx = dcontext + b0 * hp.ctx_batch();
    T* dq = dqkv + b0 * hp.qkv_batch();
    // The caller's scratch [B,H,S,S] holds this group's attend (forward's dropped probabilities), then ds.
    T* attend_ds = scratch + first;

    hp.gather(q_heads, q, hp.row_stride(), g);
    hp.gather(k_heads, q + H * D, hp.row_stride(), g);
    hp.gather(v_heads, q + 2 * H * D, hp.row_stride(), g);
    hp.gather(dcontext_heads, dctx, static_cast<long long>(H) * D, g);

    // d(attend) = dcontext v^T, float
    MatmulProblem dpv = hp.base(g, S, S, D);
    dpv.trans_b = Transpose::kYes;
    hp.set_a_heads(dpv), hp.set_b_heads(dpv), hp.set_c_dense(dpv);
    dpv.output = MatmulOutput::kF32;
    cpu::onednn_matmul(dpv, dcontext_heads, v_heads, nullptr, d_attend);

    // dv = attend^T dcontext
    const T* attend = probs + first;
    if (dropout > 0.0f) {
      cpu::bf16::attention_dropped_probs(attend_ds, probs + first, keep + first, keep_scale,
                                         static_cast<size_t>(pairs) * hp.pair());
      attend = attend_ds;
    }
    MatmulProblem dv = hp.base(g, S, D, S);
    dv.trans_a = Transpose::kYes;
    hp.set_a_dense(dv), hp.set_b_heads(dv), hp.set_c_heads(dv);
    cpu::onednn_matmul(dv, attend, dcontext_heads, nullptr, grad_heads);
    hp.scatter(dq + 2 * H * D, grad_heads, hp.row_stride(), g);

    // ds = softmax backward (bf16), then dq = ds k / sqrt(D) and dk = ds^T q / sqrt(D)
#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; ++pair) {
      const size_t offset = static_cast<size_t>(pair) * hp.pair();
      cpu::bf16::attention_softmax_backward_rows(attend_ds + offset, d_attend + offset, probs + first + offset,
                                                 dropout > 0.0f ? keep + first + offset : nullptr, keep_scale, S, S);
    }
    MatmulProblem dqp = hp.base(g, S, D, S);
    hp.set_a_dense(dqp), hp.set_b_heads(dqp), hp.set_c_heads(dqp);
    dqp.alpha = score_scale;
    cpu::onednn_matmul(dqp, attend_ds, k_heads, nullptr, grad_heads);
    hp.scatter(dq, grad_heads, hp.row_stride(), g);
    MatmulProblem dkp = dqp;
    dkp.trans_a = Transpose::kYes;
    cpu::onednn_matmul(dkp, attend_ds, q_heads, nullptr, grad_heads);
    hp.scatter(dq + H * D, grad_heads, hp.row_stride(), g);
  }
}

}  // namespace

std::unique_ptr<Backend<bfloat16>> make_onednn_bf16_backend(Backend<float>& wide) {
  if (wide.device() != DeviceKind::kCpu) {
    fail("make_onednn_bf16_backend: the wide backend ", wide.name(), " is not a CPU backend");
  }
  const cpu::CpuBf16Support support = cpu::cpu_bf16_support();
  if (!support.onednn_built) {
    fail("make_onednn_bf16_backend: this build has no oneDNN (install libdnnl-dev and configure again)");
  }
  cpu::detail::set_blas_single_threaded();
  return std::make_unique<OnednnBf16Backend>(wide, support.native);
}

}  // namespace electra
