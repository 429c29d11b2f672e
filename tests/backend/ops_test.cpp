// Every CPU op, in float and double, against a naive double-precision loop written here.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

template <typename T>
class BackendOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<T>> be = make_cpu_backend<T>();
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(BackendOps, Types);

TEST(BackendActivation, ParseAndPrint) {
  EXPECT_EQ(parse_activation("gelu"), Activation::kGelu);
  EXPECT_EQ(parse_activation("relu"), Activation::kRelu);
  EXPECT_EQ(parse_activation("tanh"), Activation::kTanh);
  EXPECT_EQ(parse_activation("none"), Activation::kNone);
  EXPECT_EQ(parse_activation("linear"), Activation::kNone);
  EXPECT_THROW(parse_activation("swish"), Error);
  for (Activation a : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    EXPECT_EQ(parse_activation(to_string(a)), a);
  }
}

TYPED_TEST(BackendOps, MemoryIsAlignedAndCopiesRoundTrip) {
  using T = TypeParam;
  auto& be = *this->be;
  EXPECT_EQ(be.device(), DeviceKind::kCpu);
  T* buf = be.allocate(1001);
  int32_t* ints = be.allocate_ints(13);
  uint8_t* bytes = be.allocate_bytes(7);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ints) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes) % 64, 0u);
  const auto src = cast<T>(random_values(1001, 1));
  be.copy_from_host(buf, src.data(), src.size());
  std::vector<T> back(1001);
  be.copy_to_host(back.data(), buf, back.size());
  EXPECT_EQ(std::memcmp(back.data(), src.data(), src.size() * sizeof(T)), 0);
  T* other = be.allocate(1001);
  be.copy(other, buf, 1001);
  be.copy_to_host(back.data(), other, back.size());
  EXPECT_EQ(std::memcmp(back.data(), src.data(), src.size() * sizeof(T)), 0);
  be.fill(other, 1001, T(2.5));
  be.copy_to_host(back.data(), other, back.size());
  for (T v : back) ASSERT_EQ(v, T(2.5));
  const std::vector<int32_t> is = {1, -2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  std::vector<int32_t> is_back(13);
  be.copy_ints_from_host(ints, is.data(), 13);
  be.copy_ints_to_host(is_back.data(), ints, 13);
  EXPECT_EQ(is, is_back);
  be.synchronize();
  be.deallocate(buf);
  be.deallocate(other);
  be.deallocate_ints(ints);
  be.deallocate_bytes(bytes);
}

TYPED_TEST(BackendOps, GemmAllTransposesWithLeadingDimensions) {
  using T = TypeParam;
  // One small product (a single BLAS call) and two split over threads, by columns and by rows.
  for (auto [m, n, k] : {std::tuple{7, 9, 11}, std::tuple{70, 90, 400}, std::tuple{90, 70, 400}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
        const auto a = random_values(static_cast<size_t>(ta ? k : m) * lda, 1);
        const auto b = random_values(static_cast<size_t>(tb ? n : k) * ldb, 2);
        auto c = random_values(static_cast<size_t>(m) * ldc, 3);
        auto ct = cast<T>(c);
        const auto at = cast<T>(a), bt = cast<T>(b);
        this->be->gemm(ta ? Transpose::kYes : Transpose::kNo, tb ? Transpose::kYes : Transpose::kNo, m, n, k, T(0.75),
                       at.data(), lda, bt.data(), ldb, T(-0.5), ct.data(), ldc);
        ref::gemm(ta, tb, m, n, k, 0.75, a, lda, b, ldb, -0.5, c, ldc);
        EXPECT_TRUE(close_to_reference(ct, c)) << "ta=" << ta << " tb=" << tb << " m=" << m;
      }
    }
  }
}

TYPED_TEST(BackendOps, GemmBetaZeroIgnoresGarbage) {
  using T = TypeParam;
  const int m = 4, n = 5, k = 3;
  const auto a = random_values(m * k, 1), b = random_values(k * n, 2);
  std::vector<double> c(m * n, 0.0);
  std::vector<T> ct(m * n, std::numeric_limits<T>::quiet_NaN());
  this->be->gemm(Transpose::kNo, Transpose::kNo, m, n, k, T(1), cast<T>(a).data(), k, cast<T>(b).data(), n, T(0),
                 ct.data(), n);
  ref::gemm(false, false, m, n, k, 1.0, a, k, b, n, 0.0, c, n);
  EXPECT_TRUE(close_to_reference(ct, c));
  EXPECT_THROW(
      this->be->gemm(Transpose::kNo, Transpose::kNo, m, n, k, T(1), nullptr, k - 1, nullptr, n, T(0), ct.data(), n),
      Error);
}

