// The CUDA backend's own fused attention, emulated on the CPU: the algorithm of cuda_backend.cpp (per
// head, scores of all examples, row kernels) written as host loops around attention_fused_math.h's
// per-element functions and the keep-bit indexing the kernels use, against the CPU backend's fused
// attention. Runs everywhere (no GPU needed): it checks the arithmetic and the keep bits the GPU kernels
// will use; tests/cuda/fused_attention_test.cpp runs the kernels themselves where there is a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/attention_fused_math.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

struct Emulated {
  std::vector<float> context, stats, dqkv;
};

// Keep bit of probability (b, h, i, j) the way the kernels draw it: groups of four keys of a row.
uint8_t kernel_keep_bit(const DropoutKey& key, float dropout, int b, int H, int h, int S, int i, int j) {
  const int j0 = j / 4 * 4, count = S - j0 < 4 ? S - j0 : 4;
  uint8_t bits[4] = {1, 1, 1, 1};
  cuda::math::dropout_keep_group(bits, key, cuda::math::attention_keep_index(b, H, h, S, i, j0), count, dropout);
  return bits[j - j0];
}

Emulated emulate(const std::vector<float>& qkv, const std::vector<float>& dctx, const std::vector<int32_t>& mask, int B,
                 int S, int H, int D, float dropout, const DropoutKey& key) {
  namespace m = cuda::math;
  const float score_scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  Emulated out{std::vector<float>(static_cast<size_t>(B) * S * H * D, 0.0f),
               std::vector<float>(static_cast<size_t>(B) * H * S), std::vector<float>(qkv.size(), 0.0f)};
  auto at = [&](int b, int s, int which, int h, int d) {
    return ((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d;
  };
  auto ctx_at = [&](int b, int s, int h, int d) { return ((static_cast<size_t>(b) * S + s) * H + h) * D + d; };
  std::vector<float> score(S), p(S), dp(S);
  for (int h = 0; h < H; ++h) {
    for (int b = 0; b < B; ++b) {
      for (int i = 0; i < S; ++i) {
        auto valid = [&](int j) { return mask.empty() || m::attends_key(mask[b * S + i], mask[b * S + j]); };
        for (int j = 0; j < S; ++j) {
          float s = 0.0f;
          for (int d = 0; d < D; ++d) s += qkv[at(b, i, 0, h, d)] * qkv[at(b, j, 1, h, d)];
          score[j] = s * score_scale;
        }
        // fused_softmax_forward_kernel
        float mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j < S; ++j) {
          if (valid(j)) mx = std::fmax(mx, score[j]);
        }
        for (int j = 0; j < S; ++j) {
          p[j] = mx == -INFINITY || !valid(j) ? 0.0f : m::exp_f(score[j] - mx);
          sum += p[j];
        }
        if (mx != -INFINITY) {
          for (int j = 0; j < S; ++j) p[j] *= 1.0f / sum;
        }
        const float lse = m::row_log_sum_exp(mx, sum);
        out.stats[(static_cast<size_t>(b) * H + h) * S + i] = lse;
        for (int j = 0; j < S; ++j) {
          const uint8_t keep = dropout > 0.0f ? kernel_keep_bit(key, dropout, b, H, h, S, i, j) : 1;
          const float attend = dropout > 0.0f ? m::dropped_probability(p[j], keep, keep_scale) : p[j];
          for (int d = 0; d < D; ++d) out.context[ctx_at(b, i, h, d)] += attend * qkv[at(b, j, 2, h, d)];
        }
        // fused_recompute_kernel, then the dv and d(attend) products and fused_softmax_backward_kernel
        float dot = 0.0f;
        for (int j = 0; j < S; ++j) {
          p[j] = m::recomputed_probability(score[j], lse, valid(j));
          const uint8_t keep = dropout > 0.0f ? kernel_keep_bit(key, dropout, b, H, h, S, i, j) : 1;
          const float attend = dropout > 0.0f ? m::dropped_probability(p[j], keep, keep_scale) : p[j];
          float g = 0.0f;
          for (int d = 0; d < D; ++d) {
            out.dqkv[at(b, j, 2, h, d)] += attend * dctx[ctx_at(b, i, h, d)];
            g += dctx[ctx_at(b, i, h, d)] * qkv[at(b, j, 2, h, d)];
          }
          dp[j] = dropout > 0.0f ? m::dropped_probability(g, keep, keep_scale) : g;
          dot += p[j] * dp[j];
        }
        for (int j = 0; j < S; ++j) {
          const float ds = m::score_gradient(p[j], dp[j], dot, score_scale);
          for (int d = 0; d < D; ++d) {
            out.dqkv[at(b, i, 0, h, d)] += ds * qkv[at(b, j, 1, h, d)];
            out.dqkv[at(b, j, 1, h, d)] += ds * qkv[at(b, i, 0, h, d)];
          }
        }
      }
    }
  }
  return out;
}

::testing::AssertionResult near(const std::vector<float>& got, const std::vector<float>& want, double rel) {
  const auto expected = to_double(want);
  return all_near(got, expected, rel, rel * max_abs(expected));
}

// S = 9 (not a multiple of the kernels' four-key groups); padding, a [CLS]-only example, an empty one.
TEST(CudaFusedAttentionMath, EmulatedKernelsMatchTheCpuBackend) {
  const int B = 4, S = 9, H = 2, D = 8;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 21, -2.0, 2.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 22));
  std::vector<int32_t> mask(B * S, 1);
  for (int s = S - 3; s < S; ++s) mask[0 * S + s] = 0;
  for (int s = 1; s < S; ++s) mask[2 * S + s] = 0;
  for (int s = 0; s < S; ++s) mask[3 * S + s] = 0;
  const DropoutKey key{.seed = 3, .step = 5, .lane = 17, .first_example = 11, .elements_per_example = H * S * S};
  auto cpu = make_cpu_backend<float>();
  for (float dropout : {0.0f, 0.1f}) {
    const Emulated e = emulate(qkv, dctx, mask, B, S, H, D, dropout, key);
    std::vector<float> ctx(e.context.size()), stats(e.stats.size()), dqkv(qkv.size());
    cpu->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), B, S, H, D, dropout, key);
    cpu->fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), B, S, H,
                                  D, dropout, key);
    EXPECT_TRUE(near(e.context, ctx, 1e-5)) << "context, dropout " << dropout;
    EXPECT_TRUE(near(e.dqkv, dqkv, 1e-5)) << "dqkv, dropout " << dropout;
    for (size_t r = 0; r < stats.size(); ++r) {
      if (std::isinf(stats[r])) {
        ASSERT_EQ(e.stats[r], stats[r]) << "row " << r;
      } else {
        ASSERT_NEAR(e.stats[r], stats[r], 1e-5 * (1.0 + std::abs(stats[r]))) << "row " << r;
      }
    }
  }
}

