// Branch-free math for the float kernels, written so `#pragma omp simd` loops vectorise them (libm's
// expf/erff/log are calls the compiler cannot vectorise without -ffast-math). Accuracy, measured
// against double libm over the ranges the kernels use (tests/backend/vmath_test.cpp):
//   exp_f   relative error < 2e-7 on [-87.3, 88.3]; 0 below -87.3 (where expf is denormal or 0)
//   erfc_f  relative error < 2e-6 up to erfc = 1e-6 (Numerical Recipes' erfcc, fractional error 1.2e-7,
//           plus the float rounding of its exp argument ~ -z^2, which grows like z^2 2^-24 in the tail)
//   gelu_f, gelu_grad_f  relative error < 3e-6 for x >= -5, absolute error < 1e-11 below
//   tanh_f  relative error < 3e-7
//   log_d   double log for normal positive inputs, < 1 ulp (fdlibm's polynomial)
// The double kernels keep calling std:: functions (they are the finite-difference reference).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include <math.h>

// Always inlined: a call inside a `#pragma omp simd` loop would stop it from vectorising.
#if defined(__GNUC__)
#define ELECTRA_VMATH_INLINE [[gnu::always_inline]] inline
#else
#define ELECTRA_VMATH_INLINE inline
#endif
// The float functions below are also the CUDA kernels' (lib/backend/cuda/elementwise_math.h uses them), so
// both backends share one expression tree: __host__ __device__ under nvcc.
#if defined(__CUDACC__)
#define ELECTRA_VMATH_HD __host__ __device__ __forceinline__
#else
#define ELECTRA_VMATH_HD ELECTRA_VMATH_INLINE
#endif

namespace electra::cpu::vmath {

// The float whose bits are `bits` (std::bit_cast is not a device function).
ELECTRA_VMATH_HD float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}

// Cephes expf: n = round(x / ln 2), r = x - n ln 2 (in two parts), degree-6 polynomial, scale by 2^n.
ELECTRA_VMATH_HD float exp_f(float x) {
  constexpr float kLo = -87.3f, kHi = 88.3f;  // 2^n stays a normal float for n in [-126, 127]
  const float xc = x < kLo ? kLo : (x > kHi ? kHi : x);
  // Round to nearest by the 1.5 * 2^23 trick (no rounding instruction needed).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  const float scale = float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  return x < kLo ? 0.0f : y * scale;
}

// Complementary error function (Numerical Recipes erfcc: Chebyshev fit of erfc(z) exp(z^2)).
ELECTRA_VMATH_HD float erfc_f(float x) {
  const float z = fabsf(x);
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float ans = t * exp_f(p - z * z);
  return x >= 0.0f ? ans : 2.0f - ans;
}

// Standard normal CDF: Phi(x) = erfc(-x / sqrt 2) / 2; accurate in the left tail (no 1 + erf cancellation).
ELECTRA_VMATH_HD float normal_cdf_f(float x) { return 0.5f * erfc_f(-0.70710678118654752f * x); }

// Exact (erf-form) GELU and its derivative Phi(x) + x phi(x).
ELECTRA_VMATH_HD float gelu_f(float x) { return x * normal_cdf_f(x); }
ELECTRA_VMATH_HD float gelu_grad_f(float x) {
  return normal_cdf_f(x) + x * 0.39894228040143268f * exp_f(-0.5f * x * x);
}

// Cephes tanhf: odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above (no cancellation there).
ELECTRA_VMATH_HD float tanh_f(float x) {
  const float z = fabsf(x);
  const float big = 1.0f - 2.0f / (exp_f(2.0f * z) + 1.0f);
  const float x2 = x * x;
  float p = -5.70498872745e-3f;
  p = p * x2 + 2.06390887954e-2f;
  p = p * x2 - 5.37397155531e-2f;
  p = p * x2 + 1.33314422036e-1f;
  p = p * x2 - 3.33332819422e-1f;
  const float small = p * x2 * x + x;
  return z > 0.625f ? copysignf(big, x) : small;
}

// Natural log of a positive normal double (fdlibm e_log.c, without its tables or branches):
// x = 2^k m with m in [sqrt(2)/2, sqrt(2)), log m = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f).
ELECTRA_VMATH_INLINE double log_d(double x) {
  const uint64_t ix = std::bit_cast<uint64_t>(x);
  const uint64_t tmp = ix - 0x3fe6a09e667f3bcdULL;  // so that k counts from m = sqrt(2)/2
  const int64_t k = static_cast<int64_t>(tmp) >> 52;
  const double m = std::bit_cast<double>(ix - (tmp & 0xfff0000000000000ULL));
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 =
      z * (6.666666666666735130e-01 +
           w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const double r = t2 + t1;
  const double hfsq = 0.5 * f * f;
  const double dk = static_cast<double>(k);
  return dk * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + r) + dk * 1.90821492927058770002e-10)) - f);
}

// Overloads so a kernel templated on T uses the vectorisable float version and libm in double.
ELECTRA_VMATH_INLINE float exp_t(float x) { return exp_f(x); }
inline double exp_t(double x) { return std::exp(x); }

}  // namespace electra::cpu::vmath