TYPED_TEST(BackendOps, GemmStridedBatchedSmallAndLarge) {
  using T = TypeParam;
  // Small products run one per thread; the large one (>= 64 MFLOP) is split over the threads instead.
  struct Shape {
    int m, n, k, batch;
  };
  for (const Shape& sh : {Shape{6, 4, 7, 5}, Shape{260, 131, 261, 3}, Shape{400, 300, 300, 2}}) {
    const int m = sh.m, n = sh.n, k = sh.k, batch = sh.batch;
    const int lda = m, ldb = k, ldc = n;  // A and B transposed: stored [k, m] and [n, k]
    const long long sa = static_cast<long long>(k) * lda + 7, sb = static_cast<long long>(n) * ldb + 3,
                    sc = static_cast<long long>(m) * ldc + 1;
    const auto a = random_values(sa * batch, 4), b = random_values(sb * batch, 5);
    auto c = random_values(sc * batch, 6);
    auto ct = cast<T>(c);
    this->be->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, T(1.5), cast<T>(a).data(), lda, sa,
                                   cast<T>(b).data(), ldb, sb, T(0.25), ct.data(), ldc, sc, batch);
    for (int i = 0; i < batch; ++i) {
      ref::gemm(true, true, m, n, k, 1.5, a, lda, b, ldb, 0.25, c, ldc, i * sa, i * sb, i * sc);
    }
    EXPECT_TRUE(close_to_reference(ct, c)) << "m " << m;
  }
}

TYPED_TEST(BackendOps, LinearForwardAndBackward) {
  using T = TypeParam;
  const int rows = 37, in = 19, out = 70;  // out > 64: more than one column block for dbias
  const auto x = random_values(rows * in, 1), w = random_values(out * in, 2), bias = random_values(out, 3);
  const auto dy = random_values(rows * out, 4);
  const auto dw0 = random_values(out * in, 5), db0 = random_values(out, 6);

  std::vector<double> y(rows * out);
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) {
      double s = bias[o];
      for (int i = 0; i < in; ++i) s += x[r * in + i] * w[o * in + i];
      y[r * out + o] = s;
    }
  }
  std::vector<double> dx(rows * in, 0.0), dw = dw0, db = db0;
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) {
      db[o] += dy[r * out + o];
      for (int i = 0; i < in; ++i) {
        dx[r * in + i] += dy[r * out + o] * w[o * in + i];
        dw[o * in + i] += dy[r * out + o] * x[r * in + i];
      }
    }
  }
  const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(bias), dyt = cast<T>(dy);
  std::vector<T> yt(rows * out), ynb(rows * out), dxt(rows * in);
  auto dwt = cast<T>(dw0), dbt = cast<T>(db0);
  this->be->linear_forward(yt.data(), xt.data(), wt.data(), bt.data(), rows, in, out);
  EXPECT_TRUE(close_to_reference(yt, y));
  this->be->linear_forward(ynb.data(), xt.data(), wt.data(), nullptr, rows, in, out);
  std::vector<double> y_nobias = y;
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) y_nobias[r * out + o] -= bias[o];
  }
  EXPECT_TRUE(all_near(ynb, y_nobias, Tol<T>::kRel, Tol<T>::kRel * 10));
  this->be->linear_backward(dxt.data(), dwt.data(), dbt.data(), dyt.data(), xt.data(), wt.data(), rows, in, out);
  EXPECT_TRUE(close_to_reference(dxt, dx));
  EXPECT_TRUE(close_to_reference(dwt, dw));
  EXPECT_TRUE(close_to_reference(dbt, db));
  // Null dx and dbias are skipped; dW still accumulates.
  auto dwt2 = cast<T>(dw0);
  this->be->linear_backward(nullptr, dwt2.data(), nullptr, dyt.data(), xt.data(), wt.data(), rows, in, out);
  EXPECT_TRUE(close_to_reference(dwt2, dw));
}

