// cpu::attention_gemm (the register-tiled kernel of attention's per-head products) against the naive
// double product: every transpose pair, shapes that leave partial row tiles, partial 16-column vectors
// and partial 16 x 16 transpose blocks, strided operands as attention passes them, NaN garbage in C
// that beta 0 must not read, and columns past n that must stay untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "lib/backend/cpu/kernels.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
class BackendAttentionGemm : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(BackendAttentionGemm, Types);

TYPED_TEST(BackendAttentionGemm, MatchesNaiveProductForEveryShapeAndTranspose) {
  using T = TypeParam;
  const double rtol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  // (m, n, k): attention's S x S x D and S x D x S at S = 128 and 130 (2 rows past a 6-row tile and past
  // a 16-block), D = 64 and odd sizes down to 1.
  const std::vector<std::tuple<int, int, int>> shapes = {{128, 128, 64}, {128, 64, 128}, {130, 130, 64}, {130, 64, 130},
                                                         {17, 33, 19},   {5, 70, 3},     {1, 1, 1},      {6, 16, 1},
                                                         {12, 65, 48},   {40, 48, 17},   {64, 200, 32}};
  for (auto [m, n, k] : shapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        // Leading dimensions larger than the rows, as attention's q/k/v inside qkv.
        const int lda = (ta ? m : k) + 7, ldb = (tb ? k : n) + 5, ldc = n + 3;
        const auto a = random_values(static_cast<size_t>(ta ? k : m) * lda, 1);
        const auto b = random_values(static_cast<size_t>(tb ? n : k) * ldb, 2);
        std::vector<double> expected(static_cast<size_t>(m) * ldc, 0.0);
        ref::gemm(ta, tb, m, n, k, 0.125, a, lda, b, ldb, 0.0, expected, ldc);
        std::vector<T> c(expected.size(), std::numeric_limits<T>::quiet_NaN());
        const auto at = cast<T>(a), bt = cast<T>(b);
        cpu::attention_gemm<T>(ta ? Transpose::kYes : Transpose::kNo, tb ? Transpose::kYes : Transpose::kNo, m, n, k,
                               T(0.125), at.data(), lda, bt.data(), ldb, c.data(), ldc);
        // Columns n .. ldc-1 are not C's: still NaN. The rest: the product, bounded by sum |a||b|.
        double worst = 0.0;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < ldc; ++j) {
            const size_t e = static_cast<size_t>(i) * ldc + j;
            if (j >= n) {
              ASSERT_TRUE(std::isnan(c[e])) << "wrote past n at i=" << i << " j=" << j;
              continue;
            }
            // |a|, |b| <= 1: the error of a k-term sum is at most k eps relative to 0.125 k.
            const double bound = rtol * (std::abs(expected[e]) + 0.125 * k);
            worst = std::max(worst, std::abs(static_cast<double>(c[e]) - expected[e]) / bound);
          }
        }
        EXPECT_LE(worst, 1.0) << "m=" << m << " n=" << n << " k=" << k << " ta=" << ta << " tb=" << tb;
      }
    }
  }
}

TEST(BackendAttentionGemm, EmptyProductsAndBadSizes) {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, std::nanf(""));
  // k = 0: C = 0 (no terms).
  cpu::attention_gemm<float>(Transpose::kNo, Transpose::kYes, 4, 4, 0, 1.0f, a.data(), 1, b.data(), 1, c.data(), 4);
  for (int e = 0; e < 16; ++e) EXPECT_EQ(c[e], 0.0f) << e;
  EXPECT_THROW(
      cpu::attention_gemm<float>(Transpose::kNo, Transpose::kNo, -1, 4, 4, 1.0f, a.data(), 4, b.data(), 4, c.data(), 4),
      Error);
}

TEST(BackendAttentionGemm, ReportsWhichKernelRuns) {
  // On the project's machines (AMD Zen 4) the own kernel must be the one the benchmarks measured.
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU: OpenBLAS runs";
  EXPECT_TRUE(cpu::attention_gemm_uses_own_kernel());
}

}  // namespace
}  // namespace electra::test
