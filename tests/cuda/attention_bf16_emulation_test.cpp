// The CUDA bf16 backend's own attention (cuda_bf16_backend.cpp, attention_bf16.cu, attention_fused.cu),
// emulated on the CPU: per head, fp32 scores from bf16 q and k, the row kernels' per-element arithmetic
// (attention_fused_math.h) and keep bits, and the GEMM operands the kernels round to bf16 (probabilities,
// dropped probabilities, score gradients), against the CPU bf16 reference (make_cpu_bf16_backend: widen,
// float op, narrow), with the tolerances tests/cuda/bf16_backend_test.cpp holds the GPU to. Runs
// everywhere: it checks that rounding those operands stays inside the bf16 tolerances, and that the keep
// bits are the reference's, with right padding and with packed rows (block-diagonal masks); CudaBf16Ops
// and CudaFusedAttention run the kernels themselves where there is a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/attention_fused_math.h"
#include "lib/core/bfloat16.h"
#include "tests/backend/test_util.h"
#include "tests/cuda/attention_masks.h"

namespace electra::test {
namespace {

namespace m = cuda::math;
using Bf16 = std::vector<bfloat16>;

Bf16 to_bf16(const std::vector<double>& x) {
  Bf16 out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bfloat16(static_cast<float>(x[i]));
  return out;
}
std::vector<double> values(const Bf16& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(x[i]);
  return out;
}
float wide(bfloat16 x) { return static_cast<float>(x); }
float rounded(float x) { return round_to_bfloat16(x); }

// Keep bit of probability (b, h, i, j) as the kernels draw it: groups of four keys of a row.
uint8_t kernel_keep_bit(const DropoutKey& key, float dropout, int b, int H, int h, int S, int i, int j) {
  const int j0 = j / 4 * 4, count = S - j0 < 4 ? S - j0 : 4;
  uint8_t bits[4] = {1, 1, 1, 1};
  m::dropout_keep_group(bits, key, m::attention_keep_index(b, H, h, S, i, j0), count, dropout);
  return bits[j - j0];
}

struct Shape {
  int B, S, H, D;
  size_t qkv(int b, int s, int which, int h, int d) const {
    return ((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d;
  }
  size_t ctx(int b, int s, int h, int d) const { return ((static_cast<size_t>(b) * S + s) * H + h) * D + d; }
  size_t prob(int b, int h, int i, int j) const { return m::attention_keep_index(b, H, h, S, i, j); }
};

// One head's [S,S] block of example b: the fp32 scaled scores of bf16 q and k (the scores GEMM).
std::vector<float> scores_of(const Shape& a, const Bf16& qkv, int b, int h) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.D));
  std::vector<float> s(static_cast<size_t>(a.S) * a.S);
  for (int i = 0; i < a.S; ++i) {
    for (int j = 0; j < a.S; ++j) {
      float dot = 0.0f;
      for (int d = 0; d < a.D; ++d) dot += wide(qkv[a.qkv(b, i, 0, h, d)]) * wide(qkv[a.qkv(b, j, 1, h, d)]);
      s[static_cast<size_t>(i) * a.S + j] = scale * dot;
    }
  }
  return s;
}

// The row kernels' softmax (bf16_softmax_forward_kernel, fused_softmax_forward_kernel) of query i:
// probabilities in place, the row's stats returned.
float softmax_row(float* p, const int32_t* mask_row, int i, int S) {
  float mx = -INFINITY, sum = 0.0f;
  for (int j = 0; j < S; ++j) {
    if (m::attends_key(mask_row[i], mask_row[j])) mx = std::fmax(mx, p[j]);
  }
  for (int j = 0; j < S; ++j) {
    p[j] = mx == -INFINITY || !m::attends_key(mask_row[i], mask_row[j]) ? 0.0f : m::exp_f(p[j] - mx);
    sum += p[j];
  }
  if (mx != -INFINITY) {
    const float inv = 1.0f / sum;
    for (int j = 0; j < S; ++j) p[j] *= inv;
  }
  return m::row_log_sum_exp(mx, sum);
}

// The products after the probabilities, from bf16 operands as the kernels round them: context += attend v
// (forward), or dv += attend^T dctx, d(attend) = dctx v^T, then d(scores) through `score_grad` and dq, dk
// (backward). `attend` and the returned d(scores) are [S,S] blocks of head h, example b.
struct Products {
  std::vector<float> context, dqkv;  // fp32 sums, rounded at the end
};

void add_context(const Shape& a, Products& out, const Bf16& qkv, const std::vector<float>& attend, int b, int h) {
  for (int i = 0; i < a.S; ++i) {
    for (int j = 0; j < a.S; ++j) {
      const float p = rounded(attend[static_cast<size_t>(i) * a.S + j]);  // the bf16 operand
      for (int d = 0; d < a.D; ++d) out.context[a.ctx(b, i, h, d)] += p * wide(qkv[a.qkv(b, j, 2, h, d)]);
    }
  }
}

// d(attend) [S,S] = dctx v^T (fp32), and dv += attend^T dctx.
std::vector<float> value_products(const Shape& a, Products& out, const Bf16& qkv, const Bf16& dctx,
                                  const std::vector<float>& attend, int b, int h) {
  std::vector<float> dattend(static_cast<size_t>(a.S) * a.S);
  for (int i = 0; i < a.S; ++i) {
    for (int j = 0; j < a.S; ++j) {
      const float p = rounded(attend[static_cast<size_t>(i) * a.S + j]);
      float g = 0.0f;
      for (int d = 0; d < a.D; ++d) {
        out.dqkv[a.qkv(b, j, 2, h, d)] += p * wide(dctx[a.ctx(b, i, h, d)]);
        g += wide(dctx[a.ctx(b, i, h, d)]) * wide(qkv[a.qkv(b, j, 2, h, d)]);
      }
      dattend[static_cast<size_t>(i) * a.S + j] = g;
    }
  }
  return dattend;
}

void query_key_products(const Shape& a, Products& out, const Bf16& qkv, const std::vector<float>& ds, int b, int h) {
  for (int i = 0; i < a.S; ++i) {
    for (int j = 0; j < a.S; ++j) {
      const float g = rounded(ds[static_cast<size_t>(i) * a.S + j]);  // the bf16 operand
      for (int d = 0; d < a.D; ++d) {
        out.dqkv[a.qkv(b, i, 0, h, d)] += g * wide(qkv[a.qkv(b, j, 1, h, d)]);
        out.dqkv[a.qkv(b, j, 1, h, d)] += g * wide(qkv[a.qkv(b, i, 0, h, d)]);
      }
    }
  }
}

// d(scores) of a row from its probabilities and d(dropped probabilities) (already through keep).
void score_gradients(float* ds, const float* p, const float* dp, int S, float score_scale) {
  float dot = 0.0f;
  for (int j = 0; j < S; ++j) dot += p[j] * dp[j];
  for (int j = 0; j < S; ++j) ds[j] = m::score_gradient(p[j], dp[j], dot, score_scale);
}

Bf16 narrowed(const std::vector<float>& x) {
  Bf16 out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bfloat16(x[i]);
  return out;
}

struct Materialised {
  Bf16 context, probs, dqkv;
  std::vector<uint8_t> keep;
};

// attention_forward, then attention_backward from `probs_in` (the reference's probabilities, as the GPU
// test feeds them).
Materialised emulate_materialised(const Shape& a, const Bf16& qkv, const Bf16& dctx, const Bf16& probs_in,
                                  const std::vector<int32_t>& mask, float dropout, const DropoutKey& key) {
  const int S = a.S;
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  const float score_scale = 1.0f / std::sqrt(static_cast<float>(a.D));
  Products out{std::vector<float>(static_cast<size_t>(a.B) * S * a.H * a.D, 0.0f),
               std::vector<float>(qkv.size(), 0.0f)};
  Materialised r;
  r.probs.resize(static_cast<size_t>(a.B) * a.H * S * S);
  r.keep.resize(r.probs.size());
  for (int h = 0; h < a.H; ++h) {
    for (int b = 0; b < a.B; ++b) {
      // forward: bf16 probabilities out; attend = them, or the dropped fp32 probabilities (rounded by
      // add_context as the GEMM operand).
      std::vector<float> p = scores_of(a, qkv, b, h), attend(p.size());
      for (int i = 0; i < S; ++i) {
        float* row = p.data() + static_cast<size_t>(i) * S;
        softmax_row(row, mask.data() + static_cast<size_t>(b) * S, i, S);
        for (int j = 0; j < S; ++j) {
          const uint8_t bit = dropout > 0.0f ? kernel_keep_bit(key, dropout, b, a.H, h, S, i, j) : 1;
          r.keep[a.prob(b, h, i, j)] = bit;
          r.probs[a.prob(b, h, i, j)] = bfloat16(row[j]);
          attend[static_cast<size_t>(i) * S + j] =
              dropout > 0.0f ? m::dropped_probability(row[j], bit, keep_scale) : wide(r.probs[a.prob(b, h, i, j)]);
        }
      }
      add_context(a, out, qkv, attend, b, h);
      // backward from probs_in
      std::vector<float> pin(p.size());
      for (int i = 0; i < S; ++i) {
        for (int j = 0; j < S; ++j) {
          const float pj = wide(probs_in[a.prob(b, h, i, j)]);
          pin[static_cast<size_t>(i) * S + j] = pj;
          attend[static_cast<size_t>(i) * S + j] =
              dropout > 0.0f ? m::dropped_probability(pj, r.keep[a.prob(b, h, i, j)], keep_scale) : pj;
        }
      }
      std::vector<float> dp = value_products(a, out, qkv, dctx, attend, b, h), ds(dp.size());
      for (size_t e = 0; e < dp.size(); ++e) {
        if (dropout > 0.0f) dp[e] = m::dropped_probability(dp[e], r.keep[a.prob(b, h, 0, 0) + e], keep_scale);
      }
      for (int i = 0; i < S; ++i) {
        const size_t o = static_cast<size_t>(i) * S;
        score_gradients(ds.data() + o, pin.data() + o, dp.data() + o, S, score_scale);
      }
      query_key_products(a, out, qkv, ds, b, h);
    }
  }
  r.context = narrowed(out.context);
  r.dqkv = narrowed(out.dqkv);
  return r;
}

struct Fused {
  Bf16 context, dqkv;
  std::vector<float> stats;
};

// fused_attention_forward / _backward through our kernels (the calls cuDNN does not serve).
Fused emulate_fused(const Shape& a, const Bf16& qkv, const Bf16& dctx, const std::vector<int32_t>& mask, float dropout,
                    const DropoutKey& key) {
  const int S = a.S;
  const float keep_scale = dropout > 0.0f ? 1.0f / (1.0f - dropout) : 1.0f;
  const float score_scale = 1.0f / std::sqrt(static_cast<float>(a.D));
  Products out{std::vector<float>(static_cast<size_t>(a.B) * S * a.H * a.D, 0.0f),
               std::vector<float>(qkv.size(), 0.0f)};
  Fused r;
  r.stats.resize(static_cast<size_t>(a.B) * a.H * S);
  for (int h = 0; h < a.H; ++h) {
    for (int b = 0; b < a.B; ++b) {
      const int32_t* mask_row = mask.data() + static_cast<size_t>(b) * S;
      const std::vector<float> scores = scores_of(a, qkv, b, h);
      std::vector<float> p = scores, attend(p.size());
      for (int i = 0; i < S; ++i) {
        float* row = p.data() + static_cast<size_t>(i) * S;
        r.stats[(static_cast<size_t>(b) * a.H + h) * S + i] = softmax_row(row, mask_row, i, S);
        for (int j = 0; j < S; ++j) {
          const uint8_t bit = dropout > 0.0f ? kernel_keep_bit(key, dropout, b, a.H, h, S, i, j) : 1;
          attend[static_cast<size_t>(i) * S + j] =
              dropout > 0.0f ? m::dropped_probability(row[j], bit, keep_scale) : row[j];
        }
      }
      add_context(a, out, qkv, attend, b, h);
      // backward: probabilities again from the stats
      for (int i = 0; i < S; ++i) {
        const float lse = r.stats[(static_cast<size_t>(b) * a.H + h) * S + i];
        for (int j = 0; j < S; ++j) {
          const size_t e = static_cast<size_t>(i) * S + j;
          p[e] = m::recomputed_probability(scores[e], lse, m::attends_key(mask_row[i], mask_row[j]));
          const uint8_t bit = dropout > 0.0f ? kernel_keep_bit(key, dropout, b, a.H, h, S, i, j) : 1;
          attend[e] = dropout > 0.0f ? m::dropped_probability(p[e], bit, keep_scale) : p[e];
        }
      }
      std::vector<float> dp = value_products(a, out, qkv, dctx, attend, b, h), ds(dp.size());
      for (int i = 0; i < S; ++i) {
        for (int j = 0; j < S; ++j) {
          const size_t e = static_cast<size_t>(i) * S + j;
          if (dropout > 0.0f) {
            dp[e] = m::dropped_probability(dp[e], kernel_keep_bit(key, dropout, b, a.H, h, S, i, j), keep_scale);
          }
        }
        const size_t o = static_cast<size_t>(i) * S;
        score_gradients(ds.data() + o, p.data() + o, dp.data() + o, S, score_scale);
      }
      query_key_products(a, out, qkv, ds, b, h);
    }
  }
  r.context = narrowed(out.context);
  r.dqkv = narrowed(out.dqkv);
  return r;
}

// bf16_backend_test.cpp's checks: elementwise |got - want| <= 1e-2 |want| + floor * max|want|, and
// norm-wise. Outputs of a product whose operand the kernels round (context, dqkv) get the floor
// kOperandFloor there: rounding the probabilities (or score gradients) of a row, whose weights sum to 1 /
// (1 - dropout), moves an output by up to 2^-9 of the row's largest value term, which cancellation can
// leave large next to the element itself (the emulation needs about 1.2e-3 of max|want|).
constexpr double kOperandFloor = 5e-3;
::testing::AssertionResult close(const Bf16& got, const Bf16& want, double rtol = 1e-2, double floor = 1e-3) {
  const auto w = values(want);
  return all_near(values(got), w, rtol, floor * std::max(1e-30, max_abs(w)));
}
// The largest |got - want| as a fraction of max|want| (what the floor of `close` must cover).
double worst_floor(const Bf16& got, const Bf16& want) {
  const auto g = values(got), w = values(want);
  double worst = 0.0;
  for (size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::abs(g[i] - w[i]) - 1e-2 * std::abs(w[i]));
  return worst / std::max(1e-30, max_abs(w));
}
double normwise_error(const std::vector<double>& g, const std::vector<double>& w) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < w.size(); ++i) {
    diff += (g[i] - w[i]) * (g[i] - w[i]);
    norm += w[i] * w[i];
  }
  return std::sqrt(diff) / std::max(1e-300, std::sqrt(norm));
}

