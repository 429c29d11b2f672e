// GEMMs (OpenBLAS, row-major) and the linear layer built on them.
#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace detail {

void set_blas_single_threaded() { openblas_set_num_threads(1); }

BlasSingleThreaded::BlasSingleThreaded() : saved_(openblas_get_num_threads()) {
  if (saved_ != 1) openblas_set_num_threads(1);
}
BlasSingleThreaded::~BlasSingleThreaded() {
  if (saved_ != 1) openblas_set_num_threads(saved_);
}

}  // namespace detail

namespace {

CBLAS_TRANSPOSE to_cblas(Transpose t) { return t == Transpose::kYes ? CblasTrans : CblasNoTrans; }

void blas_gemm(Transpose ta, Transpose tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
               int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(Transpose ta, Transpose tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
               int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// OpenBLAS reports bad arguments by printing and returning; we want an exception naming the call.
void check_gemm_args(Transpose ta, Transpose tb, int m, int n, int k, int lda, int ldb, int ldc) {
  ELECTRA_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size m=", m, " n=", n, " k=", k);
  const int a_cols = ta == Transpose::kNo ? k : m;
  const int b_cols = tb == Transpose::kNo ? n : k;
  ELECTRA_CHECK(lda >= std::max(1, a_cols), "gemm: lda=", lda, " < ", a_cols);
  ELECTRA_CHECK(ldb >= std::max(1, b_cols), "gemm: ldb=", ldb, " < ", b_cols);
  ELECTRA_CHECK(ldc >= std::max(1, n), "gemm: ldc=", ldc, " < ", n);
}

// One product split over the OpenMP threads: C by rows (m >= n) or by columns, in pieces of whole
// 16-row/column units, each piece a single-threaded OpenBLAS call. Every element of C is still one
// K-long dot product computed by the same kernel, so the split does not change the result.
template <typename T>
void split_gemm(Transpose ta, Transpose tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
                T beta, T* c, int ldc, int threads) {
  constexpr int kUnit = 16;
  const bool by_rows = m >= n;
  const int extent = by_rows ? m : n;
  const int units = (extent + kUnit - 1) / kUnit;
  detail::BlasSingleThreaded single;
#pragma omp parallel num_threads(std::min(threads, units))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int e0 = units * t / nt * kUnit, e1 = std::min(extent, units * (t + 1) / nt * kUnit);
    if (e1 > e0) {
      if (by_rows) {
        const T* a_part = a + (ta == Transpose::kNo ? static_cast<size_t>(e0) * lda : static_cast<size_t>(e0));
        blas_gemm(ta, tb, e1 - e0, n, k, alpha, a_part, lda, b, ldb, beta, c + static_cast<size_t>(e0) * ldc, ldc);
      } else {
        const T* b_part = b + (tb == Transpose::kNo ? static_cast<size_t>(e0) : static_cast<size_t>(e0) * ldb);
        blas_gemm(ta, tb, m, e1 - e0, k, alpha, a, lda, b_part, ldb, beta, c + e0, ldc);
      }
    }
  }
}

}  // namespace

template <typename T>
void gemm(Transpose ta, Transpose tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
          T* c, int ldc) {
  check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  // OpenMP is the only thread pool: OpenBLAS's own threads would spin between calls and compete with
  // the OpenMP loops that run between GEMMs on the same cores.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = 2.0 * m * n * k;
  if (threads > 1 && flops >= 4.0e6) {
    split_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
  } else {
    detail::BlasSingleThreaded single;
    blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

template <typename T>
void gemm_strided_batched(Transpose ta, Transpose tb, int m, int n, int k, T alpha, const T* a, int lda,
                          long long stride_a, const T* b, int ldb, long long stride_b, T beta, T* c, int ldc,
                          long long stride_c, int batch) {
  check_gemm_args(ta, tb, m, n, k, lda, ldb, ldc);
  ELECTRA_CHECK(batch >= 0, "gemm_strided_batched: negative batch ", batch);
  if (m == 0 || n == 0 || batch == 0) return;
  // Many small products: one product per OpenMP thread at a time. Few large ones: each split over the
  // threads by gemm.
  const double flops = 2.0 * m * n * k;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads > 1 && batch >= threads && flops < 64.0e6) {
    detail::BlasSingleThreaded single;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; ++i) {
      blas_gemm(ta, tb, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c, ldc);
    }
  } else {
    for (int i = 0; i < batch; ++i) {
      gemm(ta, tb, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c, ldc);
    }
  }
}

template <typename T>
void column_sums_accumulate(T* dbias, const T* dy, int rows, int cols) {
  // Fixed column blocks; inside a block every column sums its rows in order, so the result does not
  // depend on how blocks are spread over threads.
  constexpr int kBlock = 64;
  const int blocks = (cols + kBlock - 1) / kBlock;
  const bool parallel = static_cast<long long>(rows) * cols > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kBlock, width = std::min(kBlock, cols - c0);
    T acc[kBlock] = {};
    for (int r = 0; r < rows; ++r) {
      const T* row = dy + static_cast<size_t>(r) * cols + c0;
#pragma omp simd
      for (int c = 0; c < width; ++c) acc[c] += row[c];
    }
    for (int c = 0; c < width; ++c) dbias[c0 + c] += acc[c];
  }
}

template <typename T>
void linear_forward(T* y, const T* x, const T* weight, const T* bias, int rows, int in, int out) {
  ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_forward: bad shape rows=", rows, " in=", in, " out=", out);
  if (rows == 0) return;
  T beta = T(0);
  if (bias != nullptr) {
    // Start from the bias so the GEMM adds onto it (one pass over y instead of two).
    const bool parallel = static_cast<long long>(rows) * out > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
    for (int r = 0; r < rows; ++r) {
      T* row = y + static_cast<size_t>(r) * out;
#pragma omp simd
      for (int c = 0; c < out; ++c) row[c] = bias[c];
    }
    beta = T(1);
  }
  // y[rows,out] = x[rows,in] * W[out,in]^T
  gemm(Transpose::kNo, Transpose::kYes, rows, out, in, T(1), x, in, weight, in, beta, y, out);
}

template <typename T>
void linear_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, int rows, int in, int out) {
  ELECTRA_CHECK(rows >= 0 && in > 0 && out > 0, "linear_backward: bad shape rows=", rows, " in=", in, " out=", out);
  if (rows == 0) return;
  // dx[rows,in] = dy[rows,out] * W[out,in]
  if (dx != nullptr) gemm(Transpose::kNo, Transpose::kNo, rows, in, out, T(1), dy, out, weight, in, T(0), dx, in);
  // dW[out,in] += dy^T[out,rows] * x[rows,in]
  if (dweight != nullptr) {
    gemm(Transpose::kYes, Transpose::kNo, out, in, rows, T(1), dy, out, x, in, T(1), dweight, in);
  }
  if (dbias != nullptr) column_sums_accumulate(dbias, dy, rows, out);
}

#define ELECTRA_INSTANTIATE(T)                                                                                      \
  template void gemm<T>(Transpose, Transpose, int, int, int, T, const T*, int, const T*, int, T, T*, int);          \
  template void gemm_strided_batched<T>(Transpose, Transpose, int, int, int, T, const T*, int, long long, const T*, \
                                        int, long long, T, T*, int, long long, int);                                \
  template void column_sums_accumulate<T>(T*, const T*, int, int);                                                  \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int, int, int);                                 \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
