// Shared helpers of the backend tests: Philox-driven random inputs, tolerance checks, central finite
// differences, and naive (obviously correct, double precision) loop versions of the ops.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/philox.h"

namespace electra::test {

// ---- random inputs (only from Philox, as everywhere else) ----
inline std::vector<double> random_values(size_t n, uint64_t id, double lo = -1.0, double hi = 1.0) {
  PhiloxSequence rng(12345, RandomPurpose::kTest, 0, id);
  std::vector<double> out(n);
  for (auto& x : out) x = lo + (hi - lo) * rng.next_uniform_open();
  return out;
}
inline std::vector<int32_t> random_ints(size_t n, uint64_t id, int32_t lo, int32_t hi_exclusive) {
  PhiloxSequence rng(54321, RandomPurpose::kTest, 0, id);
  std::vector<int32_t> out(n);
  for (auto& x : out) x = lo + static_cast<int32_t>(rng.next_below(static_cast<uint32_t>(hi_exclusive - lo)));
  return out;
}
template <typename T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}
template <typename T>
std::vector<double> to_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// ---- comparisons ----
// Every element: |actual - expected| <= rtol * |expected| + atol. Reports the worst element.
template <typename A>
::testing::AssertionResult all_near(const std::vector<A>& actual, const std::vector<double>& expected, double rtol,
                                    double atol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  double worst = 0.0;
  size_t worst_i = 0;
  bool ok = true;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = static_cast<double>(actual[i]), e = expected[i];
    const double err = std::abs(a - e), bound = rtol * std::abs(e) + atol;
    if (!(err <= bound)) {
      ok = false;
      const double excess = err / bound;
      if (!(excess <= worst)) {
        worst = excess;
        worst_i = i;
      }
    }
  }
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << worst_i << ": actual " << static_cast<double>(actual[worst_i])
                                       << " expected " << expected[worst_i] << " (rtol " << rtol << ", atol " << atol
                                       << ")";
}
inline double max_abs(const std::vector<double>& x) {
  double m = 0.0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

// Tolerances for comparing a backend of type T with a double reference: rtol, and atol relative to the
// largest reference magnitude (cancellation makes small elements noisy in float).
template <typename T>
struct Tol {
  static constexpr double kRel = sizeof(T) == 4 ? 2e-5 : 1e-12;
};
template <typename A>
::testing::AssertionResult close_to_reference(const std::vector<A>& actual, const std::vector<double>& expected) {
  constexpr double rel = Tol<A>::kRel;
  return all_near(actual, expected, rel, rel * std::max(1.0, max_abs(expected)));
}

// ---- packed rows (sequence packing) ----
// Rows of [B,S] holding several examples each (backend.h's attention mask and position ids): mask k > 0 on
// the k-th example's tokens and 0 on padding, position_ids restarting at 0 per example (0 on padding).
struct PackedRows {
  std::vector<int32_t> mask, position_ids;
};
// Row b holds examples of lengths[b] one after another, then padding up to S.
inline PackedRows packed_rows(const std::vector<std::vector<int>>& lengths, int S) {
  PackedRows rows{std::vector<int32_t>(lengths.size() * S, 0), std::vector<int32_t>(lengths.size() * S, 0)};
  for (size_t b = 0; b < lengths.size(); ++b) {
    int s = 0;
    for (size_t k = 0; k < lengths[b].size(); ++k) {
      for (int i = 0; i < lengths[b][k] && s < S; ++i, ++s) {
        rows.mask[b * S + s] = static_cast<int32_t>(k + 1);
        rows.position_ids[b * S + s] = i;
      }
    }
  }
  return rows;
}
// A layout for any B and S: row b % 3 == 0 three examples of different lengths and padding, 1 one example
// and padding (a 0/1 row), 2 a one-token example, a longer one, and padding.
inline PackedRows packed_rows(int B, int S) {
  std::vector<std::vector<int>> lengths(B);
  for (int b = 0; b < B; ++b) {
    const int pad = S / 8;
    if (b % 3 == 0) {
      const int a = std::max(1, 2 * S / 5), c = std::max(0, std::min(S - a, S / 4));
      lengths[b] = {a, c, std::max(0, S - a - c - pad)};
    } else if (b % 3 == 1) {
      lengths[b] = {S - S / 3};
    } else {
      lengths[b] = {1, std::max(0, S - 1 - pad)};
    }
  }
  return packed_rows(lengths, S);
}

// ---- finite differences ----
// Central differences of a scalar function of x, one coordinate at a time (x is restored).
inline std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& loss,
                                            double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}
