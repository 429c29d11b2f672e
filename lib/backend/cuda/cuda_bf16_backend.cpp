// Backend<bfloat16> on a CUDA device (make_cuda_bf16_backend, cuda_backend.h): bf16 storage, fp32
// arithmetic, fp32 ("wide") gradients, statistics, losses and scalars. It owns no device resources of its
// own: memory, stream, error word, cuBLAS/cuBLASLt handles, workspace and cuDNN SDPA are the float CUDA
// backend's (cuda_backend_impl.h), so the ops of both are ordered on one stream and wide() is that
// backend. The reference is the CPU adaptor (make_cpu_bf16_backend): widen the bf16 inputs, run the float
// op, round the bf16 outputs to nearest-even; the kernels do the same per element (kernels.h), and the
// GEMMs read bf16 on tensor cores with fp32 accumulation.
//
// Attention is native bf16 (nothing of [B,H,S,S] or [B,S,3,H,D] is widened into fp32): cuDNN SDPA reads
// and writes the bf16 tensors in place for the fused calls it serves (dropout 0), and our kernels take
// the rest one head at a time with fp32 scores in a [B,S,S] workspace slice. Where the reference keeps
// the probabilities (dropped or not) and the score gradients in fp32 between its GEMMs, these kernels
// round them to bf16 as the operands of the P.V, P^T.dO and dS GEMMs (as cuDNN does inside): one
// rounding of each product's operand more than the reference, within the bf16 tolerance the tests use
// (norm-wise 1e-2; tests/cuda/bf16_backend_test.cpp, emulated on the CPU by
// tests/cuda/attention_bf16_emulation_test.cpp). Scores, softmax, stats and keep bits are the float
// path's.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "lib/backend/cuda/cuda_backend.h"
#include "lib/backend/cuda/cuda_backend_impl.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/lt_matmul.h"
#include "lib/core/error.h"

namespace electra::cuda {

class CudaBf16Backend final : public Backend<bfloat16> {
 public:
  explicit CudaBf16Backend(CudaBackend& wide) : f_(wide) {}
  CudaBf16Backend(const CudaBf16Backend&) = delete;
  CudaBf16Backend& operator=(const CudaBf16Backend&) = delete;

  DeviceKind device() const override { return DeviceKind::kCuda; }
  std::string name() const override { return "cuda-bf16"; }

