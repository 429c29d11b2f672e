// Fused (memory-efficient) attention on the CPU backend: the same function as the materialised
// attention_forward / attention_backward (context, dqkv, the dropout keep bits), finite differences in
// double, thread-count independence, supported(). Context, log-sum-exp stats and dqkv against double loops
// are the parity table's (tests/backend/parity/cases_attention.cpp).
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
class FusedAttention : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<T>> be = make_cpu_backend<T>();
  // Fused vs materialised: the same arithmetic up to the recomputed exp(score - lse).
  static constexpr double kRel = sizeof(T) == 4 ? 1e-6 : 1e-12;
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(FusedAttention, Types);

// Padding keys in example 0, a hole in example 1, example 2 all padding except [CLS] (position 0),
// example 3 nothing to attend to.
std::vector<int32_t> padding_mask(int B, int S) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 1);
  for (int s = S - 3; s < S; ++s) mask[0 * S + s] = 0;
  mask[1 * S + 2] = 0;
  for (int s = 1; s < S; ++s) mask[2 * S + s] = 0;
  for (int s = 0; s < S; ++s) mask[3 * S + s] = 0;
  return mask;
}

// Fused and materialised side by side on one input.
template <typename T>
struct BothPaths {
  std::vector<T> ctx_fused, stats, ctx_mat, probs, dqkv_fused, dqkv_mat;
  std::vector<uint8_t> keep;
};
template <typename T>
BothPaths<T> run_both(Backend<T>& be, const std::vector<T>& qkv, const std::vector<T>& dctx,
                      const std::vector<int32_t>& mask, int B, int S, int H, int D, float p, const DropoutKey& key) {
  const size_t probs = static_cast<size_t>(B) * H * S * S, ctx = static_cast<size_t>(B) * S * H * D;
  BothPaths<T> r{std::vector<T>(ctx, T(-9)),
                 std::vector<T>(static_cast<size_t>(B) * H * S, T(-9)),
                 std::vector<T>(ctx),
                 std::vector<T>(probs),
                 std::vector<T>(qkv.size(), T(77)),
                 std::vector<T>(qkv.size()),
                 std::vector<uint8_t>(probs)};
  const int32_t* m = mask.empty() ? nullptr : mask.data();
  be.fused_attention_forward(r.ctx_fused.data(), r.stats.data(), qkv.data(), m, B, S, H, D, p, key);
  be.fused_attention_backward(r.dqkv_fused.data(), dctx.data(), qkv.data(), r.ctx_fused.data(), r.stats.data(), m, B, S,
                              H, D, p, key);
  std::vector<T> scratch(probs);
  be.attention_forward(r.ctx_mat.data(), r.probs.data(), r.keep.data(), qkv.data(), m, B, S, H, D, p, key);
  be.attention_backward(r.dqkv_mat.data(), scratch.data(), dctx.data(), qkv.data(), r.probs.data(), r.keep.data(), m, B,
                        S, H, D, p);
  return r;
}

template <typename T>
::testing::AssertionResult near_materialised(const std::vector<T>& fused, const std::vector<T>& materialised,
                                             double rel) {
  const auto expected = to_double(materialised);
  return all_near(fused, expected, rel, rel * max_abs(expected));
}

