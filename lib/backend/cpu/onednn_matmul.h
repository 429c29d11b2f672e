// bf16 matrix products on the CPU through oneDNN's matmul primitive (brgemm kernels on AMX and
// AVX512_BF16): the GEMMs, linear layers and attention products of the fast CPU bf16 backend
// (onednn_bf16_backend.cpp). Operands are bfloat16, products accumulate in float, C is bfloat16 or float.
//
// Primitives are made once per problem (shape, layout, types, alpha, beta, bias, thread count) and kept
// in a per-thread cache, with their memory objects and a per-thread scratchpad, so a step after the first
// creates no oneDNN objects and no buffers: only the data pointers change. The cache is per host thread
// because the model's parallel chunks call the backend from several OpenMP threads at once; oneDNN fixes
// a primitive's work split for omp_get_max_threads() threads at creation, so the thread count in effect
// at the call is part of the key. Inside an active OpenMP parallel region oneDNN runs on the calling
// thread alone, so there the primitive is made for one thread (the bits of a one-thread call outside).
//
// Which kernel (oneDNN 2.6): dense operands (lda, ldb, ldc equal to the row width; batches packed) get
// brgemm ("brg:avx512_core_amx_bf16" with AMX, "brg:avx512_core_bf16" on Zen 4); batched products with
// wider leading dimensions (attention's heads read in place from qkv [B,S,3,H,D]) get "gemm:jit", which
// never uses AMX tiles: 34-66 against 180-420 GFLOP/s for brgemm on ELECTRA-small's heads on a Xeon with
// AMX. So the fast backend copies attention's heads dense first.
//
// Determinism: for one problem and one thread count the bits are the same every run. Across thread counts
// they are not promised: where oneDNN splits K over threads (brgemm, when M x N has too few blocks for
// the threads: dW 256x256 with K 4096 at 8 threads, 64x64 with K 8192 at 2) or gemm:jit changes its
// partition, sums are added in another order (tests/backend/onednn_matmul_test.cpp prints a survey). A call
// from inside an OpenMP parallel region runs on its thread alone, so the model's parallel chunks give the
// same bits for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/bfloat16.h"

namespace electra::cpu {

enum class MatmulOutput { kBf16, kF32 };

// C = alpha * op(A) op(B) + bias + beta * C for each (outer, inner) of batch_outer x batch_inner
// products, summed in float and rounded once to C's type; operand X of product (i, j) starts at
// X + i * x_stride_outer + j * x_stride_inner (elements). op(A) is [m, k], op(B) [k, n], C [m, n],
// row-major with leading dimensions lda, ldb, ldc (of A and B as stored, i.e. before op), each at least
// max(1, row width) as in BLAS. bias (when has_bias) is bfloat16 [n], added to every row of every product;
// alpha must be 1 when has_bias (checked: oneDNN versions differ in whether the scale applies to the bias).
// With beta == 0, C is not read (it may hold anything, NaN included); elements of C outside the products
// (gaps between rows when ldc > n) are never written. Batch strides are >= 0; a zero stride of A or B
// shares that operand across the batch dimension (C's must be > 0 where the batch count is > 1).
// m == 0 or n == 0 does nothing; k == 0 gives C = bias + beta * C.
struct MatmulProblem {
  Transpose trans_a = Transpose::kNo;
  Transpose trans_b = Transpose::kNo;
  int m = 0, n = 0, k = 0;
  int lda = 0, ldb = 0, ldc = 0;
  int batch_outer = 1, batch_inner = 1;
  long long stride_a_outer = 0, stride_a_inner = 0;
  long long stride_b_outer = 0, stride_b_inner = 0;
  long long stride_c_outer = 0, stride_c_inner = 0;
  MatmulOutput output = MatmulOutput::kBf16;
  bool has_bias = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};

// Runs one problem (c is bfloat16* or float* per p.output; bias null exactly when !p.has_bias). Fails with
// electra::Error naming the problem when the shape is invalid or oneDNN has no implementation for it (with
// oneDNN's status; below avx512_core, e.g. ONEDNN_MAX_CPU_ISA=AVX2, it has no bf16 matmul at all).
// Fails when this build has no oneDNN.
void onednn_matmul(const MatmulProblem& p, const bfloat16* a, const bfloat16* b, const bfloat16* bias, void* c);

// The implementation oneDNN picked for a problem at the current thread count (for example
// "brg:avx512_core_amx" or "gemm:jit"): for tests, benchmarks and the start-up message. Makes and caches
// the primitive if the thread has none for it yet. m, n and k must be > 0.
std::string onednn_matmul_implementation(const MatmulProblem& p);

// Primitives cached by the calling thread (tests check that a repeated step creates none).
size_t onednn_matmul_cached_primitives();
// The calling thread's cached primitives, one line each: oneDNN's implementation and the src, weights and dst
// dimensions ("brg:avx512_core_amx_bf16: 16x4x128x64 16x4x64x128 16x4x128x128"), sorted. For tests that check
// which kernels a backend's products run on.
std::vector<std::string> onednn_matmul_cached_implementations();

// What this machine offers bf16 matrix products.
struct CpuBf16Support {
  bool onednn_built = false;    // this build has oneDNN (ELECTRA_HAVE_ONEDNN)
  std::string onednn_isa;       // oneDNN's effective ISA ("avx512_core_amx", "avx512_core_bf16", "avx2", ...),
                                // after ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA; "" without oneDNN
  bool native = false;          // bf16 dot-product instructions in effect: AVX512_BF16 or AMX (avx512_core alone
                                // emulates them, far slower than fp32 OpenBLAS; below it there are none)
  bool amx = false;             // AMX tiles in effect
  std::string cpu_flags;        // the bf16-related flags the CPU reports, e.g. "avx512_bf16 amx_bf16 amx_tile"
                                // ("none" when it has none of them)
  std::string summary() const;  // one line for the start-up log, saying whether products are native
};
CpuBf16Support cpu_bf16_support();

}  // namespace electra::cpu
