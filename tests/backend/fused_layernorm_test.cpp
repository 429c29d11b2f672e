// The fused post-LN residual block ops (backend.h: dropout_add_layernorm_forward,
// layernorm_dropout_backward) on the CPU backends (float, double and the bf16 reference): bitwise the op
// sequence they stand for, and the backward against central finite differences of the forward in double.
// Every output against double loops (keep bits from the DropoutKey contract) is the parity table's
// (tests/backend/parity/cases_normalisation.cpp).
#include <gtest/gtest.h>

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