TYPED_TEST(FusedAttention, MatchesMaterialisedWithAndWithoutDropout) {
  using T = TypeParam;
  const int B = 4, S = 9, H = 2, D = 8;
  const auto qkv = cast<T>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 1, -2.0, 2.0));
  const auto dctx = cast<T>(random_values(static_cast<size_t>(B) * S * H * D, 2));
  const auto mask = padding_mask(B, S);
  const DropoutKey key{.seed = 5, .step = 2, .lane = 9, .first_example = 40, .elements_per_example = H * S * S};
  for (float p : {0.0f, 0.1f}) {
    const auto r = run_both(*this->be, qkv, dctx, mask, B, S, H, D, p, key);
    // With dropout the materialised context only matches if the fused path drew the same keep bits.
    EXPECT_TRUE(near_materialised(r.ctx_fused, r.ctx_mat, this->kRel)) << "context, p=" << p;
    EXPECT_TRUE(near_materialised(r.dqkv_fused, r.dqkv_mat, this->kRel)) << "dqkv, p=" << p;
    // The [CLS]-only example attends to position 0 alone: its context is exactly the value row 0 (scaled
    // by the keep factor), and the fully padded example gets context 0 and no gradient.
    if (p == 0.0f) {
      for (int i = 0; i < S; ++i) {
        for (int hd = 0; hd < H * D; ++hd) {
          ASSERT_EQ(r.ctx_fused[(2 * S + i) * H * D + hd], qkv[(2 * S + 0) * 3 * H * D + 2 * H * D + hd]) << i;
        }
      }
    }
    for (size_t i = 3 * S * H * D; i < 4 * S * H * D; ++i) ASSERT_EQ(r.ctx_fused[i], T(0)) << i;
    for (size_t i = 3 * S * 3 * H * D; i < 4 * S * 3 * H * D; ++i) ASSERT_EQ(r.dqkv_fused[i], T(0)) << i;
  }
  // Dropout changes the result (the keep bits are really applied).
  const auto r0 = run_both(*this->be, qkv, dctx, mask, B, S, H, D, 0.0f, key);
  const auto r1 = run_both(*this->be, qkv, dctx, mask, B, S, H, D, 0.1f, key);
  EXPECT_FALSE(near_materialised(r1.ctx_fused, r0.ctx_fused, 1e-3));
}

// Packed rows: block-diagonal over each row's examples; padding queries attend every real key.
TYPED_TEST(FusedAttention, MatchesMaterialisedWithPackedRows) {
  using T = TypeParam;
  const int B = 3, S = 10, H = 2, D = 8;
  const auto qkv = cast<T>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 11, -2.0, 2.0));
  const auto dctx = cast<T>(random_values(static_cast<size_t>(B) * S * H * D, 12));
  const auto mask = packed_rows({{4, 1, 3}, {10}, {2, 5}}, S).mask;
  const DropoutKey key{.seed = 5, .step = 2, .lane = 9, .first_example = 40, .elements_per_example = H * S * S};
  for (float p : {0.0f, 0.1f}) {
    const auto r = run_both(*this->be, qkv, dctx, mask, B, S, H, D, p, key);
    EXPECT_TRUE(near_materialised(r.ctx_fused, r.ctx_mat, this->kRel)) << "context, p=" << p;
    EXPECT_TRUE(near_materialised(r.dqkv_fused, r.dqkv_mat, this->kRel)) << "dqkv, p=" << p;
    // The one-token example (row 0, position 4) attends to itself alone.
    if (p == 0.0f) {
      for (int hd = 0; hd < H * D; ++hd) ASSERT_EQ(r.ctx_fused[4 * H * D + hd], qkv[4 * 3 * H * D + 2 * H * D + hd]);
    }
    // Exact zeros outside each query's block: in row 2, query 1 (example 1) and key 3 (example 2).
    for (int h = 0; h < H; ++h) {
      ASSERT_EQ(r.probs[((2 * H + h) * S + 1) * S + 3], T(0));
      ASSERT_EQ(r.probs[((2 * H + h) * S + 3) * S + 1], T(0));
    }
  }
}

TYPED_TEST(FusedAttention, WithoutMaskEqualsAllOnesMask) {
  using T = TypeParam;
  const int B = 2, S = 6, H = 3, D = 4;
  const auto qkv = cast<T>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 3, -1.5, 1.5));
  const auto dctx = cast<T>(random_values(static_cast<size_t>(B) * S * H * D, 4));
  const DropoutKey key{.seed = 1, .step = 7, .lane = 3, .first_example = 0, .elements_per_example = H * S * S};
  const auto none = run_both(*this->be, qkv, dctx, {}, B, S, H, D, 0.2f, key);
  const auto ones = run_both(*this->be, qkv, dctx, std::vector<int32_t>(B * S, 1), B, S, H, D, 0.2f, key);
  EXPECT_EQ(none.ctx_fused, ones.ctx_fused);
  EXPECT_EQ(none.dqkv_fused, ones.dqkv_fused);
  EXPECT_TRUE(near_materialised(none.dqkv_fused, none.dqkv_mat, this->kRel));
}

