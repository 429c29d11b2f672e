// The CUDA backend's class (Backend<float> on one GPU), internal to lib/backend/cuda: cuda_backend.cpp
// defines it, and the bf16 storage backend (cuda_bf16_backend.cpp) shares its device, stream, arena,
// error word, cuBLAS/cuBLASLt handles and workspace through it. Programs and tests use cuda_backend.h.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "lib/backend/cuda/arena.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/backend/cuda/cuda_check.h"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/lt_matmul.h"
#include "lib/backend/cuda/sdpa_cudnn.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

#define ELECTRA_CUBLAS_CHECK(call)                                                           \
  do {                                                                                       \
    const cublasStatus_t electra_cublas_status_ = (call);                                    \
    if (electra_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                   \
      ::electra::fail("cuBLAS error: ", #call, " failed at ", __FILE__, ":", __LINE__, ": ", \
                      cublasGetStatusName(electra_cublas_status_), " (",                     \
                      cublasGetStatusString(electra_cublas_status_), ")");                   \
    }                                                                                        \
  } while (0)

namespace electra::cuda {

inline cublasOperation_t to_cublas(Transpose t) { return t == Transpose::kYes ? CUBLAS_OP_T : CUBLAS_OP_N; }

// The CPU backend's checks (lib/backend/cpu/blas.cpp).
inline void check_gemm_args(Transpose ta, Transpose tb, int m, int n, int k, int lda, int ldb, int ldc) {
  ELECTRA_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size m=", m, " n=", n, " k=", k);
  const int a_cols = ta == Transpose::kNo ? k : m;
  const int b_cols = tb == Transpose::kNo ? n : k;
  ELECTRA_CHECK(lda >= std::max(1, a_cols), "gemm: lda=", lda, " < ", a_cols);
  ELECTRA_CHECK(ldb >= std::max(1, b_cols), "gemm: ldb=", ldb, " < ", b_cols);
  ELECTRA_CHECK(ldc >= std::max(1, n), "gemm: ldc=", ldc, " < ", n);
}

inline void check_dropout_p(float p, const char* op) {
  ELECTRA_CHECK(p >= 0.0f && p < 1.0f, op, ": dropout probability ", p, " outside [0, 1)");
}

// The fused post-LN residual block's arguments (backend.h); key is null for the backward.
inline void check_residual_layernorm_args(int rows, int cols, float p, const uint8_t* keep, const DropoutKey* key,
                                          const char* op) {
  ELECTRA_CHECK(rows >= 0 && cols > 0, op, ": bad shape rows=", rows, " cols=", cols);
  check_dropout_p(p, op);
  ELECTRA_CHECK(p == 0.0f || keep != nullptr, op, ": keep mask is null with dropout ", p);
  ELECTRA_CHECK(p == 0.0f || key == nullptr || key->elements_per_example > 0, op,
                ": elements_per_example must be positive");
}

inline void check_attention_shape(int B, int S, int H, int D, float dropout, const char* op) {
  ELECTRA_CHECK(B >= 0 && S > 0 && H > 0 && D > 0, op, ": bad shape B=", B, " S=", S, " H=", H, " D=", D);
  ELECTRA_CHECK(dropout >= 0.0f && dropout < 1.0f, op, ": dropout ", dropout, " outside [0, 1)");
}
// With dropout, the materialised attention stores (forward) and reads (backward) the keep mask.
inline void check_attention_keep(const uint8_t* keep, float dropout, const char* op) {
  ELECTRA_CHECK(dropout == 0.0f || keep != nullptr, op, ": keep mask is null with dropout ", dropout);
}
// With dropout, keep bits are drawn by element index: the key must know an example's element count, and
// a trimmed batch's key rows (key_seq_length) are at least as long as the call's S.
inline void check_attention_key(const DropoutKey& key, float dropout, int S, const char* op) {
  ELECTRA_CHECK(dropout == 0.0f || key.elements_per_example > 0, op, ": elements_per_example is 0");
  ELECTRA_CHECK(key.key_seq_length == 0 || key.key_seq_length >= S, op, ": key_seq_length ", key.key_seq_length,
                " is shorter than the sequence (", S, ")");
}

// Head h's query, key and value in qkv [B,S,3,H,D], or their gradients in dqkv.
template <typename T>
struct HeadQkv {
  T* q;
  T* k;
  T* v;
};

// The strided views of one head of qkv [B,S,3,H,D] and context [B,S,H,D] that the per-head GEMMs of the
// attention ops use, and the size of a head's [B,S,S] slice.
struct HeadLayout {
  HeadLayout(int B, int S, int H, int D)
      : hd(static_cast<size_t>(H) * D),
        ld_qkv(3 * H * D),
        ld_ctx(H * D),
        ss(static_cast<long long>(S) * S),
        bss(static_cast<size_t>(B) * S * S),
        qkv_batch(static_cast<long long>(S) * 3 * H * D),
        ctx_batch(static_cast<long long>(S) * H * D),
        score_scale(1.0f / std::sqrt(static_cast<float>(D))),
        head_size(D) {}
  size_t head(int h) const { return static_cast<size_t>(h) * head_size; }  // offset of head h in a token's row
  template <typename T>
  HeadQkv<T> qkv(T* base, int h) const {
    T* q = base + head(h);
    return HeadQkv<T>{q, q + hd, q + 2 * hd};
  }
  size_t hd;
  int ld_qkv, ld_ctx;
  long long ss;
  size_t bss;
  long long qkv_batch, ctx_batch;
  float score_scale;
  int head_size;
};

class CudaBackend final : public Backend<float> {
  // Shares this backend's stream, error word, arena, workspace and cuBLAS/cuBLASLt handles.
  friend class CudaBf16Backend;