struct Case {
  Shape shape;
  float dropout;
  bool packed = false;  // packed rows (tests/backend/test_util.h's packed_rows) instead of right padding
};
std::vector<int32_t> mask_of(const Case& c) {
  return c.packed ? packed_rows(c.shape.B, c.shape.S).mask : right_padded_mask(c.shape.B, c.shape.S);
}

TEST(CudaBf16AttentionMath, EmulatedMaterialisedAttentionIsWithinTheBf16Tolerances) {
  auto cpu_float = make_cpu_backend<float>();
  auto cpu = make_cpu_bf16_backend(*cpu_float);
  for (const Case& c : {Case{{3, 37, 2, 16}, 0.0f}, Case{{3, 37, 2, 16}, 0.1f}, Case{{2, 70, 3, 24}, 0.1f},
                        Case{{3, 37, 2, 16}, 0.0f, true}, Case{{3, 70, 3, 24}, 0.1f, true}}) {
    const Shape& a = c.shape;
    const size_t nqkv = static_cast<size_t>(a.B) * a.S * 3 * a.H * a.D, nctx = nqkv / 3,
                 np = static_cast<size_t>(a.B) * a.H * a.S * a.S;
    const Bf16 qkv = to_bf16(random_values(nqkv, 1, -2.0, 2.0)), dctx = to_bf16(random_values(nctx, 2));
    const auto mask = mask_of(c);
    const DropoutKey key{.seed = 4,
                         .step = 7,
                         .lane = 2,
                         .first_example = 30,
                         .elements_per_example = static_cast<uint64_t>(a.H) * a.S * a.S};
    Bf16 ctx(nctx), probs(np), dqkv(nqkv), scratch(np);
    std::vector<uint8_t> keep(np);
    cpu->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), a.B, a.S, a.H, a.D,
                           c.dropout, key);
    cpu->attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(),
                            mask.data(), a.B, a.S, a.H, a.D, c.dropout);
    const Materialised e = emulate_materialised(a, qkv, dctx, probs, mask, c.dropout, key);
    const std::string what =
        "S " + std::to_string(a.S) + " p " + std::to_string(c.dropout) + (c.packed ? " packed" : "");
    EXPECT_EQ(e.keep, keep) << what;
    EXPECT_TRUE(close(e.probs, probs)) << what;
    EXPECT_TRUE(close(e.context, ctx, 1e-2, kOperandFloor)) << what;
    EXPECT_TRUE(close(e.dqkv, dqkv, 1e-2, kOperandFloor)) << what;
    const double ctx_err = normwise_error(values(e.context), values(ctx)),
                 dqkv_err = normwise_error(values(e.dqkv), values(dqkv));
    EXPECT_LE(ctx_err, 1e-2) << what;
    EXPECT_LE(dqkv_err, 1e-2) << what;
    std::printf("materialised %s: norm-wise context %.2e dqkv %.2e, floor context %.2e dqkv %.2e\n", what.c_str(),
                ctx_err, dqkv_err, worst_floor(e.context, ctx), worst_floor(e.dqkv, dqkv));
  }
}

