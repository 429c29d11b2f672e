// LayerNorm over the last dimension (PyTorch semantics: biased variance, eps inside the square root).
#include <algorithm>
#include <cmath>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {
// Rows per partial sum of dgamma/dbeta; fixed so the summation order never depends on threads.
constexpr int kRowBlock = 32;

// Rows [r0, r1) of the forward.
template <typename T>
ELECTRA_CPU_CLONES void layernorm_rows(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int r0,
                                       int r1, int cols, T eps) {
  for (int r = r0; r < r1; ++r) {
    const T* xr = x + static_cast<size_t>(r) * cols;
    T* yr = y + static_cast<size_t>(r) * cols;
    // Two passes (mean, then centred squares): no cancellation when |mean| >> std.
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < cols; ++c) sum += xr[c];
    const T mu = sum / T(cols);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < cols; ++c) {
      const T d = xr[c] - mu;
      sq += d * d;
    }
    const T rs = T(1) / std::sqrt(sq / T(cols) + eps);
    if (mean != nullptr) mean[r] = mu;
    if (rstd != nullptr) rstd[r] = rs;
    if (beta != nullptr) {
#pragma omp simd
      for (int c = 0; c < cols; ++c) yr[c] = (xr[c] - mu) * rs * gamma[c] + beta[c];
    } else {
#pragma omp simd
      for (int c = 0; c < cols; ++c) yr[c] = (xr[c] - mu) * rs * gamma[c];
    }
  }
}

// Rows [r0, r1) of the backward: dx (when non-null), and this block's dgamma/dbeta partial sums
// (when pg/pb are non-null; zeroed here).
template <typename T>
ELECTRA_CPU_CLONES void layernorm_backward_rows(T* dx, T* pg, T* pb, const T* dy, const T* x, const T* mean,
                                                const T* rstd, const T* gamma, int r0, int r1, int cols) {
  if (pg != nullptr) std::fill(pg, pg + cols, T(0));
  if (pb != nullptr) std::fill(pb, pb + cols, T(0));
  for (int r = r0; r < r1; ++r) {
    const T* xr = x + static_cast<size_t>(r) * cols;
    const T* dyr = dy + static_cast<size_t>(r) * cols;
    const T mu = mean[r], rs = rstd[r];
    if (pg != nullptr) {
#pragma omp simd
      for (int c = 0; c < cols; ++c) {
        pg[c] += dyr[c] * (xr[c] - mu) * rs;
        pb[c] += dyr[c];
      }
    }
    if (dx != nullptr) {
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
      T sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int c = 0; c < cols; ++c) {
        const T g = dyr[c] * gamma[c];
        sum_g += g;
        sum_gx += g * (xr[c] - mu) * rs;
      }
      const T mean_g = sum_g / T(cols), mean_gx = sum_gx / T(cols);
      T* dxr = dx + static_cast<size_t>(r) * cols;
#pragma omp simd
      for (int c = 0; c < cols; ++c) {
        const T xhat = (xr[c] - mu) * rs;
        dxr[c] = rs * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx);
      }
    }
  }
}

}  // namespace

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int rows, int cols, T eps) {
  ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_forward: bad shape rows=", rows, " cols=", cols);
  const int blocks = (rows + kRowBlock - 1) / kRowBlock;
  const bool parallel = static_cast<long long>(rows) * cols > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    layernorm_rows(y, mean, rstd, x, gamma, beta, blk * kRowBlock, std::min(rows, (blk + 1) * kRowBlock), cols, eps);
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean, const T* rstd,
                        const T* gamma, int rows, int cols) {
  ELECTRA_CHECK(rows >= 0 && cols > 0, "layernorm_backward: bad shape rows=", rows, " cols=", cols);
  const int blocks = (rows + kRowBlock - 1) / kRowBlock;
  const bool param_grads = dgamma != nullptr || dbeta != nullptr;
  // partial[blk] = [dgamma part (cols), dbeta part (cols)]; taken by the calling thread, shared below.
  T* partial = param_grads
                   ? detail::thread_scratch<T, detail::kScratchLayerNorm>(static_cast<size_t>(blocks) * 2 * cols)
                   : nullptr;
  const bool parallel = static_cast<long long>(rows) * cols > 16384;

#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      T* pg = param_grads ? partial + static_cast<size_t>(blk) * 2 * cols : nullptr;
      layernorm_backward_rows(dx, pg, param_grads ? pg + cols : nullptr, dy, x, mean, rstd, gamma, blk * kRowBlock,
                              std::min(rows, (blk + 1) * kRowBlock), cols);
    }
    if (param_grads) {
      // Block partials added in block order for every column.
#pragma omp for schedule(static)
      for (int c = 0; c < cols; ++c) {
        T sg = 0, sb = 0;
        for (int blk = 0; blk < blocks; ++blk) {
          sg += partial[static_cast<size_t>(blk) * 2 * cols + c];
          sb += partial[static_cast<size_t>(blk) * 2 * cols + cols + c];
        }
        if (dgamma != nullptr) dgamma[c] += sg;
        if (dbeta != nullptr) dbeta[c] += sb;
      }
    }
  }
}

#define ELECTRA_INSTANTIATE(T)                                                               \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, T); \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int, int);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