 public:
  CudaBackend(int device, const CudaBackendOptions& options) : device_(device), precision_(options.precision) {
    try {
      initialize(options);
    } catch (...) {
      release();  // no destructor runs after a throwing constructor: free what was created (e.g. arena OOM)
      throw;
    }
  }
  ~CudaBackend() override { release(); }

 private:
  void initialize(const CudaBackendOptions& options) {
    ELECTRA_CUDA_CHECK(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    ELECTRA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    if (prop.major < 8) {
      fail("CUDA device ", device_, " (", prop.name, ") has compute capability ", prop.major, ".", prop.minor,
           "; the CUDA backend is built for 8.0 (Ampere) and newer");
    }
    gpu_name_ = prop.name;
    stream_.sms = prop.multiProcessorCount;
    ELECTRA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_.stream, cudaStreamNonBlocking));
    ELECTRA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&stream_.errors), sizeof(unsigned)));
    ELECTRA_CUDA_CHECK(cudaMemsetAsync(stream_.errors, 0, sizeof(unsigned), stream_.stream));
    ELECTRA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_errors_), sizeof(unsigned)));
    ELECTRA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_double_), sizeof(double)));
    *host_errors_ = 0;
    ELECTRA_CUBLAS_CHECK(cublasCreate(&cublas_));
    ELECTRA_CUBLAS_CHECK(cublasSetStream(cublas_, stream_.stream));
    // Tensor-core modes: inputs are rounded inside cuBLAS (fp32 storage, fp32 accumulation).
    switch (precision_) {
      case CudaPrecision::kFp32:
        compute_ = CUBLAS_COMPUTE_32F;
        break;
      case CudaPrecision::kTf32:
        compute_ = CUBLAS_COMPUTE_32F_FAST_TF32;
        break;
      case CudaPrecision::kBf16:
        compute_ = CUBLAS_COMPUTE_32F_FAST_16BF;
        break;
      case CudaPrecision::kFp16:
        compute_ = CUBLAS_COMPUTE_32F_FAST_16F;
        break;
    }
    ELECTRA_CUBLAS_CHECK(cublasSetMathMode(
        cublas_, precision_ == CudaPrecision::kFp32 ? CUBLAS_DEFAULT_MATH : CUBLAS_TF32_TENSOR_OP_MATH));
    lt_ = std::make_unique<cuda::LtMatmul>(compute_, stream_.stream, device_);  // same compute type as cuBLAS
    create_arena(options);
    ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_.stream));
  }

  // No throwing here: report nothing, release everything.
  void release() noexcept {
    cudaSetDevice(device_);
    if (stream_.stream != nullptr) cudaStreamSynchronize(stream_.stream);
    sdpa_.reset();  // its cuDNN handle is bound to the stream
    lt_.reset();    // its workspace and descriptors
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (arena_memory_ != nullptr) cudaFree(arena_memory_);  // the workspace and every buffer live in it
    if (stream_.errors != nullptr) cudaFree(stream_.errors);
    if (host_errors_ != nullptr) cudaFreeHost(host_errors_);
    if (host_double_ != nullptr) cudaFreeHost(host_double_);
    if (stream_.stream != nullptr) cudaStreamDestroy(stream_.stream);
  }

 public:
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  DeviceKind device() const override { return DeviceKind::kCuda; }
  std::string name() const override {
    return precision_ == CudaPrecision::kFp32 ? "cuda-float" : "cuda-float-" + to_string(precision_);
  }
  cudaStream_t stream() const { return stream_.stream; }
  int device_index() const { return device_; }
  CudaPrecision precision() const { return precision_; }
  CudaMemoryStats memory_stats() const {
    const cuda::ArenaStats a = arena_->stats();
    return CudaMemoryStats{a.capacity, a.in_use, a.peak, a.largest_free_block, a.blocks};
  }

  // ---- memory ----
  float* allocate(size_t n) override { return static_cast<float*>(raw_allocate(n * sizeof(float))); }
  void deallocate(float* p) override { raw_free(p); }
  int32_t* allocate_ints(size_t n) override { return static_cast<int32_t*>(raw_allocate(n * sizeof(int32_t))); }
  void deallocate_ints(int32_t* p) override { raw_free(p); }
  uint8_t* allocate_bytes(size_t n) override { return static_cast<uint8_t*>(raw_allocate(n)); }
  void deallocate_bytes(uint8_t* p) override { raw_free(p); }
  void copy_to_host(float* host, const float* src, size_t n) override { to_host(host, src, n * sizeof(float)); }
  void copy_from_host(float* dst, const float* host, size_t n) override { from_host(dst, host, n * sizeof(float)); }
  void copy_ints_from_host(int32_t* dst, const int32_t* host, size_t n) override {
    from_host(dst, host, n * sizeof(int32_t));
  }
  void copy_ints_to_host(int32_t* host, const int32_t* src, size_t n) override {
    to_host(host, src, n * sizeof(int32_t));
  }
  void fill(float* x, size_t n, float value) override {
    if (n == 0) return;
    activate();
    if (std::bit_cast<uint32_t>(value) == 0) {
      ELECTRA_CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), stream_.stream));
    } else {
      cuda::fill(stream_, x, n, value);
    }
  }
  void copy(float* dst, const float* src, size_t n) override { device_copy(dst, src, n * sizeof(float)); }
  void synchronize() override {
    activate();
    wait();
  }

  // ---- matrix products ----
  void gemm(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
            int ldb, float beta, float* c, int ldc) override {
    check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
    if (m == 0 || n == 0) return;
    activate();
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    ELECTRA_CUBLAS_CHECK(cublasGemmEx(cublas_, to_cublas(tb), to_cublas(ta), n, m, k, &alpha, b, CUDA_R_32F, ldb, a,
                                      CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc, compute_, CUBLAS_GEMM_DEFAULT));
  }
  void gemm_strided_batched(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const float* a, int lda,
                            long long stride_a, const float* b, int ldb, long long stride_b, float beta, float* c,
                            int ldc, long long stride_c, int batch) override {
    check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
    ELECTRA_CHECK(batch >= 0, "gemm_strided_batched: negative batch ", batch);
    if (m == 0 || n == 0 || batch == 0) return;
    activate();
    ELECTRA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_, to_cublas(tb), to_cublas(ta), n, m, k, &alpha, b,
                                                    CUDA_R_32F, ldb, stride_b, a, CUDA_R_32F, lda, stride_a, &beta, c,
                                                    CUDA_R_32F, ldc, stride_c, batch, compute_, CUBLAS_GEMM_DEFAULT));
  }

  void linear_forward(float* y, const float* x, const float* weight, const float* bias, int rows, int in,
                      int out) override {
    ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_forward: bad shape rows=", rows, " in=", in, " out=", out);
    if (rows == 0) return;
    activate();
    // Column-major (cuBLAS) view: y^T [out, rows] = W [out, in] x^T [in, rows]; W is stored as W^T
    // [in, out] there, hence op(A) = T. The bias is the BIAS epilogue (one vector per row of y^T).
    // The activation that usually follows is not fused: see lt_matmul.h (erf GELU, not tanh).
    if (lt_->matmul(CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, 1.0f, weight, in, x, in, 0.0f, y, out, bias)) return;
    // No cuBLASLt algorithm for this shape with the epilogue: start from the bias and add the GEMM onto
    // it, as the CPU backend does.
    float beta = 0.0f;
    if (bias != nullptr) {
      cuda::broadcast_rows(stream_, y, bias, rows, out);
      beta = 1.0f;
    }
    if (lt_->matmul(CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, 1.0f, weight, in, x, in, beta, y, out, nullptr)) return;
    gemm(Transpose::kNo, Transpose::kYes, rows, out, in, 1.0f, x, in, weight, in, beta, y, out);
  }
  void linear_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x, const float* weight,
                       int rows, int in, int out) override {
    ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_backward: bad shape rows=", rows, " in=", in, " out=", out);
    if (rows == 0) return;
    activate();
    // dx^T [in, rows] = W^T [in, out] dy^T [out, rows] (column-major; W^T is W's storage).
    if (dx != nullptr &&
        !lt_->matmul(CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, 1.0f, weight, in, dy, out, 0.0f, dx, in, nullptr)) {
      gemm(Transpose::kNo, Transpose::kNo, rows, in, out, 1.0f, dy, out, weight, in, 0.0f, dx, in);
    }
    // dW^T [in, out] += x^T [in, rows] dy [rows, out] (beta = 1: parameter gradients accumulate).
    if (dweight != nullptr &&
        !lt_->matmul(CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, 1.0f, x, in, dy, out, 1.0f, dweight, in, nullptr)) {
      gemm(Transpose::kYes, Transpose::kNo, out, in, rows, 1.0f, dy, out, x, in, 1.0f, dweight, in);
    }
    // The bias gradient stays our column-sum kernel rather than the BGRADB epilogue of the dW GEMM: the
    // epilogue overwrites its output (our contract accumulates, so it would need a scratch vector and an
    // extra kernel), in bf16/fp16 modes it would sum dy rounded to 16 bits, and its summation order is
    // not documented; the kernel sums fp32 dy in a fixed order (bitwise reproducible) for one extra read
    // of dy, small next to the GEMM's.
    if (dbias != nullptr) {
      float* partials = workspace<float>(cuda::column_partials(rows, out));
      cuda::column_sums_accumulate(stream_, dbias, dy, rows, out, partials);
    }
  }

  // ---- elementwise ----
  void activation_forward(Activation act, float* y, const float* x, size_t n) override {
    check_activation(act, "activation_forward");
    if (act == Activation::kNone) {
      if (y != x) device_copy(y, x, n * sizeof(float));
      return;
    }
    activate();
    cuda::activation_forward(stream_, act, y, x, n);
  }
  void activation_backward(Activation act, float* dx, const float* dy, const float* x, size_t n) override {
    check_activation(act, "activation_backward");
    if (act == Activation::kNone) {
      if (dx != dy) device_copy(dx, dy, n * sizeof(float));
      return;
    }
    activate();
    cuda::activation_backward(stream_, act, dx, dy, x, n);
  }
  void add(float* out, const float* a, const float* b, size_t n) override {
    activate();
    cuda::add(stream_, out, a, b, n);
  }
  void accumulate(float* y, const float* x, size_t n) override {
    activate();
    cuda::accumulate(stream_, y, x, n);
  }
  void scale(float* x, size_t n, float alpha) override {
    activate();
    cuda::scale(stream_, x, n, alpha);
  }
  void dropout_forward(float* y, uint8_t* keep, const float* x, size_t n, float p, const DropoutKey& key) override {
    check_dropout_p(p, "dropout_forward");
    activate();
    if (p == 0.0f) {
      if (y != x) device_copy(y, x, n * sizeof(float));
      if (keep != nullptr && n != 0) ELECTRA_CUDA_CHECK(cudaMemsetAsync(keep, 1, n, stream_.stream));
      return;
    }
    ELECTRA_CHECK(keep != nullptr, "dropout_forward: keep mask is null");
    ELECTRA_CHECK(key.elements_per_example > 0, "dropout_forward: elements_per_example must be positive");
    cuda::dropout_forward(stream_, y, keep, x, n, p, key);
  }
  void dropout_backward(float* dx, const float* dy, const uint8_t* keep, size_t n, float p) override {
    check_dropout_p(p, "dropout_backward");
    activate();
    if (p == 0.0f) {
      if (dx != dy) device_copy(dx, dy, n * sizeof(float));
      return;
    }
    cuda::dropout_backward(stream_, dx, dy, keep, n, 1.0f / (1.0f - p));
  }

  // ---- normalisation ----
  void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta,
                         int rows, int cols, float eps) override {
    ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_forward: bad shape rows=", rows, " cols=", cols);
    activate();
    cuda::layernorm_forward(stream_, y, mean, rstd, x, gamma, beta, rows, cols, eps);
  }
  void layernorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* mean,
                          const float* rstd, const float* gamma, int rows, int cols) override {
    ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_backward: bad shape rows=", rows, " cols=", cols);
    if (rows == 0) return;
    activate();
    float* partials = layernorm_partials(dgamma, dbeta, rows, cols);
    cuda::layernorm_backward(stream_, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, cols, partials);
  }
  // One kernel each way (layernorm_fused.cu), bitwise the op sequence of the defaults.
  void dropout_add_layernorm_forward(float* y, float* res, uint8_t* keep, float* mean, float* rstd, const float* x,
                                     const float* residual, const float* gamma, const float* beta, int rows, int cols,
                                     float p, const DropoutKey& key, float eps) override {
    check_residual_layernorm_args(rows, cols, p, keep, &key, "dropout_add_layernorm_forward");
    if (rows == 0) return;
    activate();
    cuda::dropout_add_layernorm_forward(stream_, y, res, keep, mean, rstd, x, residual, gamma, beta, rows, cols, p, key,
                                        eps);
  }
  void layernorm_dropout_backward(float* d_res, float* dx, float* dgamma, float* dbeta, const float* dy,
                                  const float* res, const float* mean, const float* rstd, const float* gamma,
                                  const uint8_t* keep, int rows, int cols, float p) override {
    check_residual_layernorm_args(rows, cols, p, keep, nullptr, "layernorm_dropout_backward");
    if (rows == 0) return;
    activate();
    float* partials = layernorm_partials(dgamma, dbeta, rows, cols);
    cuda::layernorm_dropout_backward(stream_, d_res, dx, dgamma, dbeta, dy, res, mean, rstd, gamma, keep, rows, cols, p,
                                     partials);
  }

  // ---- embeddings ----
  void embedding_forward(float* out, const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids,
                         const float* word_table, const float* position_table, const float* type_table, int B, int S,
                         int E) override {
    ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_forward: bad shape B=", B, " S=", S, " E=", E);
    activate();
    cuda::embedding_forward(stream_, out, ids, type_ids, position_ids, word_table, position_table, type_table, B, S, E);
  }
  void embedding_backward(float* dword, float* dposition, float* dtype, const float* dout, const int32_t* ids,
                          const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E) override {
    ELECTRA_CHECK(B >= 0 && S >= 0 && E > 0, "embedding_backward: bad shape B=", B, " S=", S, " E=", E);
    const long long tokens = static_cast<long long>(B) * S;
    ELECTRA_CHECK(tokens < (1LL << 31), "embedding_backward: ", tokens, " tokens is too many");
    if (tokens == 0) return;
    activate();
    void* ws = nullptr;
    size_t bytes = 0;
    if (cuda::embedding_backward_sorts(dword, dposition, dtype, position_ids)) {
      bytes = cuda::embedding_backward_workspace(static_cast<int>(tokens), E);
      ws = workspace<char>(bytes);
    }
    cuda::embedding_backward(stream_, dword, dposition, dtype, dout, ids, type_ids, position_ids, B, S, E, ws, bytes);
  }
  void gather_rows(float* out, const float* x, const int32_t* positions, int B, int S, int P, int C) override {
    ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "gather_rows: bad shape");
    activate();
    cuda::gather_rows(stream_, out, x, positions, B, S, P, C);
  }
  void scatter_add_rows(float* dx, const float* dout, const int32_t* positions, int B, int S, int P, int C) override {
    ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0 && C > 0, "scatter_add_rows: bad shape");
    activate();
    cuda::scatter_add_rows(stream_, dx, dout, positions, B, S, P, C);
  }

  // ---- attention ----
  // One head at a time: the (b) products of head h are one strided-batched GEMM each (query, key and
  // value of head h are strided views into qkv, leading dimension 3*H*D; batch stride S*3*H*D).
  void attention_forward(float* context, float* probs, uint8_t* keep, const float* qkv, const int32_t* mask, int B,
                         int S, int H, int D, float dropout, const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "attention_forward");
    check_attention_keep(keep, dropout, "attention_forward");
    check_attention_key(key, dropout, S, "attention_forward");
    if (B == 0) return;
    activate();
    const HeadLayout a(B, S, H, D);
    float* dropped = dropout > 0.0f ? workspace<float>(a.bss) : nullptr;
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      float* p = probs + h * a.ss;
      // scores = q k^T / sqrt(D), into head h of probs
      gemm_strided_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k,
                           a.ld_qkv, a.qkv_batch, 0.0f, p, S, H * a.ss, B);
      cuda::attention_softmax_forward(stream_, probs, keep, dropped, mask, B, H, S, h, dropout, key);
      // context[b, :, h, :] = attend v
      const float* attend = dropout > 0.0f ? dropped : p;
      const long long attend_batch = dropout > 0.0f ? a.ss : H * a.ss;
      gemm_strided_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, attend, S, attend_batch, v, a.ld_qkv,
                           a.qkv_batch, 0.0f, context + a.head(h), a.ld_ctx, a.ctx_batch, B);
    }
  }
  void attention_backward(float* dqkv, float* scratch, const float* dcontext, const float* qkv, const float* probs,
                          const uint8_t* keep, const int32_t* mask, int B, int S, int H, int D,
                          float dropout) override {
    check_attention_shape(B, S, H, D, dropout, "attention_backward");
    check_attention_keep(keep, dropout, "attention_backward");
    (void)mask;  // masked keys have probability 0, so their score gradients vanish through probs alone
    if (B == 0) return;
    activate();
    const HeadLayout a(B, S, H, D);
    const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
    const uint8_t* k_mask = dropout > 0.0f ? keep : nullptr;
    float* dropped = dropout > 0.0f ? workspace<float>(a.bss) : nullptr;
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      const auto [dq, dk, dv] = a.qkv(dqkv, h);
      const float* p = probs + h * a.ss;
      const float* dctx = dcontext + a.head(h);
      float* ds = scratch + h * a.ss;
      const float* attend = p;
      long long attend_batch = H * a.ss;
      if (dropout > 0.0f) {
        cuda::attention_apply_keep(stream_, dropped, probs, keep, B, H, S, h, keep_scale);
        attend = dropped;
        attend_batch = a.ss;
      }
      // dv = attend^T dctx
      gemm_strided_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, attend, S, attend_batch, dctx, a.ld_ctx,
                           a.ctx_batch, 0.0f, dv, a.ld_qkv, a.qkv_batch, B);
      // d(attend) = dctx v^T
      gemm_strided_batched(Transpose::kNo, Transpose::kYes, S, S, D, 1.0f, dctx, a.ld_ctx, a.ctx_batch, v, a.ld_qkv,
                           a.qkv_batch, 0.0f, ds, S, H * a.ss, B);
      // Through dropout, then softmax.
      cuda::attention_softmax_backward(stream_, scratch, probs, k_mask, B, H, S, h, keep_scale, a.score_scale);
      // dq = ds k; dk = ds^T q
      gemm_strided_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, ds, S, H * a.ss, k, a.ld_qkv, a.qkv_batch,
                           0.0f, dq, a.ld_qkv, a.qkv_batch, B);
      gemm_strided_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, ds, S, H * a.ss, q, a.ld_qkv, a.qkv_batch,
                           0.0f, dk, a.ld_qkv, a.qkv_batch, B);
    }
  }

  // ---- fused attention ----
  // Our kernels serve every valid shape: per head, the scores of all B examples go into a [B,S,S] slice of
  // the workspace (the only quadratic memory, shared by every layer), the row kernels of
  // attention_fused.cu turn them into probabilities (and stats), and the dropout keep bits are drawn
  // again from the key, exactly attention_forward's. In the bf16/fp16 modes cuDNN SDPA takes the calls
  // it supports instead (dropout 0; sdpa_cudnn.h); it cannot express packed masks and flags them (the
  // next wait throws), as choosing per call would need the device mask on the host.
  bool fused_attention_supported(int B, int S, int H, int D, float dropout) const override {
    return B >= 0 && S > 0 && H > 0 && D > 0 && dropout >= 0.0f && dropout < 1.0f;
  }
  void fused_attention_forward(float* context, float* stats, const float* qkv, const int32_t* mask, int B, int S, int H,
                               int D, float dropout, const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "fused_attention_forward");
    check_attention_key(key, dropout, S, "fused_attention_forward");
    if (B == 0) return;
    activate();
    if (cuda::CudnnSdpa* sdpa = sdpa_for(B, S, H, D, dropout)) {
      sdpa->forward(context, stats, qkv, mask, B, S, H, D, dropout, key);
      return;
    }
    const HeadLayout a(B, S, H, D);
    float* p = workspace<float>(a.bss);  // head h's [B,S,S]
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      gemm_strided_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k,
                           a.ld_qkv, a.qkv_batch, 0.0f, p, S, a.ss, B);
      cuda::fused_attention_softmax_forward(stream_, p, stats, mask, B, H, S, h, dropout, key);
      gemm_strided_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, p, S, a.ss, v, a.ld_qkv, a.qkv_batch, 0.0f,
                           context + a.head(h), a.ld_ctx, a.ctx_batch, B);
    }
  }
  void fused_attention_backward(float* dqkv, const float* dcontext, const float* qkv, const float* context,
                                const float* stats, const int32_t* mask, int B, int S, int H, int D, float dropout,
                                const DropoutKey& key) override {
    check_attention_shape(B, S, H, D, dropout, "fused_attention_backward");
    check_attention_key(key, dropout, S, "fused_attention_backward");
    if (B == 0) return;
    activate();
    if (cuda::CudnnSdpa* sdpa = sdpa_for(B, S, H, D, dropout)) {
      sdpa->backward(dqkv, dcontext, qkv, context, stats, mask, B, S, H, D, dropout, key);
      return;
    }
    const HeadLayout a(B, S, H, D);
    // Head h's probabilities, and its dropped probabilities then d(scores): two [B,S,S] slices.
    float* p = workspace<float>(2 * a.bss);
    float* ds = p + a.bss;
    for (int h = 0; h < H; ++h) {
      const auto [q, k, v] = a.qkv(qkv, h);
      const auto [dq, dk, dv] = a.qkv(dqkv, h);
      const float* dctx = dcontext + a.head(h);
      gemm_strided_batched(Transpose::kNo, Transpose::kYes, S, S, D, a.score_scale, q, a.ld_qkv, a.qkv_batch, k,
                           a.ld_qkv, a.qkv_batch, 0.0f, p, S, a.ss, B);
      cuda::fused_attention_recompute(stream_, p, dropout > 0.0f ? ds : nullptr, stats, mask, B, H, S, h, dropout, key);
      // dv = attend^T dctx
      const float* attend = dropout > 0.0f ? ds : p;
      gemm_strided_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, attend, S, a.ss, dctx, a.ld_ctx, a.ctx_batch,
                           0.0f, dv, a.ld_qkv, a.qkv_batch, B);
      // d(attend) = dctx v^T, then through dropout and softmax.
      gemm_strided_batched(Transpose::kNo, Transpose::kYes, S, S, D, 1.0f, dctx, a.ld_ctx, a.ctx_batch, v, a.ld_qkv,
                           a.qkv_batch, 0.0f, ds, S, a.ss, B);
      cuda::fused_attention_softmax_backward(stream_, ds, p, B, H, S, h, dropout, key, a.score_scale);
      // dq = ds k; dk = ds^T q
      gemm_strided_batched(Transpose::kNo, Transpose::kNo, S, D, S, 1.0f, ds, S, a.ss, k, a.ld_qkv, a.qkv_batch, 0.0f,
                           dq, a.ld_qkv, a.qkv_batch, B);
      gemm_strided_batched(Transpose::kYes, Transpose::kNo, S, D, S, 1.0f, ds, S, a.ss, q, a.ld_qkv, a.qkv_batch, 0.0f,
                           dk, a.ld_qkv, a.qkv_batch, B);
    }
  }

  // ---- losses and sampling ----
  void softmax_cross_entropy(float* loss, float* dlogits, int32_t* argmax, const float* logits, const int32_t* labels,
                             const float* grad_scale, int rows, int V) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "softmax_cross_entropy: bad shape rows=", rows, " V=", V);
    activate();
    cuda::softmax_cross_entropy(stream_, loss, dlogits, argmax, logits, labels, grad_scale, rows, V);
  }
  void log_softmax(float* y, const float* x, int rows, int V) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "log_softmax: bad shape rows=", rows, " V=", V);
    activate();
    cuda::log_softmax(stream_, y, x, rows, V);
  }
  void sigmoid_cross_entropy(float* loss, float* dlogit, const float* logit, const int32_t* label,
                             const float* grad_scale, size_t n) override {
    activate();
    cuda::sigmoid_cross_entropy(stream_, loss, dlogit, logit, label, grad_scale, n);
  }
  void gumbel_sample(int32_t* samples, const float* logits, const int32_t* disallow, int rows, int V, float temperature,
                     uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) override {
    ELECTRA_CHECK(rows >= 0 && V > 0, "gumbel_sample: bad shape rows=", rows, " V=", V);
    ELECTRA_CHECK(rows_per_example > 0, "gumbel_sample: rows_per_example must be positive");
    ELECTRA_CHECK(temperature > 0.0f, "gumbel_sample: temperature ", temperature, " must be positive");
    activate();
    cuda::gumbel_sample(stream_, samples, logits, disallow, rows, V, temperature, seed, step, first_example,
                        rows_per_example);
  }

  void replace_masked_tokens(int32_t* corrupted, int32_t* disc_label, const int32_t* original_ids,
                             const int32_t* input_mask, const int32_t* positions, const float* weights,
                             const int32_t* samples, int B, int S, int P) override {
    ELECTRA_CHECK(B >= 0 && S > 0 && P >= 0, "replace_masked_tokens: bad shape B=", B, " S=", S, " P=", P);
    activate();
    cuda::replace_masked_tokens(stream_, corrupted, disc_label, original_ids, input_mask, positions, weights, samples,
                                B, S, P);
  }

  // ---- reductions and optimizer ----
  double sum_squares(const float* x, size_t n) override {
    activate();
    // [result, partials...] in the workspace.
    double* ws = workspace<double>(1 + cuda::sum_squares_partials(n));
    cuda::sum_squares(stream_, ws, ws + 1, x, n);
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(host_double_, ws, sizeof(double), cudaMemcpyDeviceToHost, stream_.stream));
    wait();
    return *host_double_;
  }
  void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, long long t, float grad_scale, bool bias_correction) override {
    ELECTRA_CHECK(t >= 1, "adamw_step: step ", t, " must be >= 1");
    activate();
    cuda::adamw_step(stream_, params, grads, m, v, n,
                     cuda::math::adam_params(lr, beta1, beta2, eps, weight_decay, t, grad_scale, bias_correction));
  }

  // ---- beyond Backend<float> ----
  void to_host(void* host, const void* src, size_t bytes) {
    activate();
    if (bytes != 0) ELECTRA_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_.stream));
    wait();
  }
  void from_host(void* dst, const void* host, size_t bytes) {
    if (bytes == 0) return;
    activate();
    // From pageable memory the copy is staged before the call returns, so `host` may be reused at once.
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_.stream));
  }

 private:
  void activate() {
    int current = -1;
    ELECTRA_CUDA_CHECK(cudaGetDevice(&current));
    if (current != device_) ELECTRA_CUDA_CHECK(cudaSetDevice(device_));
  }

  // The one cudaMalloc behind every allocation: options.arena_bytes, else memory_fraction of what is free
  // now (after the stream, the error word and the libraries' handles took theirs). Processes that share
  // the GPU and start together all see the same free memory; when the fraction no longer fits, the free
  // memory is read again and the request halved, a few times, before giving up.
  void create_arena(const CudaBackendOptions& options) {
    const bool by_fraction = options.arena_bytes == 0;
    ELECTRA_CHECK(!by_fraction || (options.memory_fraction > 0.0 && options.memory_fraction <= 1.0),
                  "CUDA backend: memory fraction ", options.memory_fraction, " outside (0, 1] (",
                  options.arena_size_hint, ")");
    constexpr int kAttempts = 4;
    size_t bytes = 0, free_bytes = 0, total_bytes = 0;
    cudaError_t error = cudaSuccess;
    for (int attempt = 0; attempt < (by_fraction ? kAttempts : 1); ++attempt) {
      ELECTRA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
      bytes = by_fraction ? static_cast<size_t>(static_cast<double>(free_bytes) * options.memory_fraction /
                                                static_cast<double>(1 << attempt))
                          : options.arena_bytes;
      bytes = bytes / cuda::Arena::kAlignment * cuda::Arena::kAlignment;
      ELECTRA_CHECK(bytes > 0, "CUDA backend: device memory arena of 0 bytes on device ", device_, " (",
                    free_bytes >> 20, " MiB free; ", options.arena_size_hint, ")");
      error = cudaMalloc(&arena_memory_, bytes);
      if (error == cudaSuccess) break;
      cudaGetLastError();  // clear it: out of memory is not sticky
      arena_memory_ = nullptr;
    }
    if (error != cudaSuccess) {
      fail("CUDA error: cudaMalloc of the device memory arena (", cuda::format_bytes(bytes), ") on device ", device_,
           " (", gpu_name_, ") failed: ", cudaGetErrorName(error), " (", free_bytes >> 20, " MiB free of ",
           total_bytes >> 20, " MiB; set ", options.arena_size_hint, ")");
    }
    arena_ = std::make_unique<cuda::Arena>(reinterpret_cast<uintptr_t>(arena_memory_), bytes, options.arena_size_hint);
  }

  void* raw_allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    return reinterpret_cast<void*>(arena_->allocate(bytes));
  }
  // Never throws (called from destructors): a bad free is logged. Work still queued (on this stream or one
  // ordered after it) may read p: wait for the stream before the block can be handed out again.
  void raw_free(void* p) {
    if (p == nullptr) return;
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_.stream);
    try {
      arena_->deallocate(reinterpret_cast<uintptr_t>(p));
    } catch (const std::exception& e) {
      ELECTRA_LOG(error) << "cuda backend deallocate: " << e.what();
    }
  }

  void device_copy(void* dst, const void* src, size_t bytes) {
    if (bytes == 0 || dst == src) return;
    activate();
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_.stream));
  }

  void check_activation(Activation act, const char* op) {
    if (act != Activation::kNone && act != Activation::kGelu && act != Activation::kRelu && act != Activation::kTanh) {
      fail(op, ": unknown activation");
    }
  }

  // cuDNN SDPA when the precision mode is bf16/fp16 and it serves this call, else null (our kernels).
  // Forward and backward ask with the same arguments and get the same answer (CudnnSdpa caches it).
  cuda::CudnnSdpa* sdpa_for(int B, int S, int H, int D, float dropout) {
    if (precision_ != CudaPrecision::kBf16 && precision_ != CudaPrecision::kFp16) return nullptr;
    if (!sdpa_ && !sdpa_unavailable_) {
      // A cuDNN that cannot start here (sub-libraries, versions) serves nothing: our kernels take every call.
      try {
        sdpa_ = std::make_unique<cuda::CudnnSdpa>(stream_.stream, precision_, stream_.errors);
      } catch (const Error& error) {
        sdpa_unavailable_ = true;
        ELECTRA_LOG(warning) << "cuDNN SDPA unavailable, attention uses the backend's own kernels: " << error.what();
      }
    }
    if (!sdpa_) return nullptr;
    return sdpa_->supported(B, S, H, D, dropout) ? sdpa_.get() : nullptr;
  }

  // Device scratch of at least n elements of E, valid until the next call that asks for workspace. Ops
  // run in stream order, so one op's scratch is free again once the next op is enqueued behind it.
  template <typename E>
  E* workspace(size_t n) {
    const size_t bytes = std::max<size_t>(n * sizeof(E), 256);
    if (bytes > workspace_bytes_) {
      const size_t grown = std::max(bytes, workspace_bytes_ + workspace_bytes_ / 2);
      ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_.stream));  // the old buffer may be in use
      if (workspace_ != nullptr) arena_->deallocate(reinterpret_cast<uintptr_t>(workspace_));
      workspace_ = nullptr;
      workspace_bytes_ = 0;
      // The headroom must not cost an out-of-memory that the exact size would avoid in a full arena.
      size_t size = grown;
      try {
        workspace_ = raw_allocate(grown);
      } catch (const Error&) {
        workspace_ = raw_allocate(bytes);
        size = bytes;
      }
      workspace_bytes_ = size;
    }
    return static_cast<E*>(workspace_);
  }
  // The LayerNorm backward's dgamma/dbeta column partials (two sets) in the workspace; null when neither
  // parameter gradient is wanted.
  float* layernorm_partials(const float* dgamma, const float* dbeta, int rows, int cols) {
    if (dgamma == nullptr && dbeta == nullptr) return nullptr;
    return workspace<float>(2 * cuda::column_partials(rows, cols));
  }

  // Waits for the stream, then reports what the kernels flagged since the last wait.
  void wait() {
    ELECTRA_CUDA_CHECK(
        cudaMemcpyAsync(host_errors_, stream_.errors, sizeof(unsigned), cudaMemcpyDeviceToHost, stream_.stream));
    ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_.stream));
    const unsigned errors = *host_errors_;
    if (errors == 0) return;
    *host_errors_ = 0;
    ELECTRA_CUDA_CHECK(cudaMemsetAsync(stream_.errors, 0, sizeof(unsigned), stream_.stream));
    std::string what;
    if (errors & cuda::kErrorNegativeId) what += " a negative embedding id, type id or position id;";
    if (errors & cuda::kErrorPosition) what += " a gather/scatter position outside [0, S);";
    if (errors & cuda::kErrorLabel) what += " a softmax_cross_entropy label outside [0, V);";
    if (errors & cuda::kErrorAttentionMask) {
      what +=
          " an attention mask row that is not right padding (ones, then zeros, at least one 1), which cuDNN"
          " SDPA cannot express;";
    }
    if (errors & cuda::kErrorPackedMask) {
      what +=
          " a packed attention mask row (several examples in one row: values 1, 2, ...) in fused attention served by"
          " cuDNN SDPA, whose sequence lengths cannot express block-diagonal attention: set train.attention ="
          " materialized (the backend's own kernels) to train on packed rows in the bf16/fp16 modes;";
    }
    fail("cuda backend: an op since the last synchronisation got invalid input:", what,
         " those elements were skipped and the results are wrong (the CPU backend rejects such input up front)");
  }

  int device_;
  CudaPrecision precision_;
  std::string gpu_name_;
  cuda::Stream stream_;
  cublasHandle_t cublas_ = nullptr;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  std::unique_ptr<cuda::LtMatmul> lt_;  // linear layers: cuBLASLt with the bias epilogue
  unsigned* host_errors_ = nullptr;     // pinned
  double* host_double_ = nullptr;       // pinned
  void* arena_memory_ = nullptr;        // the arena's cudaMalloc
  std::unique_ptr<cuda::Arena> arena_;
  void* workspace_ = nullptr;  // an arena block
  size_t workspace_bytes_ = 0;
  std::unique_ptr<cuda::CudnnSdpa> sdpa_;  // bf16/fp16 modes: created by the first fused attention call
  bool sdpa_unavailable_ = false;          // creating it failed once: not tried again
};

}  // namespace electra::cuda