// The kernels' rule is backend.h's, and on 0/1 masks the rule before packing (every real key).
TEST(CudaFusedAttentionMath, AttendsKeyIsTheBackendsRule) {
  for (int32_t query = -1; query <= 3; ++query) {
    for (int32_t key = -1; key <= 3; ++key) {
      EXPECT_EQ(cuda::math::attends_key(query, key), attends_key(query, key)) << query << " " << key;
    }
  }
  for (int32_t query : {0, 1}) {
    for (int32_t key : {0, 1}) EXPECT_EQ(cuda::math::attends_key(query, key), key != 0) << query << " " << key;
  }
}

// Packed rows (several examples per row, block-diagonal attention; backend.h's mask), S = 40 so the
// examples straddle the kernels' four-key groups: the emulated kernels against the CPU backend.
TEST(CudaFusedAttentionMath, EmulatedKernelsMatchTheCpuBackendOnPackedRows) {
  const int B = 3, S = 40, H = 2, D = 8;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 24, -2.0, 2.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 25));
  const std::vector<int32_t> mask = packed_rows({{7, 13, 11}, {29}, {1, 30}}, S).mask;
  const DropoutKey key{.seed = 8, .step = 2, .lane = 3, .first_example = 4, .elements_per_example = H * S * S};
  auto cpu = make_cpu_backend<float>();
  for (float dropout : {0.0f, 0.1f}) {
    const Emulated e = emulate(qkv, dctx, mask, B, S, H, D, dropout, key);
    std::vector<float> ctx(e.context.size()), stats(e.stats.size()), dqkv(qkv.size());
    cpu->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), B, S, H, D, dropout, key);
    cpu->fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), B, S, H,
                                  D, dropout, key);
    EXPECT_TRUE(near(e.context, ctx, 1e-5)) << "context, dropout " << dropout;
    EXPECT_TRUE(near(e.dqkv, dqkv, 1e-5)) << "dqkv, dropout " << dropout;
    EXPECT_TRUE(near(e.stats, stats, 1e-5)) << "stats, dropout " << dropout;
  }
}

