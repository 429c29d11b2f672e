// Accuracy of the vectorisable float math (lib/backend/cpu/vmath.h) against double libm, on dense grids.
#include "lib/backend/cpu/vmath.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

using namespace electra::cpu::vmath;

// Worst relative error of f against g over n points of [lo, hi].
template <typename F, typename G>
double worst_relative(F f, G g, double lo, double hi, int n, double* where) {
  double worst = 0;
  for (int i = 0; i <= n; ++i) {
    const float x = static_cast<float>(lo + (hi - lo) * i / n);
    const double expected = g(static_cast<double>(x));
    const double err = std::abs(static_cast<double>(f(x)) - expected) / std::abs(expected);
    if (err > worst) {
      worst = err;
      *where = x;
    }
  }
  return worst;
}

TEST(BackendVmath, ExpFloat) {
  double where = 0;
  EXPECT_LT(worst_relative(
                exp_f, [](double x) { return std::exp(x); }, -87.3, 88.3, 2'000'000, &where),
            2e-7)
      << "at " << where;
  EXPECT_EQ(exp_f(0.0f), 1.0f);
  EXPECT_EQ(exp_f(-100.0f), 0.0f);
  EXPECT_EQ(exp_f(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(std::isfinite(exp_f(88.3f)));
}

// erfc_f's argument to exp is about -z^2 in float, so far in the tail (where erfc < 1e-6) its relative
// error grows like z^2 * 2^-24; there the values are tiny and only absolute error matters.
TEST(BackendVmath, ErfcAndGelu) {
  double where = 0;
  EXPECT_LT(worst_relative(
                erfc_f, [](double x) { return std::erfc(x); }, -6.0, 3.5, 1'000'000, &where),
            2e-6)
      << "at " << where;
  EXPECT_LT(worst_relative(
                erfc_f, [](double x) { return std::erfc(x); }, 3.5, 9.0, 1'000'000, &where),
            1e-5)
      << "at " << where;
  auto gelu = [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); };
  auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  auto x_pdf = [](double x) { return x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); };
  double worst_gelu = 0, worst_grad = 0, worst_tail = 0;
  for (int i = 0; i <= 2'000'000; ++i) {
    const float x = static_cast<float>(-14.0 + 28.0 * i / 2e6);
    const double g = gelu(x), d = cdf(x) + x_pdf(x);
    const double err_g = std::abs(gelu_f(x) - g), err_d = std::abs(gelu_grad_f(x) - d);
    if (x >= -5.0f) {
      worst_gelu = std::max(worst_gelu, err_g / std::abs(g == 0 ? 1.0 : g));
      // Phi(x) + x phi(x) cancels near x = -0.75: measure against the size of the terms.
      worst_grad = std::max(worst_grad, err_d / (std::abs(cdf(x)) + std::abs(x_pdf(x))));
    } else {
      worst_tail = std::max({worst_tail, err_g, err_d});
    }
  }
  EXPECT_LT(worst_gelu, 3e-6);
  EXPECT_LT(worst_grad, 1e-6);
  EXPECT_LT(worst_tail, 1e-11);
  EXPECT_EQ(gelu_f(0.0f), 0.0f);
  EXPECT_EQ(gelu_f(-30.0f), -0.0f);
  EXPECT_EQ(gelu_f(30.0f), 30.0f);
}

TEST(BackendVmath, TanhFloat) {
  double where = 0;
  auto tanh_d = [](double x) { return std::tanh(x); };
  EXPECT_LT(worst_relative(tanh_f, tanh_d, -0.7, -1e-6, 500'000, &where), 3e-7) << "at " << where;
  EXPECT_LT(worst_relative(tanh_f, tanh_d, 1e-6, 0.7, 500'000, &where), 3e-7) << "at " << where;
  EXPECT_LT(worst_relative(tanh_f, tanh_d, 0.5, 20.0, 1'000'000, &where), 3e-7) << "at " << where;
  EXPECT_LT(worst_relative(tanh_f, tanh_d, -20.0, -0.5, 1'000'000, &where), 3e-7) << "at " << where;
  EXPECT_EQ(tanh_f(0.0f), 0.0f);
  EXPECT_EQ(tanh_f(100.0f), 1.0f);
  EXPECT_EQ(tanh_f(-100.0f), -1.0f);
}

TEST(BackendVmath, LogDouble) {
  // Within 1 ulp of libm over many decades and the ranges Gumbel sampling uses ((0, 1] and (0, 38)).
  PhiloxSequence rng(1, RandomPurpose::kTest, 0, 0);
  int worse_than_1ulp = 0;
  for (int i = 0; i < 300000; ++i) {
    double x;
    if (i % 3 == 0) {
      x = std::exp(-700.0 + 1400.0 * rng.next_uniform_open());
    } else if (i % 3 == 1) {
      x = rng.next_uniform_open();
    } else {
      x = 38.0 * rng.next_uniform_open();
    }
    const double got = log_d(x), want = std::log(x);
    const double ulp = std::nextafter(std::abs(want), INFINITY) - std::abs(want);
    if (std::abs(got - want) > ulp) ++worse_than_1ulp;
  }
  EXPECT_EQ(worse_than_1ulp, 0);
  EXPECT_EQ(log_d(1.0), 0.0);
  EXPECT_DOUBLE_EQ(log_d(2.0), std::log(2.0));
}

}  // namespace
}  // namespace electra::test