// Tight enough that a wrong term in any backward fails, loose enough for O(h^2) + rounding / h.
inline ::testing::AssertionResult gradient_matches(const std::vector<double>& analytic,
                                                   const std::vector<double>& numeric) {
  return all_near(analytic, numeric, 1e-6, 1e-8 * std::max(1.0, max_abs(numeric)));
}
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- naive references (double) ----
namespace ref {

// C = alpha op(A) op(B) + beta C, row-major with leading dimensions.
inline void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<double>& a, int lda,
                 const std::vector<double>& b, int ldb, double beta, std::vector<double>& c, int ldc, size_t a_off = 0,
                 size_t b_off = 0, size_t c_off = 0) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) {
        const double av =
            ta ? a[a_off + static_cast<size_t>(p) * lda + i] : a[a_off + static_cast<size_t>(i) * lda + p];
        const double bv =
            tb ? b[b_off + static_cast<size_t>(j) * ldb + p] : b[b_off + static_cast<size_t>(p) * ldb + j];
        s += av * bv;
      }
      double& cv = c[c_off + static_cast<size_t>(i) * ldc + j];
      cv = alpha * s + (beta == 0.0 ? 0.0 : beta * cv);
    }
  }
}

inline double activation(Activation act, double x) {
  switch (act) {
    case Activation::kNone:
      return x;
    case Activation::kGelu:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::kRelu:
      return x > 0 ? x : 0.0;
    case Activation::kTanh:
      return std::tanh(x);
  }
  return 0.0;
}
inline double activation_grad(Activation act, double x) {
  switch (act) {
    case Activation::kNone:
      return 1.0;
    case Activation::kGelu:
      return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
    case Activation::kRelu:
      return x > 0 ? 1.0 : 0.0;
    case Activation::kTanh:
      return 1.0 - std::tanh(x) * std::tanh(x);
  }
  return 0.0;
}

// The keep bit of element i of a dropout site, straight from the DropoutKey contract.
inline uint8_t keep_bit(const DropoutKey& key, float p, uint64_t i) {
  const PhiloxStream stream(key.seed, RandomPurpose::kDropout, key.step,
                            key.first_example + i / key.elements_per_example, key.lane);
  return stream.uniform(i % key.elements_per_example) >= p ? 1 : 0;
}

struct LayerNormOut {
  std::vector<double> y, mean, rstd;
};
inline LayerNormOut layernorm(const std::vector<double>& x, const std::vector<double>& gamma,
                              const std::vector<double>& beta, int rows, int cols, double eps) {
  LayerNormOut out{std::vector<double>(x.size()), std::vector<double>(rows), std::vector<double>(rows)};
  for (int r = 0; r < rows; ++r) {
    double mu = 0;
    for (int c = 0; c < cols; ++c) mu += x[r * cols + c];
    mu /= cols;
    double var = 0;
    for (int c = 0; c < cols; ++c) var += (x[r * cols + c] - mu) * (x[r * cols + c] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    out.mean[r] = mu;
    out.rstd[r] = rs;
    for (int c = 0; c < cols; ++c) out.y[r * cols + c] = (x[r * cols + c] - mu) * rs * gamma[c] + beta[c];
  }
  return out;
}

struct AttentionOut {
  std::vector<double> context, probs;
};
// qkv [B,S,3,H,D], mask [B,S] (empty = all valid; query i attends key j when attends_key(mask[i], mask[j])),
// keep [B,H,S,S] (empty = no dropout).
inline AttentionOut attention(const std::vector<double>& qkv, const std::vector<int32_t>& mask,
                              const std::vector<uint8_t>& keep, int B, int S, int H, int D, double p) {
  AttentionOut out{std::vector<double>(static_cast<size_t>(B) * S * H * D, 0.0),
                   std::vector<double>(static_cast<size_t>(B) * H * S * S, 0.0)};
  auto at = [&](int b, int s, int which, int h, int d) {
    return qkv[((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d];
  };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < S; ++i) {
        std::vector<double> score(S, 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        bool any = false;
        for (int j = 0; j < S; ++j) {
          const bool valid = mask.empty() || attends_key(mask[b * S + i], mask[b * S + j]);
          if (!valid) continue;
          double s = 0;
          for (int d = 0; d < D; ++d) s += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          score[j] = s / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, score[j]);
          any = true;
        }
        double sum = 0;
        std::vector<double> prob(S, 0.0);
        if (any) {
          for (int j = 0; j < S; ++j) {
            if (mask.empty() || attends_key(mask[b * S + i], mask[b * S + j])) {
              prob[j] = std::exp(score[j] - mx);
              sum += prob[j];
            }
          }
          for (int j = 0; j < S; ++j) prob[j] /= sum;
        }
        for (int j = 0; j < S; ++j) {
          const size_t pi = ((static_cast<size_t>(b) * H + h) * S + i) * S + j;
          out.probs[pi] = prob[j];
          const double dropped = keep.empty() ? prob[j] : prob[j] * keep[pi] / (1.0 - p);
          for (int d = 0; d < D; ++d) {
            out.context[((static_cast<size_t>(b) * S + i) * H + h) * D + d] += dropped * at(b, j, 2, h, d);
          }
        }
      }
    }
  }
  return out;
}

inline double logsumexp(const double* x, int V) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int j = 0; j < V; ++j) mx = std::max(mx, x[j]);
  double s = 0;
  for (int j = 0; j < V; ++j) s += std::exp(x[j] - mx);
  return mx + std::log(s);
}

}  // namespace ref
}  // namespace electra::test
