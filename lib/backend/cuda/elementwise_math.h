// Per-element arithmetic of the CUDA kernels, as __host__ __device__ functions (ELECTRA_HD) so that the
// same code runs in the kernels and in CPU tests (tests/cuda/elementwise_math_test.cpp checks it against
// the CPU backend without a GPU). Plain C++: includable without nvcc.
//
// The float approximations ARE the CPU backend's (lib/backend/cpu/vmath.h: Cephes expf and tanhf, Numerical
// Recipes erfc), so both backends share their approximation errors and differ only by rounding (nvcc and
// GCC fuse multiply-adds in different places). The double log is fdlibm's, as vmath::log_d.
// The double log behind Gumbel sampling is evaluated without fused multiply-adds (explicit _rn intrinsics
// in device code), so a GPU draws exactly the noise of the CPU backend's baseline code path.
#pragma once

#include <math.h>

#include <bit>
#include <cstdint>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/vmath.h"
#include "lib/core/philox.h"  // ELECTRA_HD

namespace electra::cuda::math {

// ---- bit casts and unfused double arithmetic ----
ELECTRA_HD inline float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}
ELECTRA_HD inline uint64_t double_to_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  return std::bit_cast<uint64_t>(x);
#endif
}
ELECTRA_HD inline double double_from_bits(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  return std::bit_cast<double>(bits);
#endif
}
// Rounded products and sums that nvcc never contracts into fused multiply-adds.
ELECTRA_HD inline double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
ELECTRA_HD inline double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
ELECTRA_HD inline double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

// ---- float approximations: the CPU backend's own functions (lib/backend/cpu/vmath.h, __host__ __device__
// under nvcc), so both backends evaluate the same expressions ----
using cpu::vmath::erfc_f;
using cpu::vmath::exp_f;
using cpu::vmath::gelu_f;
using cpu::vmath::gelu_grad_f;
using cpu::vmath::normal_cdf_f;
using cpu::vmath::tanh_f;

// Natural log of a positive normal double: vmath::log_d's expression tree, every operation rounded.
ELECTRA_HD inline double log_d(double x) {
  const uint64_t ix = double_to_bits(x);
  const uint64_t tmp = ix - 0x3fe6a09e667f3bcdULL;
  const int64_t k = static_cast<int64_t>(tmp) >> 52;
  const double m = double_from_bits(ix - (tmp & 0xfff0000000000000ULL));
  const double f = dsub(m, 1.0);
  const double s = f / dadd(2.0, f);
  const double z = dmul(s, s), w = dmul(z, z);
  const double t1 = dmul(
      w, dadd(3.999999999940941908e-01, dmul(w, dadd(2.222219843214978396e-01, dmul(w, 1.531383769920937332e-01)))));
  const double t2 =
      dmul(z, dadd(6.666666666666735130e-01,
                   dmul(w, dadd(2.857142874366239149e-01,
                                dmul(w, dadd(1.818357216161805012e-01, dmul(w, 1.479819860511658591e-01)))))));
  const double r = dadd(t2, t1);
  const double hfsq = dmul(dmul(0.5, f), f);
  const double dk = static_cast<double>(k);
  return dsub(dmul(dk, 6.93147180369123816490e-01),
              dsub(dsub(hfsq, dadd(dmul(s, dadd(hfsq, r)), dmul(dk, 1.90821492927058770002e-10))), f));
}

// ---- activations ----
ELECTRA_HD inline float activation(Activation act, float x) {
  switch (act) {
    case Activation::kGelu:
      return gelu_f(x);
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kTanh:
      return tanh_f(x);
    case Activation::kNone:
      break;
  }
  return x;
}
// dy * act'(x)
ELECTRA_HD inline float activation_backward(Activation act, float dy, float x) {
  switch (act) {
    case Activation::kGelu:
      return dy * gelu_grad_f(x);
    case Activation::kRelu:
      return x > 0.0f ? dy : 0.0f;
    case Activation::kTanh: {
      const float t = tanh_f(x);
      return dy * (1.0f - t * t);
    }
    case Activation::kNone:
      break;
  }
  return dy;
}

// ---- dropout ----
// The keep bit of a 32-bit Philox word, as PhiloxStream::uniform(n) >= p.
ELECTRA_HD inline uint8_t keep_from_word(uint32_t word, float p) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f) >= p ? 1 : 0;
}

