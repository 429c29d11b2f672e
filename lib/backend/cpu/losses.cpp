// Losses (softmax / sigmoid cross-entropy), log-softmax and Gumbel-max sampling.
#include <algorithm>
#include <cmath>
#include <limits>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

template <typename T>
T row_max(const T* x, int V) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < V; ++j) m = std::max(m, x[j]);
  return m;
}

// First index holding mx: blocks are tested with a vectorised any-equal before the scalar search.
template <typename T>
int first_index_of(const T* x, int V, T mx) {
  constexpr int kBlock = 256;
  for (int b0 = 0; b0 < V; b0 += kBlock) {
    const int b1 = std::min(V, b0 + kBlock);
    int found = 0;
#pragma omp simd reduction(| : found)
    for (int j = b0; j < b1; ++j) found |= x[j] == mx ? 1 : 0;
    if (found) {
      for (int j = b0; j < b1; ++j) {
        if (x[j] == mx) return j;
      }
    }
  }
  return 0;  // all NaN
}

template <typename T>
ELECTRA_CPU_CLONES void softmax_cross_entropy_row(T* loss, T* d, int32_t* argmax, const T* x, int label, T gs, int V) {
  const T x_label = x[label];  // read before d (which may alias x) is written
  const T mx = row_max(x, V);
  if (argmax != nullptr) *argmax = first_index_of(x, V, mx);
  T sum = 0;
  if (d != nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) {
      const T e = vmath::exp_t(x[j] - mx);
      d[j] = e;
      sum += e;
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += vmath::exp_t(x[j] - mx);
  }
  if (loss != nullptr) *loss = mx + std::log(sum) - x_label;
  if (d != nullptr) {
    const T f = gs / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) d[j] *= f;
    d[label] -= gs;
  }
}

template <typename T>
ELECTRA_CPU_CLONES void log_softmax_row(T* y, const T* x, int V) {
  const T mx = row_max(x, V);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < V; ++j) sum += vmath::exp_t(x[j] - mx);
  const T lse = mx + std::log(sum);
#pragma omp simd
  for (int j = 0; j < V; ++j) y[j] = x[j] - lse;
}

// Gumbel-max scores of `count` (<= detail::kGumbelChunk) tokens of one row whose first token has stream offset n0;
// gumbel(n) takes words 2n and 2n+1 of the stream, i.e. Philox block n / 2.
template <typename T>
ELECTRA_CPU_CLONES void gumbel_scores(double* score, const PhiloxStream& stream, uint64_t n0, const T* x, int count,
                                      int banned, double temperature) {
  alignas(64) uint32_t block_words[2 * detail::kGumbelChunk + 4];
  const uint64_t first_block = n0 >> 1, last_block = ((n0 + count - 1) >> 1) + 1;
  detail::philox_words(block_words, stream, first_block, static_cast<int>(last_block - first_block));
  const uint32_t* words = block_words + (2 * n0 - 4 * first_block);
#pragma omp simd
  for (int i = 0; i < count; ++i) {
    // Same arithmetic as PhiloxStream::uniform_open / gumbel (vmath::log_d for log).
    const uint64_t hi = words[2 * i], lo = words[2 * i + 1];
    const int64_t bits = static_cast<int64_t>(((hi << 32) | lo) >> 12);
    const double u = (static_cast<double>(bits) + 0.5) * (1.0 / 4503599627370496.0);
    const double g = -vmath::log_d(-vmath::log_d(u));
    const double penalty = i == banned ? 1000.0 : 0.0;
    const double z = static_cast<double>(x[i]) - penalty;
    // z / 1 == z exactly: skip the division at the usual temperature.
    score[i] = (temperature == 1.0 ? z : z / temperature) + g;
  }
}

}  // namespace

template <typename T>
void softmax_cross_entropy(T* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                           const T* grad_scale, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "softmax_cross_entropy: bad shape rows=", rows, " V=", V);
  for (int r = 0; r < rows; ++r) {
    ELECTRA_CHECK(labels[r] >= 0 && labels[r] < V, "softmax_cross_entropy: labels[", r, "] = ", labels[r],
                  " outside [0, ", V, ")");
  }
  const bool parallel = static_cast<long long>(rows) * V > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < rows; ++r) {
    const size_t off = static_cast<size_t>(r) * V;
    softmax_cross_entropy_row(loss != nullptr ? loss + r : nullptr, dlogits != nullptr ? dlogits + off : nullptr,
                              argmax != nullptr ? argmax + r : nullptr, logits + off, labels[r],
                              grad_scale != nullptr ? grad_scale[r] : T(1), V);
  }
}

template <typename T>
void log_softmax(T* y, const T* x, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "log_softmax: bad shape rows=", rows, " V=", V);
  const bool parallel = static_cast<long long>(rows) * V > 16384;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < rows; ++r) log_softmax_row(y + static_cast<size_t>(r) * V, x + static_cast<size_t>(r) * V, V);
}

template <typename T>
void sigmoid_cross_entropy(T* loss, T* dlogit, const T* logit, const int32_t* label, const T* grad_scale, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 16384)
  for (size_t i = 0; i < n; ++i) {
    const T x = logit[i], y = static_cast<T>(label[i]);
    const T e = std::exp(-std::abs(x));  // in (0, 1]: never overflows
    if (loss != nullptr) loss[i] = std::max(x, T(0)) - x * y + std::log1p(e);
    if (dlogit != nullptr) {
      const T sig = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
      dlogit[i] = (sig - y) * (grad_scale != nullptr ? grad_scale[i] : T(1));
    }
  }
}

template <typename T>
void gumbel_sample(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                   uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example) {
  detail::gumbel_sample_rows(samples, logits, disallow, rows, V, temperature, seed, step, first_example,
                             rows_per_example,
                             [](double* score, const PhiloxStream& stream, uint64_t n0, const T* x, int count,
                                int banned, double t) { gumbel_scores(score, stream, n0, x, count, banned, t); });
}

#define ELECTRA_INSTANTIATE(T)                                                                                      \
  template void softmax_cross_entropy<T>(T*, T*, int32_t*, const T*, const int32_t*, const T*, int, int);           \
  template void log_softmax<T>(T*, const T*, int, int);                                                             \
  template void sigmoid_cross_entropy<T>(T*, T*, const T*, const int32_t*, const T*, size_t);                       \
  template void gumbel_sample<T>(int32_t*, const T*, const int32_t*, int, int, float, uint64_t, uint64_t, uint64_t, \
                                 int);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
