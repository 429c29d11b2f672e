// Elementwise ops: fill, activations, add/accumulate/scale, dropout.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr size_t kParallelMin = 1 << 15;

template <typename T>
constexpr T kInvSqrt2 = T(0.70710678118654752440);
template <typename T>
constexpr T kInvSqrt2Pi = T(0.39894228040143267794);

// Exact GELU (erf form), as BERT / Hugging Face "gelu".
template <typename T>
inline T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * kInvSqrt2<T>));
}
// d/dx [x Phi(x)] = Phi(x) + x phi(x)
template <typename T>
inline T gelu_grad(T x) {
  const T cdf = T(0.5) * (T(1) + std::erf(x * kInvSqrt2<T>));
  const T pdf = kInvSqrt2Pi<T> * std::exp(T(-0.5) * x * x);
  return cdf + x * pdf;
}

// keep for offsets [offset, offset + count) of one example's stream.
void keep_run(uint8_t* keep, const PhiloxStream& stream, uint64_t offset, uint64_t count, float p) {
  constexpr int kBatch = 64;
  uint32_t w[4][kBatch];
  const uint64_t end = offset + count;
  uint64_t o = offset;
  while (o < end) {
    const uint64_t first_block = o >> 2;
    const uint64_t last_block = std::min((end + 3) >> 2, first_block + kBatch);  // exclusive
    detail::philox_blocks(w[0], w[1], w[2], w[3], stream, first_block, static_cast<int>(last_block - first_block));
    const uint64_t stop = std::min(end, last_block * 4);
    for (; o < stop; ++o) {
      const uint32_t word = w[o & 3][(o >> 2) - first_block];
      // Same arithmetic as PhiloxStream::uniform.
      const float u = static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
      keep[o - offset] = u >= p ? 1 : 0;
    }
  }
}

void check_dropout_p(float p, const char* op) {
  ELECTRA_CHECK(p >= 0.0f && p < 1.0f, op, ": dropout probability ", p, " outside [0, 1)");
}

}  // namespace

void dropout_keep_mask(uint8_t* keep, size_t begin, size_t count, float p, const DropoutKey& key) {
  ELECTRA_CHECK(key.elements_per_example > 0, "dropout: elements_per_example must be positive");
  const uint64_t per = key.elements_per_example;
  uint64_t i = begin;
  const uint64_t end = begin + count;
  while (i < end) {
    const uint64_t example = key.first_example + i / per, offset = i % per;
    const uint64_t len = std::min(end - i, per - offset);
    const PhiloxStream stream(key.seed, RandomPurpose::kDropout, key.step, example, key.lane);
    keep_run(keep + (i - begin), stream, offset, len, p);
    i += len;
  }
}

template <typename T>
void fill(T* x, size_t n, T value) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) x[i] = value;
}

template <typename T>
void activation_forward(Activation act, T* y, const T* x, size_t n) {
  switch (act) {
    case Activation::kNone:
      if (y != x) std::memmove(y, x, n * sizeof(T));
      return;
    case Activation::kGelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin / 8)
      for (size_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
      return;
    case Activation::kRelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
      for (size_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
      return;
    case Activation::kTanh:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin / 8)
      for (size_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
      return;
  }
  fail("activation_forward: unknown activation");
}

template <typename T>
void activation_backward(Activation act, T* dx, const T* dy, const T* x, size_t n) {
  switch (act) {
    case Activation::kNone:
      if (dx != dy) std::memmove(dx, dy, n * sizeof(T));
      return;
    case Activation::kGelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin / 8)
      for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad(x[i]);
      return;
    case Activation::kRelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
      for (size_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
      return;
    case Activation::kTanh:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin / 8)
      for (size_t i = 0; i < n; ++i) {
        const T t = std::tanh(x[i]);
        dx[i] = dy[i] * (T(1) - t * t);
      }
      return;
  }
  fail("activation_backward: unknown activation");
}

template <typename T>
void add(T* out, const T* a, const T* b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void accumulate(T* y, const T* x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename T>
void scale(T* x, size_t n, T alpha) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

template <typename T>
void dropout_forward(T* y, uint8_t* keep, const T* x, size_t n, float p, const DropoutKey& key) {
  check_dropout_p(p, "dropout_forward");
  if (p == 0.0f) {
    if (y != x) std::memmove(y, x, n * sizeof(T));
    if (keep != nullptr) std::memset(keep, 1, n);
    return;
  }
  ELECTRA_CHECK(keep != nullptr, "dropout_forward: keep mask is null");
  ELECTRA_CHECK(key.elements_per_example > 0, "dropout_forward: elements_per_example must be positive");
  const T keep_scale = T(1) / (T(1) - T(p));
  // Chunks only decide who computes what: every keep bit is a function of its element index.
  constexpr size_t kChunk = 8192;
  const size_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin / 4)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    dropout_keep_mask(keep + begin, begin, len, p, key);
#pragma omp simd
    for (size_t i = begin; i < begin + len; ++i) y[i] = x[i] * (keep[i] ? keep_scale : T(0));
  }
}

template <typename T>
void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) {
  check_dropout_p(p, "dropout_backward");
  if (p == 0.0f) {
    if (dx != dy) std::memmove(dx, dy, n * sizeof(T));
    return;
  }
  const T keep_scale = T(1) / (T(1) - T(p));
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * (keep[i] ? keep_scale : T(0));
}

#define ELECTRA_INSTANTIATE(T)                                                               \
  template void fill<T>(T*, size_t, T);                                                      \
  template void activation_forward<T>(Activation, T*, const T*, size_t);                     \
  template void activation_backward<T>(Activation, T*, const T*, const T*, size_t);          \
  template void add<T>(T*, const T*, const T*, size_t);                                      \
  template void accumulate<T>(T*, const T*, size_t);                                         \
  template void scale<T>(T*, size_t, T);                                                     \
  template void dropout_forward<T>(T*, uint8_t*, const T*, size_t, float, const DropoutKey&); \
  template void dropout_backward<T>(T*, const T*, const uint8_t*, size_t, float);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
