// Elementwise ops: fill, activations, add/accumulate/scale, dropout.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "lib/backend/cpu/detail.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/backend/cpu/philox_simd.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/core/error.h"

namespace electra::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr size_t kParallelMin = 1 << 15;
// Work unit of the parallel elementwise loops (elements).
constexpr size_t kChunk = 8192;

// Exact GELU (erf form, as BERT / Hugging Face "gelu"), x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2:
// the erfc form keeps relative accuracy for negative x, where 1 + erf(x / sqrt 2) cancels.
inline float gelu(float x) { return vmath::gelu_f(x); }
inline double gelu(double x) { return 0.5 * x * std::erfc(-0.70710678118654752440 * x); }
// d/dx [x Phi(x)] = Phi(x) + x phi(x)
inline float gelu_grad(float x) { return vmath::gelu_grad_f(x); }
inline double gelu_grad(double x) {
  return 0.5 * std::erfc(-0.70710678118654752440 * x) + x * 0.39894228040143267794 * std::exp(-0.5 * x * x);
}

inline float tanh_t(float x) { return vmath::tanh_f(x); }
inline double tanh_t(double x) { return std::tanh(x); }

template <typename T>
ELECTRA_CPU_CLONES void tanh_forward_chunk(T* y, const T* x, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = tanh_t(x[i]);
}
template <typename T>
ELECTRA_CPU_CLONES void tanh_backward_chunk(T* dx, const T* dy, const T* x, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T t = tanh_t(x[i]);
    dx[i] = dy[i] * (T(1) - t * t);
  }
}

template <typename T>
ELECTRA_CPU_CLONES void gelu_forward_chunk(T* y, const T* x, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
}
template <typename T>
ELECTRA_CPU_CLONES void gelu_backward_chunk(T* dx, const T* dy, const T* x, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad(x[i]);
}

// keep for offsets [offset, offset + count) of one example's stream.
ELECTRA_CPU_CLONES void keep_run(uint8_t* keep, const PhiloxStream& stream, uint64_t offset, uint64_t count, float p) {
  constexpr int kBlocks = 64;
  alignas(64) uint32_t words[4 * kBlocks];
  const uint64_t end = offset + count;
  uint64_t o = offset;
  while (o < end) {
    const uint64_t first_block = o >> 2;
    const uint64_t last_block = std::min((end + 3) >> 2, first_block + kBlocks);  // exclusive
    detail::philox_words_simd(words, stream, first_block, static_cast<int>(last_block - first_block));
    const uint64_t stop = std::min(end, last_block * 4);
    const uint32_t* w = words + (o - first_block * 4);  // the word of offset o
    uint8_t* k = keep + (o - offset);
    const int len = static_cast<int>(stop - o);
#pragma omp simd
    for (int i = 0; i < len; ++i) {
      // Same arithmetic as PhiloxStream::uniform.
      k[i] = static_cast<float>(w[i] >> 8) * (1.0f / 16777216.0f) >= p ? 1 : 0;
    }
    o = stop;
  }
}

// y = x * keep * keep_scale (y may alias x).
template <typename T>
ELECTRA_CPU_CLONES void apply_keep(T* y, const T* x, const uint8_t* keep, T keep_scale, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * (keep[i] ? keep_scale : T(0));
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

void attention_keep_mask(uint8_t* keep, int b, int h, int H, int S, float p, const DropoutKey& key) {
  const int Sk = attention_key_seq(key, S);
  ELECTRA_CHECK(Sk >= S, "attention dropout: key_seq_length ", Sk, " is shorter than the sequence (", S, ")");
  const size_t pair = static_cast<size_t>(b) * H + h;
  if (Sk == S) {  // the pair's block is contiguous in the key's index space
    dropout_keep_mask(keep, pair * S * S, static_cast<size_t>(S) * S, p, key);
    return;
  }
  for (int q = 0; q < S; ++q) {
    dropout_keep_mask(keep + static_cast<size_t>(q) * S, (pair * Sk + q) * Sk, static_cast<size_t>(S), p, key);
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
      detail::parallel_chunks(n, kChunk, kChunk, [&](size_t b, size_t e) { gelu_forward_chunk(y + b, x + b, e - b); });
      return;
    case Activation::kRelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
      for (size_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
      return;
    case Activation::kTanh:
      detail::parallel_chunks(n, kChunk, kChunk, [&](size_t b, size_t e) { tanh_forward_chunk(y + b, x + b, e - b); });
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
      detail::parallel_chunks(n, kChunk, kChunk,
                              [&](size_t b, size_t e) { gelu_backward_chunk(dx + b, dy + b, x + b, e - b); });
      return;
    case Activation::kRelu:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
      for (size_t i = 0; i < n; ++i) {
        // dy read unconditionally: a conditional read compiled to a branch per element (20 ms for 4M
        // random signs instead of ~1).
        const T g = dy[i];
        dx[i] = x[i] > T(0) ? g : T(0);
      }
      return;
    case Activation::kTanh:
      detail::parallel_chunks(n, kChunk, kChunk,
                              [&](size_t b, size_t e) { tanh_backward_chunk(dx + b, dy + b, x + b, e - b); });
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
  detail::parallel_chunks(n, kChunk, kChunk, [&](size_t b, size_t e) {
    dropout_keep_mask(keep + b, b, e - b, p, key);
    apply_keep(y + b, x + b, keep + b, keep_scale, e - b);
  });
}

template <typename T>
void dropout_backward(T* dx, const T* dy, const uint8_t* keep, size_t n, float p) {
  check_dropout_p(p, "dropout_backward");
  if (p == 0.0f) {
    if (dx != dy) std::memmove(dx, dy, n * sizeof(T));
    return;
  }
  const T keep_scale = T(1) / (T(1) - T(p));
  detail::parallel_chunks(n, kChunk, kParallelMin,
                          [&](size_t b, size_t e) { apply_keep(dx + b, dy + b, keep + b, keep_scale, e - b); });
}

#define ELECTRA_INSTANTIATE(T)                                                                \
  template void fill<T>(T*, size_t, T);                                                       \
  template void activation_forward<T>(Activation, T*, const T*, size_t);                      \
  template void activation_backward<T>(Activation, T*, const T*, const T*, size_t);           \
  template void add<T>(T*, const T*, const T*, size_t);                                       \
  template void accumulate<T>(T*, const T*, size_t);                                          \
  template void scale<T>(T*, size_t, T);                                                      \
  template void dropout_forward<T>(T*, uint8_t*, const T*, size_t, float, const DropoutKey&); \
  template void dropout_backward<T>(T*, const T*, const uint8_t*, size_t, float);
ELECTRA_INSTANTIATE(float)
ELECTRA_INSTANTIATE(double)
#undef ELECTRA_INSTANTIATE

}  // namespace electra::cpu