TYPED_TEST(BackendOps, ActivationsForwardAndBackward) {
  using T = TypeParam;
  const size_t n = 70001;  // above the parallel threshold, odd tail
  const auto x = random_values(n, 1, -6.0, 6.0), dy = random_values(n, 2);
  const auto xt = cast<T>(x), dyt = cast<T>(dy);
  for (Activation act : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    std::vector<double> y(n), dx(n);
    for (size_t i = 0; i < n; ++i) {
      y[i] = ref::activation(act, x[i]);
      dx[i] = dy[i] * ref::activation_grad(act, x[i]);
    }
    std::vector<T> yt(n), dxt(n);
    this->be->activation_forward(act, yt.data(), xt.data(), n);
    this->be->activation_backward(act, dxt.data(), dyt.data(), xt.data(), n);
    EXPECT_TRUE(close_to_reference(yt, y)) << to_string(act);
    EXPECT_TRUE(close_to_reference(dxt, dx)) << to_string(act);
  }
}

TYPED_TEST(BackendOps, AddAccumulateScale) {
  using T = TypeParam;
  const size_t n = 40000;
  const auto a = random_values(n, 1), b = random_values(n, 2);
  auto at = cast<T>(a);
  const auto bt = cast<T>(b);
  std::vector<T> out(n);
  this->be->add(out.data(), at.data(), bt.data(), n);
  std::vector<double> sum(n);
  for (size_t i = 0; i < n; ++i) sum[i] = static_cast<double>(at[i]) + static_cast<double>(bt[i]);
  EXPECT_TRUE(close_to_reference(out, sum));
  this->be->add(at.data(), at.data(), bt.data(), n);  // aliasing
  EXPECT_TRUE(close_to_reference(at, sum));
  this->be->accumulate(at.data(), bt.data(), n);
  for (size_t i = 0; i < n; ++i) sum[i] += static_cast<double>(bt[i]);
  EXPECT_TRUE(close_to_reference(at, sum));
  this->be->scale(at.data(), n, T(-3));
  for (auto& v : sum) v *= -3;
  EXPECT_TRUE(close_to_reference(at, sum));
}

TYPED_TEST(BackendOps, DropoutMatchesKeyContract) {
  using T = TypeParam;
  const size_t n = 50000;
  const float p = 0.3f;
  DropoutKey key{.seed = 99, .step = 7, .lane = 3, .first_example = 11, .elements_per_example = 777};
  const auto x = random_values(n, 1), dy = random_values(n, 2);
  std::vector<T> y(n), dx(n);
  std::vector<uint8_t> keep(n);
  this->be->dropout_forward(y.data(), keep.data(), cast<T>(x).data(), n, p, key);
  std::vector<double> y_ref(n), dx_ref(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t k = ref::keep_bit(key, p, i);
    ASSERT_EQ(keep[i], k) << "element " << i;
    y_ref[i] = k ? x[i] / (1.0 - p) : 0.0;
    dx_ref[i] = k ? dy[i] / (1.0 - p) : 0.0;
  }
  EXPECT_TRUE(close_to_reference(y, y_ref));
  this->be->dropout_backward(dx.data(), cast<T>(dy).data(), keep.data(), n, p);
  EXPECT_TRUE(close_to_reference(dx, dx_ref));
}

