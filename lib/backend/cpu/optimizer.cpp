// Sum of squares (for the global gradient norm) and the AdamW and LAMB updates over flat buffers.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

template <typename T>
ELECTRA_CPU_CLONES double sum_squares_chunk(const T* x, size_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    s += v * v;
  }
  return s;
}

struct AdamScalars {
  double lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, grad_scale, inv_bc1, inv_bc2;
};

template <typename T>
ELECTRA_CPU_CLONES void adamw_chunk(T* params, const T* grads, T* m, T* v, size_t n, const AdamScalars& a) {
  const T b1 = T(a.beta1), b2 = T(a.beta2), one_minus_b1 = T(a.one_minus_beta1), one_minus_b2 = T(a.one_minus_beta2);
  const T step = T(a.lr), e = T(a.eps), wd = T(a.weight_decay), gs = T(a.grad_scale);
  const T inv_bc1 = T(a.inv_bc1), inv_bc2 = T(a.inv_bc2);
#pragma omp simd
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

}  // namespace

template <typename T>
double sum_squares(const T* x, size_t n) {
  const size_t chunks = (n + kSumSquaresChunk - 1) / kSumSquaresChunk;
  if (chunks == 0) return 0.0;
  // One partial per chunk (the calling thread's scratch), then a serial sum in chunk order: the
  // result does not depend on which thread summed which chunk.
  double* partial = detail::thread_scratch<double, detail::kScratchSumSquares>(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kSumSquaresChunk, end = std::min(n, begin + kSumSquaresChunk);
    partial[c] = sum_squares_chunk(x + begin, end - begin);
  }
  double total = 0.0;
  for (size_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}

namespace {

constexpr size_t kAdamChunk = 16384;  // elements per parallel work unit

template <typename T>
AdamScalars adam_scalars(float lr, float beta1, float beta2, float eps, float weight_decay, long long t,
                         float grad_scale, bool bias_correction) {
  ELECTRA_CHECK(t >= 1, "adamw_step: step ", t, " must be >= 1");
  // Bias corrections in double (beta^t for large t), applied as multipliers.
  const double bc1 = bias_correction ? 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)) : 1.0;
  const double bc2 = bias_correction ? 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)) : 1.0;
  // The scalars are rounded to T exactly as a T-only formula would hold them (1 - beta in T).
  return AdamScalars{lr,
                     beta1,
                     beta2,
                     static_cast<double>(T(1) - T(beta1)),
                     static_cast<double>(T(1) - T(beta2)),
                     eps,
                     weight_decay,
                     grad_scale,
                     1.0 / bc1,
                     1.0 / bc2};
}

}  // namespace

template <typename T>
void adamw_step(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2, float eps,
                float weight_decay, long long t, float grad_scale, bool bias_correction) {
  const AdamScalars scalars = adam_scalars<T>(lr, beta1, beta2, eps, weight_decay, t, grad_scale, bias_correction);
  detail::parallel_chunks(n, kAdamChunk, 2 * kAdamChunk, [&](size_t b, size_t e) {
    adamw_chunk(params + b, grads + b, m + b, v + b, e - b, scalars);
  });
}

template <typename T>
void adamw_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::AdamWRun* runs, size_t num_runs,
                     float lr, float beta1, float beta2, float eps, long long t, float grad_scale,
                     bool bias_correction) {
  // Every run cut into pieces of at most kAdamChunk elements; one parallel loop over all pieces. The
  // update is elementwise, so how the pieces are spread over threads cannot change a bit.
  struct Piece {
    size_t begin, count, run;
  };
  std::vector<Piece> pieces;
  std::vector<AdamScalars> scalars(num_runs);
  size_t total = 0;
  for (size_t r = 0; r < num_runs; ++r) {
    scalars[r] = adam_scalars<T>(lr, beta1, beta2, eps, runs[r].weight_decay, t, grad_scale, bias_correction);
    for (size_t b = 0; b < runs[r].size; b += kAdamChunk) {
      pieces.push_back({runs[r].offset + b, std::min(kAdamChunk, runs[r].size - b), r});
    }
    total += runs[r].size;
  }
  const long long n = static_cast<long long>(pieces.size());
#pragma omp parallel for schedule(static) if (total > 2 * kAdamChunk)
  for (long long i = 0; i < n; ++i) {
    const Piece& p = pieces[i];
    adamw_chunk(params + p.begin, grads + p.begin, m + p.begin, v + p.begin, p.count, scalars[p.run]);
  }
}

