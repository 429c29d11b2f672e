// The fused post-LN residual block ops (backend.h: dropout_add_layernorm_forward,
// layernorm_dropout_backward) on the CPU backends (float, double and the bf16 reference): bitwise the op
// sequence they stand for, against a double reference (keep bits from the DropoutKey contract), and the
// backward against central finite differences of the forward in double.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "lib/backend/backend.h"
#include "tests/backend/fused_layernorm_cases.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
struct CpuBackendOf {
  std::unique_ptr<Backend<float>> wide = make_cpu_backend<float>();  // under the bf16 reference
  std::unique_ptr<Backend<T>> be;
  CpuBackendOf() {
    if constexpr (std::is_same_v<T, bfloat16>) {
      be = make_cpu_bf16_backend(*wide);
    } else {
      be = make_cpu_backend<T>();
    }
  }
};

template <typename V>
std::vector<double> as_double(const std::vector<V>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<V, bfloat16>) {
      out[i] = static_cast<float>(v[i]);
    } else {
      out[i] = static_cast<double>(v[i]);
    }
  }
  return out;
}

// ||a - b|| / ||b|| <= tol, or ||a - b|| <= tol when b is 0.
::testing::AssertionResult norm_close(const std::vector<double>& a, const std::vector<double>& b, double tol,
                                      const char* what) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double d2 = 0.0, b2 = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    d2 += (a[i] - b[i]) * (a[i] - b[i]);
    b2 += b[i] * b[i];
  }
  const double rel = b2 > 0.0 ? std::sqrt(d2 / b2) : std::sqrt(d2);
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": relative error " << rel << " > " << tol;
}

template <typename T>
class FusedLayerNormOps : public ::testing::Test {};
using Types = ::testing::Types<float, double, bfloat16>;
TYPED_TEST_SUITE(FusedLayerNormOps, Types);

TYPED_TEST(FusedLayerNormOps, MatchesUnfusedSequenceBitwise) {
  using T = TypeParam;
  CpuBackendOf<T> cpu;
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    const FusedLayerNormRun<T> fused = run_residual_layernorm(*cpu.be, host_bytes, c, true);
    const FusedLayerNormRun<T> unfused = run_residual_layernorm(*cpu.be, host_bytes, c, false);
    EXPECT_TRUE(runs_bitwise_equal(fused, unfused)) << describe(c);
  }
}