TYPED_TEST(BackendOps, LayerNormForwardAndBackward) {
  using T = TypeParam;
  const int rows = 75, cols = 33;  // rows not a multiple of the 32-row block
  const double eps = 1e-5;
  auto x = random_values(rows * cols, 1, -2.0, 3.0);
  // Double only: a row with a large mean and small spread (two-pass variance needed); in float the
  // rounding of the input alone moves that row's output by ~1e-3.
  if constexpr (sizeof(T) == 8) {
    for (int c = 0; c < cols; ++c) x[c] = 100.0 + 0.01 * x[c];
  }
  const auto gamma = random_values(cols, 2), beta = random_values(cols, 3), dy = random_values(rows * cols, 4);
  const auto dg0 = random_values(cols, 5), db0 = random_values(cols, 6);
  const auto r = ref::layernorm(x, gamma, beta, rows, cols, eps);
  const auto xt = cast<T>(x);
  std::vector<T> y(rows * cols), mean(rows), rstd(rows);
  this->be->layernorm_forward(y.data(), mean.data(), rstd.data(), xt.data(), cast<T>(gamma).data(),
                              cast<T>(beta).data(), rows, cols, T(eps));
  EXPECT_TRUE(close_to_reference(y, r.y));
  EXPECT_TRUE(close_to_reference(mean, r.mean));
  EXPECT_TRUE(close_to_reference(rstd, r.rstd));

  // Backward reference written from the definition: dx_j = sum_i dy_i dy_i/dx_j.
  std::vector<double> dx(rows * cols, 0.0), dg = dg0, db = db0;
  for (int row = 0; row < rows; ++row) {
    const double rs = r.rstd[row];
    std::vector<double> xhat(cols);
    for (int c = 0; c < cols; ++c) xhat[c] = (x[row * cols + c] - r.mean[row]) * rs;
    for (int c = 0; c < cols; ++c) {
      dg[c] += dy[row * cols + c] * xhat[c];
      db[c] += dy[row * cols + c];
    }
    for (int j = 0; j < cols; ++j) {
      double s = 0;
      for (int i = 0; i < cols; ++i) {
        const double dxhat_i_dx_j = rs * ((i == j ? 1.0 : 0.0) - 1.0 / cols - xhat[i] * xhat[j] / cols);
        s += dy[row * cols + i] * gamma[i] * dxhat_i_dx_j;
      }
      dx[row * cols + j] = s;
    }
  }
  std::vector<T> dxt(rows * cols);
  auto dgt = cast<T>(dg0), dbt = cast<T>(db0);
  this->be->layernorm_backward(dxt.data(), dgt.data(), dbt.data(), cast<T>(dy).data(), xt.data(),
                               cast<T>(r.mean).data(), cast<T>(r.rstd).data(), cast<T>(gamma).data(), rows, cols);
  EXPECT_TRUE(close_to_reference(dxt, dx));
  EXPECT_TRUE(close_to_reference(dgt, dg));
  EXPECT_TRUE(close_to_reference(dbt, db));
  // Null outputs are skipped.
  std::vector<T> dx_only(rows * cols);
  this->be->layernorm_backward(dx_only.data(), nullptr, nullptr, cast<T>(dy).data(), xt.data(), cast<T>(r.mean).data(),
                               cast<T>(r.rstd).data(), cast<T>(gamma).data(), rows, cols);
  EXPECT_EQ(dx_only, dxt);
}

TYPED_TEST(BackendOps, EmbeddingsForwardAndBackward) {
  using T = TypeParam;
  const int B = 3, S = 6, E = 70, vocab = 5, types = 2;  // few ids: many duplicates in the scatter-add
  const auto word = random_values(vocab * E, 1), pos = random_values(S * E, 2), type = random_values(types * E, 3);
  const auto ids = random_ints(B * S, 4, 0, vocab), tids = random_ints(B * S, 5, 0, types);
  const auto dout = random_values(B * S * E, 6);
  std::vector<double> out(B * S * E);
  auto dw = random_values(vocab * E, 7), dp = random_values(S * E, 8), dt = random_values(types * E, 9);
  auto dwt = cast<T>(dw), dpt = cast<T>(dp), dtt = cast<T>(dt);
  for (int t = 0; t < B * S; ++t) {
    const int s = t % S;
    for (int c = 0; c < E; ++c) {
      out[t * E + c] = word[ids[t] * E + c] + pos[s * E + c] + type[tids[t] * E + c];
      dw[ids[t] * E + c] += dout[t * E + c];
      dp[s * E + c] += dout[t * E + c];
      dt[tids[t] * E + c] += dout[t * E + c];
    }
  }
  std::vector<T> outt(B * S * E);
  this->be->embedding_forward(outt.data(), ids.data(), tids.data(), cast<T>(word).data(), cast<T>(pos).data(),
                              cast<T>(type).data(), B, S, E);
  EXPECT_TRUE(close_to_reference(outt, out));
  this->be->embedding_backward(dwt.data(), dpt.data(), dtt.data(), cast<T>(dout).data(), ids.data(), tids.data(), B, S,
                               E);
  EXPECT_TRUE(close_to_reference(dwt, dw));
  EXPECT_TRUE(close_to_reference(dpt, dp));
  EXPECT_TRUE(close_to_reference(dtt, dt));
  std::vector<int32_t> bad = ids;
  bad[4] = -1;
  EXPECT_THROW(this->be->embedding_forward(outt.data(), bad.data(), tids.data(), cast<T>(word).data(),
                                           cast<T>(pos).data(), cast<T>(type).data(), B, S, E),
               Error);
}

