// Losses (softmax / sigmoid cross-entropy), log-softmax and Gumbel-max sampling.
#include <algorithm>
#include <cmath>
#include <limits>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
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

}  // namespace

template <typename T>
void softmax_cross_entropy(T* loss, T* dlogits, int32_t* argmax, const T* logits, const int32_t* labels,
                           const T* grad_scale, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "softmax_cross_entropy: bad shape rows=", rows, " V=", V);
  for (int r = 0; r < rows; ++r) {
    ELECTRA_CHECK(labels[r] >= 0 && labels[r] < V, "softmax_cross_entropy: labels[", r, "] = ", labels[r],
                  " outside [0, ", V, ")");
  }
#pragma omp parallel for schedule(static) if (static_cast<long long>(rows) * V > 16384)
  for (int r = 0; r < rows; ++r) {
    const T* x = logits + static_cast<size_t>(r) * V;
    T* d = dlogits != nullptr ? dlogits + static_cast<size_t>(r) * V : nullptr;
    const int label = labels[r];
    const T x_label = x[label];  // read before d (which may alias x) is written
    const T mx = row_max(x, V);
    if (argmax != nullptr) {
      int first = 0;
      while (first < V - 1 && !(x[first] == mx)) ++first;
      argmax[r] = first;
    }
    T sum = 0;
    if (d != nullptr) {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) {
        const T e = std::exp(x[j] - mx);
        d[j] = e;
        sum += e;
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += std::exp(x[j] - mx);
    }
    if (loss != nullptr) loss[r] = mx + std::log(sum) - x_label;
    if (d != nullptr) {
      const T gs = grad_scale != nullptr ? grad_scale[r] : T(1);
      const T f = gs / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) d[j] *= f;
      d[label] -= gs;
    }
  }
}

template <typename T>
void log_softmax(T* y, const T* x, int rows, int V) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "log_softmax: bad shape rows=", rows, " V=", V);
#pragma omp parallel for schedule(static) if (static_cast<long long>(rows) * V > 16384)
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + static_cast<size_t>(r) * V;
    T* yr = y + static_cast<size_t>(r) * V;
    const T mx = row_max(xr, V);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += std::exp(xr[j] - mx);
    const T lse = mx + std::log(sum);
#pragma omp simd
    for (int j = 0; j < V; ++j) yr[j] = xr[j] - lse;
  }
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
  ELECTRA_CHECK(rows >= 0 && V > 0, "gumbel_sample: bad shape rows=", rows, " V=", V);
  ELECTRA_CHECK(rows_per_example > 0, "gumbel_sample: rows_per_example must be positive");
  ELECTRA_CHECK(temperature > 0.0f, "gumbel_sample: temperature ", temperature, " must be positive");
  const double t = temperature;
#pragma omp parallel for schedule(static) if (static_cast<long long>(rows) * V > 4096)
  for (int r = 0; r < rows; ++r) {
    const T* x = logits + static_cast<size_t>(r) * V;
    const PhiloxStream stream(seed, RandomPurpose::kSampling, step, first_example + r / rows_per_example);
    const uint64_t base = static_cast<uint64_t>(r % rows_per_example) * V;
    const int banned = disallow != nullptr ? disallow[r] : -1;
    // gumbel(n) takes words 2n and 2n+1 of the stream: block n/2, words 0,1 (n even) or 2,3 (n odd).
    constexpr int kBlocks = 64;
    uint32_t w[4][kBlocks];
    double best = -std::numeric_limits<double>::infinity();
    int best_v = 0;
    for (int v0 = 0; v0 < V; v0 += 2 * kBlocks - 1) {
      const int v1 = std::min(V, v0 + 2 * kBlocks - 1);  // at most kBlocks blocks, whatever the parity
      const uint64_t first_block = (base + v0) >> 1;
      const uint64_t last_block = ((base + v1 - 1) >> 1) + 1;
      detail::philox_blocks(w[0], w[1], w[2], w[3], stream, first_block, static_cast<int>(last_block - first_block));
      for (int v = v0; v < v1; ++v) {
        const uint64_t n = base + v;
        const uint64_t j = (n >> 1) - first_block;
        const uint64_t hi = w[(n & 1) * 2][j], lo = w[(n & 1) * 2 + 1][j];
        // Same arithmetic as PhiloxStream::uniform_open / gumbel.
        const uint64_t bits = ((hi << 32) | lo) >> 11;
        const double u = (static_cast<double>(bits) + 0.5) * (1.0 / 9007199254740992.0);
        const double g = -std::log(-std::log(u));
        const double z = static_cast<double>(x[v]) - (v == banned ? 1000.0 : 0.0);
        const double score = z / t + g;
        if (score > best) {
          best = score;
          best_v = v;
        }
      }
    }
    samples[r] = best_v;
  }
}

#define ELECTRA_INSTANTIATE(T)                                                                                     \
  template void softmax_cross_entropy<T>(T*, T*, int32_t*, const T*, const int32_t*, const T*, int, int);          \
  template void log_softmax<T>(T*, const T*, int, int);                                                            \
  template void sigmoid_cross_entropy<T>(T*, T*, const T*, const int32_t*, const T*, size_t);                      \
  template void gumbel_sample<T>(int32_t*, const T*, const int32_t*, int, int, float, uint64_t, uint64_t, uint64_t, \
                                 int);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