namespace {

// LAMB's update direction u of one element from its new moments (m, v) and parameter p: the same expression
// in both passes of lamb_step_runs, so the pass that applies u recomputes the u whose norm was taken.
template <typename T>
inline T lamb_direction(T m, T v, T p, T inv_bc1, T inv_bc2, T eps, T wd) {
  return (m * inv_bc1) / (std::sqrt(v * inv_bc2) + eps) + wd * p;
}

// First pass over one piece: new moments, and the piece's sums of p^2 and u^2 in double.
template <typename T>
ELECTRA_CPU_CLONES void lamb_moments_chunk(const T* params, const T* grads, T* m, T* v, size_t n, const AdamScalars& a,
                                           double* p_squares, double* u_squares) {
  const T b1 = T(a.beta1), b2 = T(a.beta2), one_minus_b1 = T(a.one_minus_beta1), one_minus_b2 = T(a.one_minus_beta2);
  const T e = T(a.eps), wd = T(a.weight_decay), gs = T(a.grad_scale), inv_bc1 = T(a.inv_bc1), inv_bc2 = T(a.inv_bc2);
  double sp = 0.0, su = 0.0;
#pragma omp simd reduction(+ : sp, su)
  for (size_t i = 0; i < n; ++i) {
    const T g = grads[i] * gs;
    const T mi = b1 * m[i] + one_minus_b1 * g;
    const T vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const double p = static_cast<double>(params[i]);
    const double u = static_cast<double>(lamb_direction(mi, vi, params[i], inv_bc1, inv_bc2, e, wd));
    sp += p * p;
    su += u * u;
  }
  *p_squares = sp;
  *u_squares = su;
}

// Second pass over one piece: p -= step * u, step = lr * the run's trust ratio.
template <typename T>
ELECTRA_CPU_CLONES void lamb_apply_chunk(T* params, const T* m, const T* v, size_t n, const AdamScalars& a, T step) {
  const T e = T(a.eps), wd = T(a.weight_decay), inv_bc1 = T(a.inv_bc1), inv_bc2 = T(a.inv_bc2);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) params[i] -= step * lamb_direction(m[i], v[i], params[i], inv_bc1, inv_bc2, e, wd);
}

}  // namespace

template <typename T>
void lamb_step_runs(T* params, const T* grads, T* m, T* v, const typename Backend<T>::LambRun* runs, size_t num_runs,
                    float lr, float beta1, float beta2, float eps, long long t, float grad_scale) {
  if (num_runs == 0) return;
  ELECTRA_CHECK(t >= 1, "lamb_step_runs: step ", t, " must be >= 1");
  // Pieces of at most kAdamChunk elements that start at their run's first element: the same pieces, hence
  // the same partial sums, whatever the thread count.
  struct Piece {
    size_t begin, count, run;
  };
  std::vector<Piece> pieces;
  std::vector<AdamScalars> scalars(num_runs);
  size_t total = 0;
  for (size_t r = 0; r < num_runs; ++r) {
    scalars[r] = adam_scalars<T>(lr, beta1, beta2, eps, runs[r].weight_decay, t, grad_scale, /*bias_correction=*/true);
    for (size_t b = 0; b < runs[r].size; b += kAdamChunk) {
      pieces.push_back({runs[r].offset + b, std::min(kAdamChunk, runs[r].size - b), r});
    }
    total += runs[r].size;
  }
  const long long n = static_cast<long long>(pieces.size());
  std::vector<double> p_squares(pieces.size()), u_squares(pieces.size());
#pragma omp parallel for schedule(static) if (total > 2 * kAdamChunk)
  for (long long i = 0; i < n; ++i) {
    const Piece& p = pieces[i];
    lamb_moments_chunk(params + p.begin, grads + p.begin, m + p.begin, v + p.begin, p.count, scalars[p.run],
                       &p_squares[i], &u_squares[i]);
  }
  // Each run's norms: its pieces' sums added in order (pieces are in run order).
  std::vector<double> run_p(num_runs, 0.0), run_u(num_runs, 0.0);
  for (size_t i = 0; i < pieces.size(); ++i) {
    run_p[pieces[i].run] += p_squares[i];
    run_u[pieces[i].run] += u_squares[i];
  }
  std::vector<T> steps(num_runs);
  for (size_t r = 0; r < num_runs; ++r) {
    const double p_norm = std::sqrt(run_p[r]), u_norm = std::sqrt(run_u[r]);
    const double ratio = runs[r].adapt && p_norm > 0 && u_norm > 0 ? p_norm / u_norm : 1.0;
    steps[r] = static_cast<T>(static_cast<double>(lr) * ratio);
  }
#pragma omp parallel for schedule(static) if (total > 2 * kAdamChunk)
  for (long long i = 0; i < n; ++i) {
    const Piece& p = pieces[i];
    lamb_apply_chunk(params + p.begin, m + p.begin, v + p.begin, p.count, scalars[p.run], steps[p.run]);
  }
}

#define ELECTRA_INSTANTIATE(T)                                                                                       \
  template double sum_squares<T>(const T*, size_t);                                                                  \
  template void adamw_step<T>(T*, const T*, T*, T*, size_t, float, float, float, float, float, long long, float,     \
                              bool);                                                                                 \
  template void adamw_step_runs<T>(T*, const T*, T*, T*, const typename Backend<T>::AdamWRun*, size_t, float, float, \
                                   float, float, long long, float, bool);                                            \
  template void lamb_step_runs<T>(T*, const T*, T*, T*, const typename Backend<T>::LambRun*, size_t, float, float,   \
                                  float, float, long long, float);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