TYPED_TEST(BackendOps, GatherAndScatterRows) {
  using T = TypeParam;
  const int B = 3, S = 8, P = 4, C = 5;
  const auto x = random_values(B * S * C, 1), dout = random_values(B * P * C, 2);
  std::vector<int32_t> positions = random_ints(B * P, 3, 0, S);
  positions[1] = positions[2];  // a duplicate position must add twice
  std::vector<double> out(B * P * C);
  auto dx = random_values(B * S * C, 4);
  auto dxt = cast<T>(dx);
  for (int b = 0; b < B; ++b) {
    for (int p = 0; p < P; ++p) {
      for (int c = 0; c < C; ++c) {
        out[(b * P + p) * C + c] = x[(b * S + positions[b * P + p]) * C + c];
        dx[(b * S + positions[b * P + p]) * C + c] += dout[(b * P + p) * C + c];
      }
    }
  }
  std::vector<T> outt(B * P * C);
  this->be->gather_rows(outt.data(), cast<T>(x).data(), positions.data(), B, S, P, C);
  EXPECT_TRUE(close_to_reference(outt, out));
  this->be->scatter_add_rows(dxt.data(), cast<T>(dout).data(), positions.data(), B, S, P, C);
  EXPECT_TRUE(close_to_reference(dxt, dx));
  positions[0] = S;
  EXPECT_THROW(this->be->gather_rows(outt.data(), cast<T>(x).data(), positions.data(), B, S, P, C), Error);
}

