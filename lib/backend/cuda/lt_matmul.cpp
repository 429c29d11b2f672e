#include "lib/backend/cuda/lt_matmul.h"

#include <algorithm>

#include "lib/backend/cuda/cuda_check.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

// A failed cuBLASLt call throws electra::Error naming the call, the file and line, and the status.
#define ELECTRA_CUBLASLT_CHECK(call)                                                                                \
  do {                                                                                                              \
    const cublasStatus_t electra_lt_status_ = (call);                                                               \
    if (electra_lt_status_ != CUBLAS_STATUS_SUCCESS) {                                                              \
      ::electra::fail("cuBLASLt error: ", #call, " failed at ", __FILE__, ":", __LINE__, ": ",                      \
                      cublasLtGetStatusName(electra_lt_status_), " (", cublasLtGetStatusString(electra_lt_status_), \
                      ")");                                                                                         \
    }                                                                                                               \
  } while (0)

namespace electra::cuda {

uint32_t pointer_alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

LtMatmul::LtMatmul(cublasComputeType_t compute, cudaStream_t stream, int device)
    : compute_(compute), stream_(stream), device_(device) {
  ELECTRA_CUBLASLT_CHECK(cublasLtCreate(&handle_));
  // Up front, before the backend sizes its memory arena from what is free.
  try {
    ensure_workspace(kWorkspaceBytes);
  } catch (...) {
    cublasLtDestroy(handle_);  // no destructor runs after a throwing constructor
    throw;
  }
}

LtMatmul::~LtMatmul() {
  // No throwing here (called from the backend's destructor, which has waited for the stream).
  cudaSetDevice(device_);
  for (auto& [key, plan] : plans_) {
    if (plan.a != nullptr) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b != nullptr) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.d != nullptr) cublasLtMatrixLayoutDestroy(plan.d);
    if (plan.desc != nullptr) cublasLtMatmulDescDestroy(plan.desc);
  }
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

size_t LtMatmul::supported_shapes() const {
  return static_cast<size_t>(
      std::count_if(plans_.begin(), plans_.end(), [](const auto& e) { return e.second.supported; }));
}

void LtMatmul::ensure_workspace(size_t bytes) {
  bytes = std::max(bytes, kWorkspaceBytes);
  if (bytes <= workspace_bytes_) return;
  // Grow only: the old buffer may still be read by enqueued matmuls.
  ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (workspace_ != nullptr) ELECTRA_CUDA_CHECK(cudaFree(workspace_));
  workspace_ = nullptr;
  workspace_bytes_ = 0;
  const cudaError_t error = cudaMalloc(&workspace_, bytes);
  if (error != cudaSuccess) {
    cudaGetLastError();  // out of memory is not sticky
    workspace_ = nullptr;
    fail("CUDA error: cudaMalloc of the ", bytes, "-byte cuBLASLt workspace on device ", device_,
         " failed: ", cudaGetErrorName(error));
  }
  workspace_bytes_ = bytes;
}

