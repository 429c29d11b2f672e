// cuBLASLt GEMMs for the CUDA backend's linear layers: fp32 storage, the backend's compute type (fp32,
// TF32, bf16 or fp16 tensor cores with fp32 accumulation), an optional bias fused as the BIAS epilogue;
// and, for the bf16 storage backend, bf16 A/B with bf16 or fp32 C/D (LtTypes). Internal to lib/backend/cuda.
//
// GELU is deliberately NOT fused: cuBLASLt's GELU epilogues compute the tanh approximation, and ELECTRA
// (google-research/electra, Hugging Face "gelu") uses the exact erf GELU; the activation stays our kernel.
//
// Per shape (types, operations, sizes, leading dimensions, bias or not, pointer alignments) the matmul
// descriptor, the three layouts and the heuristic's algorithm are made once and cached: the same shape
// always runs the same algorithm, so results are reproducible from run to run. When cuBLASLt offers no
// algorithm for a shape, or its first launch reports CUBLAS_STATUS_NOT_SUPPORTED, matmul() returns false
// and the caller uses its plain path (remembered per shape).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>

namespace electra::cuda {

// Alignment in bytes that cuBLASLt may assume for a pointer: its largest power-of-two divisor, at most
// 256 (cuBLASLt's default assumption, which our views into flat buffers do not always meet).
uint32_t pointer_alignment(const void* p);

// Storage and compute types of one matmul. cuBLASLt's bias vector has D's type (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE
// is set to cd). The bf16 storage backend uses {CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F} (outputs and dx)
// and {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F} (dW accumulated in fp32), both in cuBLASLt's table of
// supported type combinations with a CUDA_R_32F scale type.
struct LtTypes {
  cudaDataType_t ab = CUDA_R_32F;  // A and B
  cudaDataType_t cd = CUDA_R_32F;  // C, D and the bias
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
};

class LtMatmul {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // at least; grows when an algorithm asks more

  // `device` is the GPU the caller keeps current; `stream` the backend's stream.
  LtMatmul(cublasComputeType_t compute, cudaStream_t stream, int device);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // Column-major D = alpha * op(A)[m,k] * op(B)[k,n] + beta * D (+ bias[m] added to every column when
  // bias is not null: the BIAS epilogue), all float32, D with leading dimension ldd. Enqueued on the
  // stream. Returns false, having done nothing, when cuBLASLt has no algorithm for this shape.
  bool matmul(cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n, int k, float alpha, const float* a,
              int lda, const float* b, int ldb, float beta, float* d, int ldd, const float* bias) {
    return matmul(LtTypes{CUDA_R_32F, CUDA_R_32F, compute_}, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, d,
                  ldd, bias);
  }
  // The same with the given types (pointers to elements of types.ab, types.cd); alpha and beta are float.
  bool matmul(const LtTypes& types, cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n, int k,
              float alpha, const void* a, int lda, const void* b, int ldb, float beta, void* d, int ldd,
              const void* bias);

  // Shapes planned so far, and how many of them have a cuBLASLt algorithm (for tests and logs).
  size_t planned_shapes() const { return plans_.size(); }
  size_t supported_shapes() const;

 private:
  // trans_a, trans_b, m, n, k, lda, ldb, ldd, has_bias, alignments of a, b, d, bias, types ab, cd, compute.
  using Key = std::array<int64_t, 16>;
  struct Plan {
    bool supported = false;
    bool launched = false;  // has run at least once
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    size_t workspace_bytes = 0;
  };
  Plan make_plan(const Key& key, const void* bias);
  void ensure_workspace(size_t bytes);

  cublasComputeType_t compute_;
  cudaStream_t stream_;
  int device_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace electra::cuda