// Attention against the naive loops, with padding, a fully padded example and dropout.
TYPED_TEST(BackendOps, AttentionForwardAndBackward) {
  using T = TypeParam;
  const int B = 3, S = 7, H = 2, D = 4;
  for (float p : {0.0f, 0.25f}) {
    const auto qkv = random_values(B * S * 3 * H * D, 1, -2.0, 2.0);
    std::vector<int32_t> mask(B * S, 1);
    for (int s = 5; s < S; ++s) mask[0 * S + s] = 0;  // example 0: two padding keys
    for (int s = 0; s < S; ++s) mask[2 * S + s] = 0;  // example 2: nothing to attend to
    mask[1 * S + 2] = 0;                              // example 1: a hole in the middle
    DropoutKey key{.seed = 5, .step = 2, .lane = 9, .first_example = 40, .elements_per_example = H * S * S};
    std::vector<uint8_t> keep_ref;
    if (p > 0) {
      keep_ref.resize(B * H * S * S);
      for (size_t i = 0; i < keep_ref.size(); ++i) keep_ref[i] = ref::keep_bit(key, p, i);
    }
    const auto r = ref::attention(qkv, mask, keep_ref, B, S, H, D, p);
    const auto qkvt = cast<T>(qkv);
    std::vector<T> ctx(B * S * H * D), probs(B * H * S * S, T(-7));
    std::vector<uint8_t> keep(B * H * S * S, 2);
    this->be->attention_forward(ctx.data(), probs.data(), keep.data(), qkvt.data(), mask.data(), B, S, H, D, p, key);
    EXPECT_TRUE(close_to_reference(ctx, r.context)) << "p=" << p;
    EXPECT_TRUE(close_to_reference(probs, r.probs)) << "p=" << p;
    for (size_t i = 0; i < keep.size(); ++i) ASSERT_EQ(keep[i], p > 0 ? keep_ref[i] : 1) << i;
    for (size_t i = 0; i < probs.size(); ++i) {
      const int b = static_cast<int>(i / (H * S * S)), j = static_cast<int>(i % S);
      if (mask[b * S + j] == 0) {
        ASSERT_EQ(probs[i], T(0)) << "masked key must get exactly 0";
      }
    }

    // Backward reference from the chain rule, loop by loop.
    const auto dctx = random_values(B * S * H * D, 2);
    std::vector<double> dqkv(qkv.size(), 0.0);
    auto idx = [&](int b, int s, int which, int h, int d) {
      return ((((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D) + d;
    };
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        for (int i = 0; i < S; ++i) {
          std::vector<double> dprob(S, 0.0);
          for (int j = 0; j < S; ++j) {
            const size_t pi = ((static_cast<size_t>(b) * H + h) * S + i) * S + j;
            const double kscale = p > 0 ? keep_ref[pi] / (1.0 - p) : 1.0;
            for (int d = 0; d < D; ++d) {
              const double g = dctx[((static_cast<size_t>(b) * S + i) * H + h) * D + d];
              dqkv[idx(b, j, 2, h, d)] += r.probs[pi] * kscale * g;
              dprob[j] += g * qkv[idx(b, j, 2, h, d)] * kscale;
            }
          }
          double dot = 0;
          for (int j = 0; j < S; ++j) dot += dprob[j] * r.probs[((static_cast<size_t>(b) * H + h) * S + i) * S + j];
          for (int j = 0; j < S; ++j) {
            const double pij = r.probs[((static_cast<size_t>(b) * H + h) * S + i) * S + j];
            const double dscore = pij * (dprob[j] - dot) / std::sqrt(static_cast<double>(D));
            for (int d = 0; d < D; ++d) {
              dqkv[idx(b, i, 0, h, d)] += dscore * qkv[idx(b, j, 1, h, d)];
              dqkv[idx(b, j, 1, h, d)] += dscore * qkv[idx(b, i, 0, h, d)];
            }
          }
        }
      }
    }
    std::vector<T> dqkvt(qkv.size(), T(123)), scratch(B * H * S * S);
    this->be->attention_backward(dqkvt.data(), scratch.data(), cast<T>(dctx).data(), qkvt.data(), probs.data(),
                                 keep.data(), mask.data(), B, S, H, D, p);
    EXPECT_TRUE(close_to_reference(dqkvt, dqkv)) << "p=" << p;
  }
}

TYPED_TEST(BackendOps, SoftmaxCrossEntropyAndLogSoftmax) {
  using T = TypeParam;
  const int rows = 9, V = 1031;
  auto logits = random_values(rows * V, 1, -8.0, 8.0);
  logits[3 * V + 17] = 40.0;  // a peaked row
  const auto labels = random_ints(rows, 2, 0, V);
  const auto gs = random_values(rows, 3, 0.0, 2.0);
  std::vector<double> loss(rows), dlogits(rows * V), logp(rows * V);
  std::vector<int32_t> amax(rows);
  for (int r = 0; r < rows; ++r) {
    const double* x = logits.data() + r * V;
    const double lse = ref::logsumexp(x, V);
    loss[r] = lse - x[labels[r]];
    amax[r] = static_cast<int32_t>(std::max_element(x, x + V) - x);
    for (int j = 0; j < V; ++j) {
      dlogits[r * V + j] = (std::exp(x[j] - lse) - (j == labels[r] ? 1.0 : 0.0)) * gs[r];
      logp[r * V + j] = x[j] - lse;
    }
  }
  const auto lt = cast<T>(logits), gst = cast<T>(gs);
  std::vector<T> losst(rows), dlt(rows * V);
  std::vector<int32_t> amaxt(rows, -1);
  this->be->softmax_cross_entropy(losst.data(), dlt.data(), amaxt.data(), lt.data(), labels.data(), gst.data(), rows,
                                  V);
  EXPECT_TRUE(close_to_reference(losst, loss));
  EXPECT_TRUE(close_to_reference(dlt, dlogits));
  EXPECT_EQ(amaxt, amax);
  // dlogits may alias logits.
  auto inplace = lt;
  std::vector<T> loss2(rows);
  this->be->softmax_cross_entropy(loss2.data(), inplace.data(), nullptr, inplace.data(), labels.data(), gst.data(),
                                  rows, V);
  EXPECT_EQ(loss2, losst);
  EXPECT_EQ(inplace, dlt);
  std::vector<T> lp(rows * V);
  this->be->log_softmax(lp.data(), lt.data(), rows, V);
  EXPECT_TRUE(close_to_reference(lp, logp));
  std::vector<int32_t> bad = labels;
  bad[1] = V;
  EXPECT_THROW(this->be->softmax_cross_entropy(losst.data(), nullptr, nullptr, lt.data(), bad.data(), nullptr, rows, V),
               Error);
}

TYPED_TEST(BackendOps, SigmoidCrossEntropyIsStable) {
  using T = TypeParam;
  const size_t n = 1000;
  auto logits = random_values(n, 1, -20.0, 20.0);
  logits[0] = 200.0;  // exp(200) overflows float: the stable form must not
  logits[1] = -200.0;
  const auto labels = random_ints(n, 2, 0, 2);
  const auto gs = random_values(n, 3, 0.0, 3.0);
  std::vector<double> loss(n), dl(n);
  for (size_t i = 0; i < n; ++i) {
    const double x = logits[i], y = labels[i];
    // log(1 + e^x) - x y, written the other stable way round
    loss[i] = (x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x))) - x * y;
    dl[i] = (1.0 / (1.0 + std::exp(-x)) - y) * gs[i];
  }
  std::vector<T> losst(n), dlt(n);
  this->be->sigmoid_cross_entropy(losst.data(), dlt.data(), cast<T>(logits).data(), labels.data(), cast<T>(gs).data(),
                                  n);
  EXPECT_TRUE(close_to_reference(losst, loss));
  EXPECT_TRUE(close_to_reference(dlt, dl));
}