  // ---- memory (the float backend's arena) ----
  bfloat16* allocate(size_t n) override { return static_cast<bfloat16*>(f_.raw_allocate(n * sizeof(bfloat16))); }
  void deallocate(bfloat16* p) override { f_.raw_free(p); }
  int32_t* allocate_ints(size_t n) override { return f_.allocate_ints(n); }
  void deallocate_ints(int32_t* p) override { f_.deallocate_ints(p); }
  uint8_t* allocate_bytes(size_t n) override { return f_.allocate_bytes(n); }
  void deallocate_bytes(uint8_t* p) override { f_.deallocate_bytes(p); }
  void copy_to_host(bfloat16* host, const bfloat16* src, size_t n) override {
    f_.to_host(host, src, n * sizeof(bfloat16));
  }
  void copy_from_host(bfloat16* dst, const bfloat16* host, size_t n) override {
    f_.from_host(dst, host, n * sizeof(bfloat16));
  }
  void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) override {
    f_.copy_ints_from_host(dst, host, n);
  }
  void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) override { f_.copy_ints_to_host(host, src, n); }
  void fill(bfloat16* x, size_t n, bfloat16 value) override {
    if (n == 0) return;
    f_.activate();
    if (value.bits == 0) {
      ELECTRA_CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(bfloat16), stream()));
    } else {
      cuda::fill(s(), x, n, value);
    }
  }
  void copy(bfloat16* dst, const bfloat16* src, size_t n) override { f_.device_copy(dst, src, n * sizeof(bfloat16)); }
  void synchronize() override { f_.synchronize(); }

  // ---- the wide type ----
  Backend<float>& wide() override { return f_; }
  void widen(float* dst, const bfloat16* src, size_t n) override {
    f_.activate();
    cuda::widen(s(), dst, src, n);
  }
  void narrow(bfloat16* dst, const float* src, size_t n) override {
    f_.activate();
    cuda::narrow(s(), dst, src, n);
  }

  // ---- matrix products: bf16 operands on tensor cores, fp32 accumulation and scalars ----
  void gemm(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const bfloat16* a, int lda, const bfloat16* b,
            int ldb, float beta, bfloat16* c, int ldc) override {
    check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
    if (m == 0 || n == 0) return;
    f_.activate();
    gemm_ex(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, CUDA_R_16BF, ldc);
  }
  void gemm_strided_batched(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const bfloat16* a, int lda,
                            long long stride_a, const bfloat16* b, int ldb, long long stride_b, float beta, bfloat16* c,
                            int ldc, long long stride_c, int batch) override {
    check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
    ELECTRA_CHECK(batch >= 0, "gemm_strided_batched: negative batch ", batch);
    if (m == 0 || n == 0 || batch == 0) return;
    f_.activate();
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    ELECTRA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        f_.cublas_, to_cublas(tb), to_cublas(ta), n, m, k, &alpha, b, CUDA_R_16BF, ldb, stride_b, a, CUDA_R_16BF, lda,
        stride_a, &beta, c, CUDA_R_16BF, ldc, stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // The float backend's shapes (see CudaBackend::linear_forward / linear_backward for the column-major
  // views); cuBLASLt first, cuBLAS when it has no algorithm for a shape.
  void linear_forward(bfloat16* y, const bfloat16* x, const bfloat16* weight, const bfloat16* bias, int rows, int in,
                      int out) override {
    ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_forward: bad shape rows=", rows, " in=", in, " out=", out);
    if (rows == 0) return;
    f_.activate();
    // The bias epilogue reads a bf16 bias (cuBLASLt: the bias has D's type) and adds it in fp32 before D
    // is rounded once, as the reference (float x W^T + bias, then narrowed).
    if (f_.lt_->matmul(kBf16Out, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, 1.0f, weight, in, x, in, 0.0f, y, out,
                       bias)) {
      return;
    }
    float beta = 0.0f;
    if (bias != nullptr) {
      cuda::broadcast_rows(s(), y, bias, rows, out);
      beta = 1.0f;
    }
    if (f_.lt_->matmul(kBf16Out, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, 1.0f, weight, in, x, in, beta, y, out,
                       nullptr)) {
      return;
    }
    gemm_ex(Transpose::kNo, Transpose::kYes, rows, out, in, 1.0f, x, in, weight, in, beta, y, CUDA_R_16BF, out);
  }
  void linear_backward(bfloat16* dx, float* dweight, float* dbias, const bfloat16* dy, const bfloat16* x,
                       const bfloat16* weight, int rows, int in, int out) override {
    ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_backward: bad shape rows=", rows, " in=", in, " out=", out);
    if (rows == 0) return;
    f_.activate();
    if (dx != nullptr && !f_.lt_->matmul(kBf16Out, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, 1.0f, weight, in, dy, out,
                                         0.0f, dx, in, nullptr)) {
      gemm_ex(Transpose::kNo, Transpose::kNo, rows, in, out, 1.0f, dy, out, weight, in, 0.0f, dx, CUDA_R_16BF, in);
    }
    // dW (fp32) += x^T dy: bf16 products, fp32 C/D with beta 1, so the gradient never passes through bf16.
    if (dweight != nullptr && !f_.lt_->matmul(kFloatOut, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, 1.0f, x, in, dy, out,
                                              1.0f, dweight, in, nullptr)) {
      gemm_ex(Transpose::kYes, Transpose::kNo, out, in, rows, 1.0f, dy, out, x, in, 1.0f, dweight, CUDA_R_32F, in);
    }
    // The float backend's deterministic column sums, reading bf16 dy, summing in fp32.
    if (dbias != nullptr) {
      float* partials = f_.workspace<float>(cuda::column_partials(rows, out));
      cuda::column_sums_accumulate(s(), dbias, dy, rows, out, partials);
    }
  }

  // ---- elementwise ----
  void activation_forward(Activation act, bfloat16* y, const bfloat16* x, size_t n) override {
    f_.check_activation(act, "activation_forward");
    if (act == Activation::kNone) {
      if (y != x) copy(y, x, n);
      return;
    }
    f_.activate();
    cuda::activation_forward(s(), act, y, x, n);
  }
  void activation_backward(Activation act, bfloat16* dx, const bfloat16* dy, const bfloat16* x, size_t n) override {
    f_.check_activation(act, "activation_backward");
    if (act == Activation::kNone) {
      if (dx != dy) copy(dx, dy, n);
      return;
    }
    f_.activate();
    cuda::activation_backward(s(), act, dx, dy, x, n);
  }
  void add(bfloat16* out, const bfloat16* a, const bfloat16* b, size_t n) override {
    f_.activate();
    cuda::add(s(), out, a, b, n);
  }
  void accumulate(bfloat16* y, const bfloat16* x, size_t n) override {
    f_.activate();
    cuda::accumulate(s(), y, x, n);
  }
  void scale(bfloat16* x, size_t n, float alpha) override {
    f_.activate();
    cuda::scale(s(), x, n, alpha);
  }
  void dropout_forward(bfloat16* y, uint8_t* keep, const bfloat16* x, size_t n, float p,
                       const DropoutKey& key) override {
    check_dropout_p(p, "dropout_forward");
    f_.activate();
    if (p == 0.0f) {
      if (y != x) copy(y, x, n);
      if (keep != nullptr && n != 0) ELECTRA_CUDA_CHECK(cudaMemsetAsync(keep, 1, n, stream()));
      return;
    }
    ELECTRA_CHECK(keep != nullptr, "dropout_forward: keep mask is null");
    ELECTRA_CHECK(key.elements_per_example > 0, "dropout_forward: elements_per_example must be positive");
    cuda::dropout_forward(s(), y, keep, x, n, p, key);
  }
  void dropout_backward(bfloat16* dx, const bfloat16* dy, const uint8_t* keep, size_t n, float p) override {
    check_dropout_p(p, "dropout_backward");
    f_.activate();
    if (p == 0.0f) {
      if (dx != dy) copy(dx, dy, n);
      return;
    }
    cuda::dropout_backward(s(), dx, dy, keep, n, 1.0f / (1.0f - p));
  }

  // ---- normalisation: bf16 x, y, gamma, beta; fp32 mean, rstd, dgamma, dbeta ----
  void layernorm_forward(bfloat16* y, float* mean, float* rstd, const bfloat16* x, const bfloat16* gamma,
                         const bfloat16* beta, int rows, int cols, float eps) override {
    ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_forward: bad shape rows=", rows, " cols=", cols);
    f_.activate();
    cuda::layernorm_forward(s(), y, mean, rstd, x, gamma, beta, rows, cols, eps);
  }
  void layernorm_backward(bfloat16* dx, float* dgamma, float* dbeta, const bfloat16* dy, const bfloat16* x,
                          const float* mean, const float* rstd, const bfloat16* gamma, int rows, int cols) override {
    ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_backward: bad shape rows=", rows, " cols=", cols);
    if (rows == 0) return;
    f_.activate();
    float* partials = f_.layernorm_partials(dgamma, dbeta, rows, cols);
    cuda::layernorm_backward(s(), dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols, partials);
  }
  // One kernel each way (layernorm_fused.cu), rounding to bf16 where the op sequence stores: bitwise it.
  void dropout_add_layernorm_forward(bfloat16* y, bfloat16* res, uint8_t* keep, float* mean, float* rstd,
                                     const bfloat16* x, const bfloat16* residual, const bfloat16* gamma,
                                     const bfloat16* beta, int rows, int cols, float p, const DropoutKey& key,
                                     float eps) override {
    check_residual_layernorm_args(rows, cols, p, keep, &key, "dropout_add_layernorm_forward");
    if (rows == 0) return;
    f_.activate();
    cuda::dropout_add_layernorm_forward(s(), y, res, keep, mean, rstd, x, residual, gamma, beta, rows, cols, p, key,
                                        eps);
  }
  void layernorm_dropout_backward(bfloat16* d_res, bfloat16* dx, float* dgamma, float* dbeta, const bfloat16* dy,
                                  const bfloat16* res, const float* mean, const float* rstd, const bfloat16* gamma,
                                  const uint8_t* keep, int rows, int cols, float p) override {
    check_residual_layernorm_args(rows, cols, p, keep, nullptr, "layernorm_dropout_backward");
    if (rows == 0) return;
    f_.activate();
    float* partials = f_.layernorm_partials(dgamma, dbeta, rows, cols);
    cuda::layernorm_dropout_backward(s(), d_res, dx, dgamma, dbeta, dy, res, mean, rstd, gamma, keep, rows, cols, p,
                                     partials);
  }

  // ---- embeddings: bf16 tables and activations, fp32 table gradients ----
  void embedding_forward(bfloat16* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                         const bfloat16* word_table, const bfloat16* position_table, const bfloat16* type_table, int B,
                         int S, int E) override {
    ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_forward: bad shape B=", B, " S=", S, " E=", E);
    f_.activate();
    cuda::embedding_forward(s(), out, ids, type_ids, position_ids, word_table, position_table, type_table, B, S, E);
  }
  void embedding_backward(float* dword, float* dposition, float* dtype, const bfloat16* dout, const int32_t* ids,
                          const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E) override {
    ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_backward: bad shape B=", B, " S=", S, " E=", E);
    const long long tokens = static_cast<long long>(B) * S;
    ELECTRA_CHECK(tokens < (1LL << 31), "embedding_backward: ", tokens, " tokens is too many");
    if (tokens == 0) return;
    f_.activate();
    void* ws = nullptr;
    size_t bytes = 0;
    if (cuda::embedding_backward_sorts(dword, dposition, dtype, position_ids)) {
      bytes = cuda::embedding_backward_workspace(static_cast<int>(tokens), E);
      ws = f_.workspace<char>(bytes);
    }
    cuda::embedding_backward(s(), dword, dposition, dtype, dout, ids, type_ids, position_ids, B, S, E, ws, bytes);
  }
  void gather_rows(bfloat16* out, const bfloat16* x, const int32_t* positions, int B, int S, int P, int C) override {
    ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "gather_rows: bad shape");
    f_.activate();
    cuda::gather_rows(s(), out, x, positions, B, S, P, C);
  }
  void scatter_add_rows(bfloat16* dx, const bfloat16* dout, const int32_t* positions, int B, int S, int P,
                        int C) override {
    ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "scatter_add_rows: bad shape");
    f_.activate();
    cuda::scatter_add_rows(s(), dx, dout, positions, B, S, P, C);
  }

  // ---- attention: bf16 q/k/v, context, probabilities and gradients in place, fp32 scores and stats ----
  // Nothing is widened: the fused calls cuDNN SDPA serves (dropout 0, sdpa_cudnn.h) read and write the
  // bf16 tensors directly; every other call runs our kernels one head at a time, as the float backend
  // does: bf16 q.k^T into fp32 scores ([B,S,S], the workspace), the float path's row kernels (or their
  // bf16-probability twins, attention_bf16.cu) with its keep bits, and the probabilities or score
  // gradients rounded to bf16 for the GEMMs that follow. That rounding is the one difference from the
  // reference (widen, float op, narrow), which keeps them fp32: see the file comment.
  void attention_forward(bfloat16* context, bfloat16* probs, uint8_t* keep, const bfloat16* qkv, const int32_t* mask,
                         int B, int S, int H, int D, float dropout, const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "attention_forward");
    check_attention_keep(keep, dropout, "attention_forward");
    check_attention_key(key, dropout, S, "attention_forward");
    if (B == 0) return;
    f_.activate();
    const HeadLayout a(B, S, H, D);
    // Head h's fp32 scores, then (with dropout) its dropped probabilities in bf16.
    const auto [scores, dropped] = fp32_and_dropped_slices(a, dropout);
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      gemm_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k, a.ld_qkv,
                   a.qkv_batch, scores, CUDA_R_32F, S, a.ss, B);
      cuda::bf16_attention_softmax_forward(s(), scores, probs, keep, dropped, mask, B, H, S, h, dropout, key);
      // context[b, :, h, :] = attend v, attend the bf16 probabilities (head h of probs) or dropped ones.
      const bfloat16* attend = dropout > 0.0f ? dropped : probs + h * a.ss;
      const long long attend_batch = dropout > 0.0f ? a.ss : H * a.ss;
      gemm_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, attend, S, attend_batch, v, a.ld_qkv, a.qkv_batch,
                   context + a.head(h), CUDA_R_16BF, a.ld_ctx, a.ctx_batch, B);
    }
  }
  void attention_backward(bfloat16* dqkv, bfloat16* scratch, const bfloat16* dcontext, const bfloat16* qkv,
                          const bfloat16* probs, const uint8_t* keep, const int32_t* mask, int B, int S, int H, int D,
                          float dropout) override {
    check_attention_shape(B, S, H, D, dropout, "attention_backward");
    check_attention_keep(keep, dropout, "attention_backward");
    ELECTRA_CHECK(scratch != nullptr, "attention_backward: scratch is null");
    (void)mask;  // masked keys have probability 0, so their score gradients vanish through probs alone
    if (B == 0) return;
    f_.activate();
    const HeadLayout a(B, S, H, D);
    const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
    const uint8_t* k_mask = dropout > 0.0f ? keep : nullptr;
    // Head h's fp32 d(attend), then (with dropout) its dropped probabilities in bf16; its bf16 d(scores)
    // go into the first [B,S,S] of the caller's scratch.
    const auto [dattend, dropped] = fp32_and_dropped_slices(a, dropout);
    bfloat16* ds = scratch;
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      const auto [dq, dk, dv] = a.qkv(dqkv, h);
      const bfloat16* dctx = dcontext + a.head(h);
      const bfloat16* attend = probs + h * a.ss;
      long long attend_batch = H * a.ss;
      if (dropout > 0.0f) {
        cuda::bf16_attention_apply_keep(s(), dropped, probs, keep, B, H, S, h, keep_scale);
        attend = dropped;
        attend_batch = a.ss;
      }
      // dv = attend^T dctx
      gemm_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, attend, S, attend_batch, dctx, a.ld_ctx, a.ctx_batch,
                   dv, CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
      // d(attend) = dctx v^T in fp32, then through dropout and softmax into bf16 d(scores).
      gemm_batched(Transpose::kNo, Transpose::kYes, S, S, D, 1.0f, dctx, a.ld_ctx, a.ctx_batch, v, a.ld_qkv,
                   a.qkv_batch, dattend, CUDA_R_32F, S, a.ss, B);
      cuda::bf16_attention_softmax_backward(s(), ds, dattend, probs, k_mask, B, H, S, h, keep_scale, a.score_scale);
      // dq = ds k; dk = ds^T q
      gemm_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, ds, S, a.ss, k, a.ld_qkv, a.qkv_batch, dq,
                   CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
      gemm_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, ds, S, a.ss, q, a.ld_qkv, a.qkv_batch, dk,
                   CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
    }
  }
  // Every valid shape, as the float backend: cuDNN SDPA where it serves, our kernels elsewhere.
  bool fused_attention_supported(int B, int S, int H, int D, float dropout) const override {
    return f_.fused_attention_supported(B, S, H, D, dropout);
  }
  void fused_attention_forward(bfloat16* context, float* stats, const bfloat16* qkv, const int32_t* mask, int B, int S,
                               int H, int D, float dropout, const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "fused_attention_forward");
    check_attention_key(key, dropout, S, "fused_attention_forward");
    if (B == 0) return;
    f_.activate();
    // The float backend's choice (same arguments, same cached answer in forward and backward).
    if (cuda::CudnnSdpa* sdpa = f_.sdpa_for(B, S, H, D, dropout)) {
      sdpa->forward_bf16(context, stats, qkv, mask, B, S, H, D, dropout, key);
      return;
    }
    const HeadLayout a(B, S, H, D);
    // Head h's fp32 scores (then dropped probabilities) and their bf16 copy for the P.V GEMM.
    char* ws = f_.workspace<char>(aligned(a.bss * sizeof(float)) + aligned(a.bss * 2));
    float* p = reinterpret_cast<float*>(ws);
    bfloat16* attend = reinterpret_cast<bfloat16*>(ws + aligned(a.bss * sizeof(float)));
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      gemm_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k, a.ld_qkv,
                   a.qkv_batch, p, CUDA_R_32F, S, a.ss, B);
      cuda::fused_attention_softmax_forward(s(), p, stats, mask, B, H, S, h, dropout, key);
      cuda::narrow(s(), attend, p, a.bss);
      gemm_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, attend, S, a.ss, v, a.ld_qkv, a.qkv_batch,
                   context + a.head(h), CUDA_R_16BF, a.ld_ctx, a.ctx_batch, B);
    }
  }
  void fused_attention_backward(bfloat16* dqkv, const bfloat16* dcontext, const bfloat16* qkv, const bfloat16* context,
                                const float* stats, const int32_t* mask, int B, int S, int H, int D, float dropout,
                                const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "fused_attention_backward");
    check_attention_key(key, dropout, S, "fused_attention_backward");
    if (B == 0) return;
    f_.activate();
    if (cuda::CudnnSdpa* sdpa = f_.sdpa_for(B, S, H, D, dropout)) {
      sdpa->backward_bf16(dqkv, dcontext, qkv, context, stats, mask, B, S, H, D, dropout, key);
      return;
    }
    const HeadLayout a(B, S, H, D);
    // Head h's fp32 probabilities and dropped probabilities then d(scores), and a bf16 slice for the
    // GEMM operand made of either.
    const size_t fp32_slice = aligned(a.bss * sizeof(float));
    char* ws = f_.workspace<char>(2 * fp32_slice + aligned(a.bss * 2));
    float* p = reinterpret_cast<float*>(ws);
    float* ds = reinterpret_cast<float*>(ws + fp32_slice);
    bfloat16* operand = reinterpret_cast<bfloat16*>(ws + 2 * fp32_slice);
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      const auto [dq, dk, dv] = a.qkv(dqkv, h);
      const bfloat16* dctx = dcontext + a.head(h);
      gemm_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k, a.ld_qkv,
                   a.qkv_batch, p, CUDA_R_32F, S, a.ss, B);
      cuda::fused_attention_recompute(s(), p, dropout > 0.0f ? ds : nullptr, stats, mask, B, H, S, h, dropout, key);
      // dv = attend^T dctx
      cuda::narrow(s(), operand, dropout > 0.0f ? ds : p, a.bss);
      gemm_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, operand, S, a.ss, dctx, a.ld_ctx, a.ctx_batch, dv,
                   CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
      // d(attend) = dctx v^T in fp32, then through dropout and softmax.
      gemm_batched(Transpose::kNo, Transpose::kYes, S, S, D, 1.0f, dctx, a.ld_ctx, a.ctx_batch, v, a.ld_qkv,
                   a.qkv_batch, ds, CUDA_R_32F, S, a.ss, B);
      cuda::fused_attention_softmax_backward(s(), ds, p, B, H, S, h, dropout, key, a.score_scale);
      // dq = ds k; dk = ds^T q (the operand slice is free again: dv's GEMM is before this in the stream)
      cuda::narrow(s(), operand, ds, a.bss);
      gemm_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, operand, S, a.ss, k, a.ld_qkv, a.qkv_batch, dq,
                   CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
      gemm_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, operand, S, a.ss, q, a.ld_qkv, a.qkv_batch, dk,
                   CUDA_R_16BF, a.ld_qkv, a.qkv_batch, B);
    }
  }

  // ---- losses and sampling: bf16 logits and logit gradients, fp32 losses and grad scales ----
  void softmax_cross_entropy(float* loss, bfloat16* dlogits, int32_t* argmax, const bfloat16* logits,
                             const int32_t* labels, const float* grad_scale, int rows, int V) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "softmax_cross_entropy: bad shape rows=", rows, " V=", V);
    f_.activate();
    cuda::softmax_cross_entropy(s(), loss, dlogits, argmax, logits, labels, grad_scale, rows, V);
  }
  void log_softmax(bfloat16* y, const bfloat16* x, int rows, int V) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "log_softmax: bad shape rows=", rows, " V=", V);
    f_.activate();
    cuda::log_softmax(s(), y, x, rows, V);
  }
  void sigmoid_cross_entropy(float* loss, bfloat16* dlogit, const bfloat16* logit, const int32_t* label,
                             const float* grad_scale, size_t n) override {
    f_.activate();
    cuda::sigmoid_cross_entropy(s(), loss, dlogit, logit, label, grad_scale, n);
  }
  void gumbel_sample(int32_t* samples, const bfloat16* logits, const int32_t* disallow, int rows, int V,
                     float temperature, uint64_t seed, uint64_t step, uint64_t first_example,
                     int rows_per_example) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "gumbel_sample: bad shape rows=", rows, " V=", V);
    ELECTRA_CHECK(rows_per_example > 0, "gumbel_sample: rows_per_example must be positive");
    ELECTRA_CHECK(temperature > 0.0f, "gumbel_sample: temperature ", temperature, " must be positive");
    f_.activate();
    cuda::gumbel_sample(s(), samples, logits, disallow, rows, V, temperature, seed, step, first_example,
                        rows_per_example);
  }
  void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                             const int32_t* input_mask, const int32_t* positions, const float* weights,
                             const int32_t* samples, int B, int S, int P) override {
    f_.replace_masked_tokens(corrupted, disc_label, original_ids, input_mask, positions, weights, samples, B, S, P);
  }

  // ---- reductions and optimizer ----
  double sum_squares(const bfloat16* x, size_t n) override {
    f_.activate();
    double* ws = f_.workspace<double>(1 + cuda::sum_squares_partials(n));
    cuda::sum_squares(s(), ws, ws + 1, x, n);
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(f_.host_double_, ws, sizeof(double), cudaMemcpyDeviceToHost, stream()));
    f_.wait();
    return *f_.host_double_;
  }
  void adamw_step(bfloat16*, const bfloat16*, bfloat16*, bfloat16*, size_t, float, float, float, float, float,
                  long long, float, bool) override {
    fail_optimizer("adamw_step");
  }
  void adamw_step_runs(bfloat16*, const bfloat16*, bfloat16*, bfloat16*, const AdamWRun*, size_t, float, float, float,
                       float, long long, float, bool) override {
    fail_optimizer("adamw_step_runs");
  }

 private:
  static constexpr LtTypes kBf16Out{CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F};
  static constexpr LtTypes kFloatOut{CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};

  [[noreturn]] void fail_optimizer(const char* op) const {
    fail(name(), " ", op,
         ": the optimizer does not run on bf16 storage; master weights, gradients and moments are fp32, so run it "
         "on wide() (the float CUDA backend)");
  }

  cudaStream_t stream() const { return f_.stream_.stream; }
  const Stream& s() const { return f_.stream_; }

  // cublasGemmEx on bf16 A and B, C of c_type (bf16, or fp32 for weight gradients), fp32 compute and scalars.
  void gemm_ex(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const bfloat16* a, int lda,
               const bfloat16* b, int ldb, float beta, void* c, cudaDataType_t c_type, int ldc) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    ELECTRA_CUBLAS_CHECK(cublasGemmEx(f_.cublas_, to_cublas(tb), to_cublas(ta), n, m, k, &alpha, b, CUDA_R_16BF, ldb, a,
                                      CUDA_R_16BF, lda, &beta, c, c_type, ldc, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  }

  // cublasGemmStridedBatchedEx on bf16 A and B, C of c_type (bf16, or fp32 attention scores), beta 0.
  void gemm_batched(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const bfloat16* a, int lda,
                    long long stride_a, const bfloat16* b, int ldb, long long stride_b, void* c, cudaDataType_t c_type,
                    int ldc, long long stride_c, int batch) {
    const float beta = 0.0f;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    ELECTRA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        f_.cublas_, to_cublas(tb), to_cublas(ta), n, m, k, &alpha, b, CUDA_R_16BF, ldb, stride_b, a, CUDA_R_16BF, lda,
        stride_a, &beta, c, c_type, ldc, stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // Slices carved from the float backend's workspace start 256-byte aligned.
  static size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }
  // A head's fp32 [B,S,S] slice of the workspace and, with dropout, a bf16 one after it for its dropped
  // probabilities (null without dropout).
  struct Fp32AndDropped {
    float* fp32;
    bfloat16* dropped;
  };
  Fp32AndDropped fp32_and_dropped_slices(const HeadLayout& a, float dropout) {
    char* ws = f_.workspace<char>(aligned(a.bss * sizeof(float)) + (dropout > 0.0f ? aligned(a.bss * 2) : 0));
    bfloat16* dropped = dropout > 0.0f ? reinterpret_cast<bfloat16*>(ws + aligned(a.bss * sizeof(float))) : nullptr;
    return Fp32AndDropped{reinterpret_cast<float*>(ws), dropped};
  }

  CudaBackend& f_;  // the float backend whose device, stream, arena, workspace and handles these ops use
};

}  // namespace electra::cuda

namespace electra {

std::unique_ptr<Backend<bfloat16>> make_cuda_bf16_backend(Backend<float>& cuda_backend) {
  auto* cuda = dynamic_cast<cuda::CudaBackend*>(&cuda_backend);
  if (cuda == nullptr) {
    fail("make_cuda_bf16_backend: backend '", cuda_backend.name(),
         "' is not a CUDA backend (pass the one make_cuda_backend made with precision bf16)");
  }
  if (cuda->precision() != CudaPrecision::kBf16) {
    fail("make_cuda_bf16_backend: the CUDA backend '", cuda_backend.name(), "' has precision ",
         to_string(cuda->precision()),
         "; bf16 storage needs precision bf16 (its GEMMs and attention compute on bf16 tensor cores)");
  }
  return std::make_unique<cuda::CudaBf16Backend>(*cuda);
}

}  // namespace electra
