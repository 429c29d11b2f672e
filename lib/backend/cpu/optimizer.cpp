// Sum of squares (for the global gradient norm) and the AdamW update over flat buffers.
#include <algorithm>
#include <cmath>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {

template <typename T>
double sum_squares(const T* x, size_t n) {
  const size_t chunks = (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
  if (chunks == 0) return 0.0;
  // One partial per chunk (the calling thread's scratch), then a serial sum in chunk order: the
  // result does not depend on which thread summed which chunk.
  double* partial = detail::thread_scratch<double>(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kSumSquaresChunk, end = std::min(n, begin + kSumSquaresChunk);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = begin; i < end; ++i) {
      const double v = static_cast<double>(x[i]);
      s += v * v;
    }
    partial[c] = s;
  }
  double total = 0.0;
  for (size_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

template <typename T>
void adamw_step(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2, float eps,
                float weight_decay, long long t, float grad_scale, bool bias_correction) {
  ELECTRA_CHECK(t >= 1, "adamw_step: step ", t, " must be >= 1");
  // Bias corrections in double (beta^t for large t), applied as multipliers.
  const double bc1 = bias_correction ? 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)) : 1.0;
  const double bc2 = bias_correction ? 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)) : 1.0;
  const T inv_bc1 = static_cast<T>(1.0 / bc1), inv_bc2 = static_cast<T>(1.0 / bc2);
  const T b1 = beta1, b2 = beta2, one_minus_b1 = T(1) - T(beta1), one_minus_b2 = T(1) - T(beta2);
  const T step = lr, e = eps, wd = weight_decay, gs = grad_scale;
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (size_t i = 0; i < n; ++i) {
    const T g = grads[i] * gs;
    const T mi = b1 * m[i] + one_minus_b1 * g;
    const T vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const T m_hat = mi * inv_bc1, v_hat = vi * inv_bc2;
    params[i] -= step * (m_hat / (std::sqrt(v_hat) + e) + wd * params[i]);
  }
}

#define ELECTRA_INSTANTIATE(T)                               \
  template double sum_squares<T>(const T*, size_t);          \
  template void adamw_step<T>(T*, const T*, T*, T*, size_t, float, float, float, float, float, long long, float, bool);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