TYPED_TEST(BackendOps, GumbelSampleMatchesDefinition) {
  using T = TypeParam;
  const int rows = 23, V = 301, rows_per_example = 4;
  const uint64_t seed = 77, step = 5, first = 1000;
  const auto logits = random_values(rows * V, 1, -3.0, 3.0);
  const auto lt = cast<T>(logits);
  std::vector<int32_t> disallow = random_ints(rows, 2, 0, V);
  disallow[3] = -1;  // disallows nothing
  for (float temperature : {0.7f, 1.0f}) {
    std::vector<int32_t> expected(rows);
    for (int r = 0; r < rows; ++r) {
      const PhiloxStream stream(seed, RandomPurpose::kSampling, step, first + r / rows_per_example);
      double best = -std::numeric_limits<double>::infinity();
      for (int v = 0; v < V; ++v) {
        const double z = static_cast<double>(lt[r * V + v]) - (v == disallow[r] ? 1000.0 : 0.0);
        const double score = z / static_cast<double>(temperature) + stream.gumbel((r % rows_per_example) * V + v);
        if (score > best) {
          best = score;
          expected[r] = v;
        }
      }
    }
    std::vector<int32_t> samples(rows, -1);
    this->be->gumbel_sample(samples.data(), lt.data(), disallow.data(), rows, V, temperature, seed, step, first,
                            rows_per_example);
    EXPECT_EQ(samples, expected) << "temperature " << temperature;
  }
}

TYPED_TEST(BackendOps, SumSquares) {
  using T = TypeParam;
  for (size_t n : {size_t{0}, size_t{1}, size_t{16383}, size_t{100003}}) {
    const auto x = cast<T>(random_values(n, n + 1));
    double expected = 0;
    for (T v : x) expected += static_cast<double>(v) * static_cast<double>(v);
    EXPECT_NEAR(this->be->sum_squares(x.data(), n), expected, 1e-12 * std::max(1.0, expected)) << n;
  }
}

// AdamW against the update written out by hand, a few steps, both bias-correction modes.
TYPED_TEST(BackendOps, AdamWMatchesFormula) {
  using T = TypeParam;
  const size_t n = 50000;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-6f, wd = 0.01f, gscale = 0.5f;
  for (bool bias_correction : {true, false}) {
    std::vector<double> p = random_values(n, 1), m(n, 0.0), v(n, 0.0);
    auto pt = cast<T>(p);
    std::vector<T> mt(n, T(0)), vt(n, T(0));
    for (long long t = 1; t <= 4; ++t) {
      const auto g = random_values(n, 10 + t, -2.0, 2.0);
      for (size_t i = 0; i < n; ++i) {
        const double gi = g[i] * gscale;
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        const double mh = bias_correction ? m[i] / (1.0 - std::pow(double(b1), double(t))) : m[i];
        const double vh = bias_correction ? v[i] / (1.0 - std::pow(double(b2), double(t))) : v[i];
        p[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * p[i]);
      }
      this->be->adamw_step(pt.data(), cast<T>(g).data(), mt.data(), vt.data(), n, lr, b1, b2, eps, wd, t, gscale,
                           bias_correction);
    }
    EXPECT_TRUE(close_to_reference(pt, p)) << "bias_correction " << bias_correction;
    EXPECT_TRUE(close_to_reference(mt, m));
    EXPECT_TRUE(close_to_reference(vt, v));
  }
}

}  // namespace
}  // namespace electra::test