TYPED_TEST(FusedAttention, IndependentOfTheThreadCount) {
  using T = TypeParam;
  const int B = 4, S = 11, H = 2, D = 4;
  const auto qkv = cast<T>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 6, -2.0, 2.0));
  const auto dctx = cast<T>(random_values(static_cast<size_t>(B) * S * H * D, 7));
  const auto mask = padding_mask(B, S);
  const DropoutKey key{.seed = 2, .step = 1, .lane = 4, .first_example = 9, .elements_per_example = H * S * S};
  const int saved = omp_get_max_threads();
  std::vector<BothPaths<T>> runs;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    runs.push_back(run_both(*this->be, qkv, dctx, mask, B, S, H, D, 0.1f, key));
  }
  omp_set_num_threads(saved);
  for (size_t t = 1; t < runs.size(); ++t) {
    EXPECT_EQ(runs[t].ctx_fused, runs[0].ctx_fused) << "threads " << t + 1;
    EXPECT_EQ(runs[t].stats, runs[0].stats) << "threads " << t + 1;
    EXPECT_EQ(runs[t].dqkv_fused, runs[0].dqkv_fused) << "threads " << t + 1;
  }
}

TYPED_TEST(FusedAttention, SupportedForEveryValidShape) {
  auto& be = *this->be;
  EXPECT_TRUE(be.fused_attention_supported(32, 128, 4, 64, 0.1f));
  EXPECT_TRUE(be.fused_attention_supported(1, 1, 1, 1, 0.0f));
  EXPECT_TRUE(be.fused_attention_supported(8, 512, 12, 64, 0.0f));
  EXPECT_TRUE(be.fused_attention_supported(3, 7, 3, 5, 0.9f));
  EXPECT_FALSE(be.fused_attention_supported(2, 0, 4, 64, 0.1f));
  EXPECT_FALSE(be.fused_attention_supported(2, 16, 4, 64, 1.0f));
  using T = TypeParam;
  std::vector<T> qkv(3 * 4 * 2), out(2 * 4), stats(2);
  EXPECT_THROW(be.fused_attention_forward(out.data(), stats.data(), qkv.data(), nullptr, 1, 2, 1, 4, 1.0f, {}), Error);
}

// Finite differences in double through the fused pair alone, with padding, a [CLS]-only example and
// dropout (the key fixes the keep bits, so every forward of the stencil drops the same probabilities).
TEST(FusedAttentionGradients, FiniteDifferencesInDouble) {
  auto be = make_cpu_backend<double>();
  const int B = 4, S = 5, H = 2, D = 3;
  for (float p : {0.0f, 0.3f}) {
    auto qkv = random_values(static_cast<size_t>(B) * S * 3 * H * D, 8, -1.5, 1.5);
    const auto mask = padding_mask(B, S);
    const DropoutKey key{.seed = 8, .step = 3, .lane = 1, .first_example = 2, .elements_per_example = H * S * S};
    const auto R = random_values(static_cast<size_t>(B) * S * H * D, 9);
    std::vector<double> ctx(R.size()), stats(static_cast<size_t>(B) * H * S);
    auto loss = [&] {
      be->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), B, S, H, D, p, key);
      return dot(ctx, R);
    };
    loss();
    std::vector<double> dqkv(qkv.size());
    be->fused_attention_backward(dqkv.data(), R.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), B, S, H, D,
                                 p, key);
    EXPECT_TRUE(gradient_matches(dqkv, numeric_gradient(qkv, loss))) << "dropout " << p;
  }
}

}  // namespace
}  // namespace electra::test