// Dropout > 0, and a head size cuDNN does not take (D = 12): the calls our fused kernels serve.
TEST(CudaBf16AttentionMath, EmulatedFusedAttentionIsWithinTheBf16Tolerances) {
  auto cpu_float = make_cpu_backend<float>();
  auto cpu = make_cpu_bf16_backend(*cpu_float);
  for (const Case& c : {Case{{3, 37, 2, 16}, 0.1f}, Case{{3, 37, 2, 12}, 0.0f}, Case{{2, 70, 3, 24}, 0.1f},
                        Case{{3, 37, 2, 12}, 0.0f, true}, Case{{3, 70, 3, 24}, 0.1f, true}}) {
    const Shape& a = c.shape;
    const size_t nqkv = static_cast<size_t>(a.B) * a.S * 3 * a.H * a.D, nctx = nqkv / 3,
                 nstats = static_cast<size_t>(a.B) * a.H * a.S;
    const Bf16 qkv = to_bf16(random_values(nqkv, 1, -2.0, 2.0)), dctx = to_bf16(random_values(nctx, 2));
    const auto mask = mask_of(c);
    const DropoutKey key{.seed = 4,
                         .step = 7,
                         .lane = 2,
                         .first_example = 30,
                         .elements_per_example = static_cast<uint64_t>(a.H) * a.S * a.S};
    Bf16 ctx(nctx), dqkv(nqkv);
    std::vector<float> stats(nstats);
    cpu->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), a.B, a.S, a.H, a.D, c.dropout, key);
    cpu->fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), a.B, a.S,
                                  a.H, a.D, c.dropout, key);
    const Fused e = emulate_fused(a, qkv, dctx, mask, c.dropout, key);
    const std::string what = "S " + std::to_string(a.S) + " D " + std::to_string(a.D) + " p " +
                             std::to_string(c.dropout) + (c.packed ? " packed" : "");
    const double ctx_err = normwise_error(values(e.context), values(ctx)),
                 dqkv_err = normwise_error(values(e.dqkv), values(dqkv));
    EXPECT_LE(ctx_err, 1e-2) << what;
    EXPECT_LE(dqkv_err, 1e-2) << what;
    EXPECT_TRUE(close(e.context, ctx, 1e-2, kOperandFloor)) << what;
    EXPECT_TRUE(close(e.dqkv, dqkv, 1e-2, kOperandFloor)) << what;
    // The stats are the float path's (fp32 scores of the same bf16 values): sums in another order only.
    EXPECT_TRUE(all_near(to_double(e.stats), to_double(stats), 1e-4, 1e-4 * max_abs(to_double(stats)))) << what;
    std::printf("fused %s: norm-wise context %.2e dqkv %.2e, floor context %.2e dqkv %.2e\n", what.c_str(), ctx_err,
                dqkv_err, worst_floor(e.context, ctx), worst_floor(e.dqkv, dqkv));
  }
}

}  // namespace
}  // namespace electra::test