// Every output from the inputs in double: the keep bits from the key's contract, res, then LayerNorm of
// the run's own res (so a wrong res fails once, not everywhere) and its backward.
TYPED_TEST(FusedLayerNormOps, AgreesWithDoubleReference) {
  using T = TypeParam;
  // bf16 outputs are rounded to 8 significant bits.
  const double tol = std::is_same_v<T, bfloat16> ? 1e-2 : (std::is_same_v<T, float> ? 1e-5 : 1e-12);
  CpuBackendOf<T> cpu;
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    SCOPED_TRACE(describe(c));
    const FusedLayerNormRun<T> run = run_residual_layernorm(*cpu.be, host_bytes, c, true);
    const FusedLayerNormInputs in = inputs_of(c);
    const DropoutKey key = key_of(c);
    const size_t n = static_cast<size_t>(c.rows) * c.cols;
    // The inputs as the backend saw them (rounded to T).
    const std::vector<double> x = as_double(values_as<T>(in.x)), residual = as_double(values_as<T>(in.residual));
    const std::vector<double> gamma = as_double(values_as<T>(in.gamma)), dy = as_double(values_as<T>(in.dy));
    std::vector<double> beta = as_double(values_as<T>(in.beta));
    if (!c.with_beta) beta.assign(beta.size(), 0.0);

    std::vector<double> keep(n, 1.0), res_ref(n);
    for (size_t i = 0; i < n; ++i) {
      if (c.p > 0.0f) keep[i] = ref::keep_bit(key, c.p, i);
      if (!run.keep.empty()) {
        ASSERT_EQ(run.keep[i], keep[i]) << "keep bit " << i;
      }
      res_ref[i] = residual[i] + x[i] * keep[i] / (1.0 - c.p);
    }
    EXPECT_TRUE(norm_close(as_double(run.res), res_ref, tol, "res"));

    const std::vector<double> res = as_double(run.res);
    const ref::LayerNormOut ln = ref::layernorm(res, gamma, beta, c.rows, c.cols, 1e-5);
    EXPECT_TRUE(norm_close(as_double(run.y), ln.y, tol, "y"));
    EXPECT_TRUE(norm_close(as_double(run.mean), ln.mean, tol, "mean"));
    EXPECT_TRUE(norm_close(as_double(run.rstd), ln.rstd, tol, "rstd"));

    // LayerNorm backward: d_res = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma.
    std::vector<double> d_res(n), dx(n), dgamma = in.dgamma0, dbeta = in.dbeta0;
    for (int r = 0; r < c.rows; ++r) {
      double sum_g = 0.0, sum_gx = 0.0;
      for (int j = 0; j < c.cols; ++j) {
        const size_t i = static_cast<size_t>(r) * c.cols + j;
        const double xhat = (res[i] - ln.mean[r]) * ln.rstd[r];
        sum_g += dy[i] * gamma[j];
        sum_gx += dy[i] * gamma[j] * xhat;
        dgamma[j] += dy[i] * xhat;
        dbeta[j] += dy[i];
      }
      for (int j = 0; j < c.cols; ++j) {
        const size_t i = static_cast<size_t>(r) * c.cols + j;
        const double xhat = (res[i] - ln.mean[r]) * ln.rstd[r];
        d_res[i] = ln.rstd[r] * (dy[i] * gamma[j] - sum_g / c.cols - xhat * sum_gx / c.cols);
      }
    }
    EXPECT_TRUE(norm_close(as_double(run.d_res), d_res, tol, "d_res"));
    EXPECT_TRUE(norm_close(as_double(run.dgamma), dgamma, tol, "dgamma"));
    EXPECT_TRUE(norm_close(as_double(run.dbeta), dbeta, tol, "dbeta"));
    if (c.with_dx) {
      // dropout backward of the run's own d_res
      const std::vector<double> run_d_res = as_double(run.d_res);
      for (size_t i = 0; i < n; ++i) dx[i] = run_d_res[i] * keep[i] / (1.0 - c.p);
      EXPECT_TRUE(norm_close(as_double(run.dx), dx, tol, "dx"));
    }
  }
}

// L = sum(y * R) over x, residual, gamma and beta; dL/dy = R is fed to the fused backward, whose dx,
// d_res, dgamma and dbeta are dL/dx, dL/dresidual, dL/dgamma and dL/dbeta.
TEST(FusedLayerNormGradients, FiniteDifferences) {
  std::unique_ptr<Backend<double>> be = make_cpu_backend<double>();
  const int rows = 4, cols = 9;
  const size_t n = static_cast<size_t>(rows) * cols;
  const float p = 0.3f;
  const DropoutKey key{.seed = 3, .step = 1, .lane = 2, .first_example = 1, .elements_per_example = 2 * cols};
  auto x = random_values(n, 1, -2.0, 2.0), residual = random_values(n, 2, -2.0, 2.0);
  auto gamma = random_values(cols, 3, 0.5, 1.5), beta = random_values(cols, 4);
  const auto R = random_values(n, 5);
  std::vector<double> y(n), res(n), mean(rows), rstd(rows);
  std::vector<uint8_t> keep(n);
  auto loss = [&] {
    be->dropout_add_layernorm_forward(y.data(), res.data(), keep.data(), mean.data(), rstd.data(), x.data(),
                                      residual.data(), gamma.data(), beta.data(), rows, cols, p, key, 1e-5);
    return dot(y, R);
  };
  loss();
  size_t dropped = 0;
  for (uint8_t k : keep) dropped += k == 0;
  ASSERT_GT(dropped, 0u);  // the dropout path is exercised
  std::vector<double> d_res(n), dx(n), dgamma(cols, 0.0), dbeta(cols, 0.0);
  be->layernorm_dropout_backward(d_res.data(), dx.data(), dgamma.data(), dbeta.data(), R.data(), res.data(),
                                 mean.data(), rstd.data(), gamma.data(), keep.data(), rows, cols, p);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
  EXPECT_TRUE(gradient_matches(d_res, numeric_gradient(residual, loss)));
  EXPECT_TRUE(gradient_matches(dgamma, numeric_gradient(gamma, loss)));
  EXPECT_TRUE(gradient_matches(dbeta, numeric_gradient(beta, loss)));
}

}  // namespace
}  // namespace electra::test