// keep[0 .. count) for elements index .. index + count - 1 (count <= 4) of a dropout site (DropoutKey's
// contract): one 64-bit division for the group, and one Philox block for every four offsets that share
// one (consecutive elements of one example usually do).
ELECTRA_HD inline void dropout_keep_group(uint8_t* keep, const DropoutKey& key, uint64_t index, int count, float p) {
  const uint64_t per = key.elements_per_example;
  uint64_t example = key.first_example + index / per, offset = index % per;
  uint64_t cached_example = 0, cached_block = 0;
  bool have = false;
  Philox4x32 words{};
  for (int i = 0; i < count; ++i) {
    const uint64_t block = offset >> 2;
    if (!have || block != cached_block || example != cached_example) {
      const PhiloxStream stream(key.seed, RandomPurpose::kDropout, key.step, example, key.lane);
      words = philox4x32_10(static_cast<uint32_t>(block), stream.lane, stream.example, stream.step, stream.key0,
                            stream.key1);
      cached_block = block;
      cached_example = example;
      have = true;
    }
    keep[i] = keep_from_word(words.v[offset & 3], p);
    if (++offset == per) {
      offset = 0;
      ++example;
    }
  }
}

// ---- Gumbel-max sampling ----
// Score of token v of a row (backend.h's gumbel_sample contract): stream offset n = row offset + v;
// gumbel(n) takes words 2n and 2n+1, both in Philox block n / 2.
ELECTRA_HD inline double gumbel_score(const PhiloxStream& stream, uint64_t n, float logit, bool banned,
                                      double temperature) {
  const uint64_t w = 2 * n;
  const Philox4x32 r =
      philox4x32_10(static_cast<uint32_t>(w >> 2), stream.lane, stream.example, stream.step, stream.key0, stream.key1);
  const uint64_t hi = r.v[w & 3], lo = r.v[(w & 3) + 1];
  const int64_t bits = static_cast<int64_t>(((hi << 32) | lo) >> 12);
  const double u = dmul(dadd(static_cast<double>(bits), 0.5), 1.0 / 4503599627370496.0);
  const double g = -log_d(-log_d(u));
  const double z = dsub(static_cast<double>(logit), banned ? 1000.0 : 0.0);
  return dadd(temperature == 1.0 ? z : z / temperature, g);
}

// Best (score, index) so far: a larger score wins, equal scores go to the smaller index, NaN never wins.
// index == kNoIndex means nothing beat -infinity (the CPU backend then returns 0).
struct ArgmaxPair {
  static constexpr int kNoIndex = 0x7fffffff;
  double score;
  int index;
};
ELECTRA_HD inline ArgmaxPair argmax_combine(ArgmaxPair a, ArgmaxPair b) {
  if (b.score > a.score || (b.score == a.score && b.index < a.index)) return b;
  return a;
}

// ---- losses ----
// BCE with logits and its gradient (CPU backend's sigmoid_cross_entropy for one element).
ELECTRA_HD inline void sigmoid_cross_entropy(float x, float y, float grad_scale, float* loss, float* dlogit) {
  const float e = expf(-fabsf(x));
  if (loss != nullptr) *loss = (x < 0.0f ? 0.0f : x) - x * y + log1pf(e);
  if (dlogit != nullptr) {
    const float sig = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    *dlogit = (sig - y) * grad_scale;
  }
}

// ---- AdamW ----
// The scalars of one adamw_step, rounded to float as the CPU backend rounds them.
struct AdamParams {
  float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, grad_scale, inv_bc1, inv_bc2;
};
// The same rounding as lib/backend/cpu/optimizer.cpp (bias corrections in double).
inline AdamParams adam_params(float lr, float beta1, float beta2, float eps, float weight_decay, long long t,
                              float grad_scale, bool bias_correction) {
  const double bc1 = bias_correction ? 1.0 - ::pow(static_cast<double>(beta1), static_cast<double>(t)) : 1.0;
  const double bc2 = bias_correction ? 1.0 - ::pow(static_cast<double>(beta2), static_cast<double>(t)) : 1.0;
  return AdamParams{lr,
                    beta1,
                    beta2,
                    1.0f - beta1,
                    1.0f - beta2,
                    eps,
                    weight_decay,
                    grad_scale,
                    static_cast<float>(1.0 / bc1),
                    static_cast<float>(1.0 / bc2)};
}
ELECTRA_HD inline void adamw_update(float& param, float grad, float& m, float& v, const AdamParams& a) {
  const float g = grad * a.grad_scale;
  const float mi = a.beta1 * m + a.one_minus_beta1 * g;
  const float vi = a.beta2 * v + a.one_minus_beta2 * g * g;
  m = mi;
  v = vi;
  const float m_hat = mi * a.inv_bc1, v_hat = vi * a.inv_bc2;
  param -= a.lr * (m_hat / (sqrtf(v_hat) + a.eps) + a.weight_decay * param);
}

}  // namespace electra::cuda::math