LtMatmul::Plan LtMatmul::make_plan(const Key& key, const void* bias) {
  const int32_t trans_a = static_cast<int32_t>(key[0]), trans_b = static_cast<int32_t>(key[1]);
  const int64_t m = key[2], n = key[3], k = key[4], lda = key[5], ldb = key[6], ldd = key[7];
  const auto ab_type = static_cast<cudaDataType_t>(key[13]), cd_type = static_cast<cudaDataType_t>(key[14]);
  const auto compute = static_cast<cublasComputeType_t>(key[15]);
  Plan plan;
  ELECTRA_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  ELECTRA_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  ELECTRA_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  if (bias != nullptr) {
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = cd_type;  // cuBLASLt: the bias has D's type
    // The heuristic reads the pointer's alignment from here; matmul() sets each call's own pointer.
    const void* bias_pointer = bias;
    ELECTRA_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    ELECTRA_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_pointer,
                                                          sizeof(bias_pointer)));
  }
  // Layouts describe the stored matrices: op(A) [m,k] is A [k,m] when transposed.
  const bool a_transposed = trans_a != CUBLAS_OP_N, b_transposed = trans_b != CUBLAS_OP_N;
  ELECTRA_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.a, ab_type, a_transposed ? k : m, a_transposed ? m : k, lda));
  ELECTRA_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.b, ab_type, b_transposed ? n : k, b_transposed ? k : n, ldb));
  ELECTRA_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan.d, cd_type, m, n, ldd));

  cublasLtMatmulPreference_t preference = nullptr;
  ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const uint64_t max_workspace = kWorkspaceBytes;
  const uint32_t align_a = static_cast<uint32_t>(key[9]), align_b = static_cast<uint32_t>(key[10]),
                 align_d = static_cast<uint32_t>(key[11]);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  try {
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                &max_workspace, sizeof(max_workspace)));
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                &align_a, sizeof(align_a)));
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                &align_b, sizeof(align_b)));
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                &align_d, sizeof(align_d)));
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                &align_d, sizeof(align_d)));
    status = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.d, plan.d, preference, 1, &result,
                                            &found);
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(preference);
    throw;
  }
  ELECTRA_CUBLASLT_CHECK(cublasLtMatmulPreferenceDestroy(preference));
  if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
    fail("cuBLASLt error: cublasLtMatmulAlgoGetHeuristic failed for m=", m, " n=", n, " k=", k, ": ",
         cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status), ")");
  }
  plan.supported = status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (plan.supported) {
    plan.algo = result.algo;
    plan.workspace_bytes = result.workspaceSize;
  }
  return plan;
}

bool LtMatmul::matmul(const LtTypes& types, cublasOperation_t trans_a, cublasOperation_t trans_b, int m, int n, int k,
                      float alpha, const void* a, int lda, const void* b, int ldb, float beta, void* d, int ldd,
                      const void* bias) {
  // A bias view into the flat parameter buffer is often only 4-byte aligned; cuBLASLt's bias epilogue is
  // documented only for aligned vectors and older releases fault on misaligned ones (an error that would
  // poison the context), so those take the caller's plain path (GEMM + bias kernel).
  if (bias != nullptr && pointer_alignment(bias) < 16) return false;
  const Key key = {trans_a,
                   trans_b,
                   m,
                   n,
                   k,
                   lda,
                   ldb,
                   ldd,
                   bias != nullptr,
                   pointer_alignment(a),
                   pointer_alignment(b),
                   pointer_alignment(d),
                   bias != nullptr ? pointer_alignment(bias) : 0,
                   types.ab,
                   types.cd,
                   types.compute};
  auto it = plans_.find(key);
  // (A plan that fails half-made leaks its descriptors: the error ends the run anyway.)
  if (it == plans_.end()) it = plans_.emplace(key, make_plan(key, bias)).first;
  Plan& plan = it->second;
  if (!plan.supported) return false;
  if (bias != nullptr) {
    const void* bias_pointer = bias;
    ELECTRA_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_pointer,
                                                          sizeof(bias_pointer)));
  }
  ensure_workspace(plan.workspace_bytes);
  const cublasStatus_t status = cublasLtMatmul(handle_, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, d, plan.d, d,
                                               plan.d, &plan.algo, workspace_, workspace_bytes_, stream_);
  // An algorithm the heuristic offered but the first launch refuses (nothing was enqueued): use the
  // caller's plain path for this shape from now on rather than failing the run.
  if (!plan.launched && status == CUBLAS_STATUS_NOT_SUPPORTED) {
    ELECTRA_LOG(warning) << "cuBLASLt refused its own algorithm for m=" << m << " n=" << n << " k=" << k
                         << (bias != nullptr ? " with the bias epilogue" : "") << "; using cuBLAS for this shape";
    plan.supported = false;
    return false;
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail("cuBLASLt error: cublasLtMatmul failed for m=", m, " n=", n, " k=", k,
         bias != nullptr ? " (bias epilogue)" : "", ": ", cublasLtGetStatusName(status), " (",
         cublasLtGetStatusString(status), ")");
  }
  plan.launched = true;
  return true;
}

}  // namespace electra::cuda