// Block-diagonal by construction: each example of a packed row gives, bit for bit, what it gives alone in
// a row of its own length (keys outside its example add exact zeros). Padding queries attend every real
// key, so their dcontext is 0 here (the model reads no padding output) to keep them out of the gradients.
TEST(CudaFusedAttentionMath, PackedExamplesAreTheExamplesAlone) {
  const int S = 24, H = 2, D = 4;
  const std::vector<int> lengths = {5, 11, 6};  // then 2 padding tokens
  const std::vector<int32_t> mask = packed_rows({lengths}, S).mask;
  const size_t token_qkv = 3 * H * D, token_ctx = H * D;
  const auto qkv = cast<float>(random_values(S * token_qkv, 26, -2.0, 2.0));
  auto dctx = cast<float>(random_values(S * token_ctx, 27));
  for (int s = 0; s < S; ++s) {
    if (mask[s] == 0) std::fill(dctx.begin() + s * token_ctx, dctx.begin() + (s + 1) * token_ctx, 0.0f);
  }
  const Emulated packed = emulate(qkv, dctx, mask, 1, S, H, D, 0.0f, DropoutKey{});
  int start = 0;
  for (const int n : lengths) {
    const std::vector<float> q(qkv.begin() + start * token_qkv, qkv.begin() + (start + n) * token_qkv),
        d(dctx.begin() + start * token_ctx, dctx.begin() + (start + n) * token_ctx);
    const Emulated alone = emulate(q, d, std::vector<int32_t>(n, 1), 1, n, H, D, 0.0f, DropoutKey{});
    for (size_t e = 0; e < alone.context.size(); ++e) {
      ASSERT_EQ(alone.context[e], packed.context[start * token_ctx + e]) << "example at " << start << ", element " << e;
    }
    for (size_t e = 0; e < alone.dqkv.size(); ++e) {
      ASSERT_EQ(alone.dqkv[e], packed.dqkv[start * token_qkv + e]) << "example at " << start << ", element " << e;
    }
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < n; ++i) ASSERT_EQ(alone.stats[h * n + i], packed.stats[h * S + start + i]);
    }
    start += n;
  }
}

// The kernels' grouped keep bits are the materialised attention's bits (element index by element index).
TEST(CudaFusedAttentionMath, KeepBitsAreAttentionForwardsBits) {
  const int B = 2, S = 7, H = 3, D = 2;
  const DropoutKey key{.seed = 9, .step = 1, .lane = 2, .first_example = 5, .elements_per_example = H * S * S};
  const float dropout = 0.3f;
  auto cpu = make_cpu_backend<float>();
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 23));
  std::vector<float> ctx(static_cast<size_t>(B) * S * H * D), probs(static_cast<size_t>(B) * H * S * S);
  std::vector<uint8_t> keep(probs.size());
  cpu->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), nullptr, B, S, H, D, dropout, key);
  size_t dropped = 0;
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < S; ++i) {
        for (int j = 0; j < S; ++j) {
          const uint64_t index = cuda::math::attention_keep_index(b, H, h, S, i, j);
          ASSERT_EQ(kernel_keep_bit(key, dropout, b, H, h, S, i, j), keep[index]) << index;
          dropped += keep[index] == 0;
        }
      }
    }
  }
  EXPECT_GT(dropped, 0u);
}

TEST(CudaFusedAttentionMath, EmptyRowsRecomputeToZero) {
  namespace m = cuda::math;
  EXPECT_EQ(m::row_log_sum_exp(-INFINITY, 0.0f), INFINITY);
  EXPECT_EQ(m::recomputed_probability(3.0f, INFINITY, true), 0.0f);
  EXPECT_EQ(m::recomputed_probability(3.0f, 1.0f, false), 0.0f);
  // One valid key: its probability is exactly 1 again.
  const float lse = m::row_log_sum_exp(2.5f, 1.0f);
  EXPECT_EQ(lse, 2.5f);
  EXPECT_EQ(m::recomputed_probability(2.5f, lse, true), 1.0f);
  EXPECT_FLOAT_EQ(m::row_log_sum_exp(1.0f, 2.0f), 1.0f + std::log(2.0f));
}

}  // namespace
}  // namespace electra::test
