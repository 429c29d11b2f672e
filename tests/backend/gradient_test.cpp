// Every backward of the double CPU backend against central finite differences of its forward.
// Scalar loss: L = sum(forward output * R) for a fixed random R, so dL/d(output) = R is fed to backward.
#include <gtest/gtest.h>

#include "lib/backend/backend.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

class BackendGradients : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<double>> be = make_cpu_backend<double>();
};

TEST_F(BackendGradients, Linear) {
  const int rows = 5, in = 4, out = 3;
  auto x = random_values(rows * in, 1), w = random_values(out * in, 2), b = random_values(out, 3);
  const auto R = random_values(rows * out, 4);
  std::vector<double> y(rows * out);
  auto loss = [&] {
    be->linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out);
    return dot(y, R);
  };
  std::vector<double> dx(rows * in), dw(out * in, 0.0), db(out, 0.0);
  be->linear_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
  EXPECT_TRUE(gradient_matches(dw, numeric_gradient(w, loss)));
  EXPECT_TRUE(gradient_matches(db, numeric_gradient(b, loss)));
}

TEST_F(BackendGradients, Activations) {
  const size_t n = 40;
  auto x = random_values(n, 1, -3.0, 3.0);
  for (auto& v : x) {
    if (std::abs(v) < 0.01) v = 0.5;  // keep relu's kink out of the difference stencil
  }
  const auto R = random_values(n, 2);
  for (Activation act : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    std::vector<double> y(n), dx(n);
    auto loss = [&] {
      be->activation_forward(act, y.data(), x.data(), n);
      return dot(y, R);
    };
    be->activation_backward(act, dx.data(), R.data(), x.data(), n);
    EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss))) << to_string(act);
  }
}

TEST_F(BackendGradients, Dropout) {
  const size_t n = 64;
  auto x = random_values(n, 1);
  const auto R = random_values(n, 2);
  const DropoutKey key{.seed = 3, .step = 1, .lane = 2, .first_example = 0, .elements_per_example = 16};
  std::vector<double> y(n), dx(n);
  std::vector<uint8_t> keep(n);
  auto loss = [&] {
    be->dropout_forward(y.data(), keep.data(), x.data(), n, 0.4f, key);
    return dot(y, R);
  };
  loss();
  be->dropout_backward(dx.data(), R.data(), keep.data(), n, 0.4f);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
}

TEST_F(BackendGradients, LayerNorm) {
  const int rows = 4, cols = 7;
  auto x = random_values(rows * cols, 1, -2.0, 2.0), gamma = random_values(cols, 2), beta = random_values(cols, 3);
  const auto R = random_values(rows * cols, 4);
  std::vector<double> y(rows * cols), mean(rows), rstd(rows);
  auto loss = [&] {
    be->layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-5);
    return dot(y, R);
  };
  loss();
  std::vector<double> dx(rows * cols), dg(cols, 0.0), db(cols, 0.0);
  be->layernorm_backward(dx.data(), dg.data(), db.data(), R.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                         rows, cols);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
  EXPECT_TRUE(gradient_matches(dg, numeric_gradient(gamma, loss)));
  EXPECT_TRUE(gradient_matches(db, numeric_gradient(beta, loss)));
}

TEST_F(BackendGradients, Embeddings) {
  const int B = 2, S = 5, E = 3, vocab = 4, types = 2;
  auto word = random_values(vocab * E, 1), pos = random_values(S * E, 2), type = random_values(types * E, 3);
  const auto ids = random_ints(B * S, 4, 0, vocab), tids = random_ints(B * S, 5, 0, types);
  const auto R = random_values(B * S * E, 6);
  std::vector<double> out(B * S * E);
  auto loss = [&] {
    be->embedding_forward(out.data(), ids.data(), tids.data(), nullptr, word.data(), pos.data(), type.data(), B, S, E);
    return dot(out, R);
  };
  std::vector<double> dw(vocab * E, 0.0), dp(S * E, 0.0), dt(types * E, 0.0);
  be->embedding_backward(dw.data(), dp.data(), dt.data(), R.data(), ids.data(), tids.data(), nullptr, B, S, E);
  EXPECT_TRUE(gradient_matches(dw, numeric_gradient(word, loss)));
  EXPECT_TRUE(gradient_matches(dp, numeric_gradient(pos, loss)));
  EXPECT_TRUE(gradient_matches(dt, numeric_gradient(type, loss)));
}

// Packed rows: positions restart per example, so a position row sums tokens of several examples.
TEST_F(BackendGradients, EmbeddingsWithPositionIds) {
  const int B = 3, S = 7, E = 3, vocab = 4, types = 2;
  const PackedRows packed = packed_rows({{3, 2, 1}, {6}, {1, 4}}, S);
  auto word = random_values(vocab * E, 1), pos = random_values(S * E, 2), type = random_values(types * E, 3);
  const auto ids = random_ints(B * S, 4, 0, vocab), tids = random_ints(B * S, 5, 0, types);
  const auto R = random_values(B * S * E, 6);
  std::vector<double> out(B * S * E);
  auto loss = [&] {
    be->embedding_forward(out.data(), ids.data(), tids.data(), packed.position_ids.data(), word.data(), pos.data(),
                          type.data(), B, S, E);
    return dot(out, R);
  };
  std::vector<double> dw(vocab * E, 0.0), dp(S * E, 0.0), dt(types * E, 0.0);
  be->embedding_backward(dw.data(), dp.data(), dt.data(), R.data(), ids.data(), tids.data(), packed.position_ids.data(),
                         B, S, E);
  EXPECT_TRUE(gradient_matches(dw, numeric_gradient(word, loss)));
  EXPECT_TRUE(gradient_matches(dp, numeric_gradient(pos, loss)));
  EXPECT_TRUE(gradient_matches(dt, numeric_gradient(type, loss)));
  // No token sits at the last position: its row gets nothing.
  for (int c = 0; c < E; ++c) EXPECT_EQ(dp[(S - 1) * E + c], 0.0);
}

TEST_F(BackendGradients, GatherRows) {
  const int B = 2, S = 6, P = 3, C = 2;
  auto x = random_values(B * S * C, 1);
  std::vector<int32_t> positions = {1, 4, 1, 0, 5, 2};  // a repeated position in example 0
  const auto R = random_values(B * P * C, 2);
  std::vector<double> out(B * P * C);
  auto loss = [&] {
    be->gather_rows(out.data(), x.data(), positions.data(), B, S, P, C);
    return dot(out, R);
  };
  std::vector<double> dx(B * S * C, 0.0);
  be->scatter_add_rows(dx.data(), R.data(), positions.data(), B, S, P, C);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
}

// Attention with padding keys, one fully padded example and dropout; the key fixes the keep mask, so
// every forward in the difference stencil drops the same probabilities.
TEST_F(BackendGradients, AttentionWithMaskAndDropout) {
  const int B = 3, S = 5, H = 2, D = 3;
  for (float p : {0.0f, 0.3f}) {
    auto qkv = random_values(B * S * 3 * H * D, 1, -1.5, 1.5);
    std::vector<int32_t> mask(B * S, 1);
    mask[0 * S + 3] = mask[0 * S + 4] = 0;
    mask[1 * S + 0] = 0;
    for (int s = 0; s < S; ++s) mask[2 * S + s] = 0;
    const DropoutKey key{.seed = 8, .step = 3, .lane = 1, .first_example = 2, .elements_per_example = H * S * S};
    const auto R = random_values(B * S * H * D, 2);
    std::vector<double> ctx(B * S * H * D), probs(B * H * S * S);
    std::vector<uint8_t> keep(B * H * S * S);
    auto loss = [&] {
      be->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, p, key);
      return dot(ctx, R);
    };
    loss();
    std::vector<double> dqkv(qkv.size()), scratch(B * H * S * S);
    be->attention_backward(dqkv.data(), scratch.data(), R.data(), qkv.data(), probs.data(), keep.data(), mask.data(), B,
                           S, H, D, p);
    EXPECT_TRUE(gradient_matches(dqkv, numeric_gradient(qkv, loss))) << "dropout " << p;
  }
}

// Packed rows (block-diagonal attention over each row's examples, padding queries attending every real
// key) with dropout, materialised and fused.
TEST_F(BackendGradients, AttentionWithPackedMask) {
  const int B = 2, S = 7, H = 2, D = 3;
  const PackedRows packed = packed_rows({{3, 1, 2}, {2, 3}}, S);
  for (float p : {0.0f, 0.3f}) {
    auto qkv = random_values(B * S * 3 * H * D, 1, -1.5, 1.5);
    const DropoutKey key{.seed = 8, .step = 3, .lane = 1, .first_example = 2, .elements_per_example = H * S * S};
    const auto R = random_values(B * S * H * D, 2);
    std::vector<double> ctx(B * S * H * D), probs(B * H * S * S), stats(B * H * S);
    std::vector<uint8_t> keep(B * H * S * S);
    auto loss = [&] {
      be->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), packed.mask.data(), B, S, H, D, p, key);
      return dot(ctx, R);
    };
    auto fused_loss = [&] {
      be->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), packed.mask.data(), B, S, H, D, p, key);
      return dot(ctx, R);
    };
    loss();
    std::vector<double> dqkv(qkv.size()), scratch(B * H * S * S);
    be->attention_backward(dqkv.data(), scratch.data(), R.data(), qkv.data(), probs.data(), keep.data(),
                           packed.mask.data(), B, S, H, D, p);
    EXPECT_TRUE(gradient_matches(dqkv, numeric_gradient(qkv, loss))) << "dropout " << p;
    fused_loss();
    be->fused_attention_backward(dqkv.data(), R.data(), qkv.data(), ctx.data(), stats.data(), packed.mask.data(), B, S,
                                 H, D, p, key);
    EXPECT_TRUE(gradient_matches(dqkv, numeric_gradient(qkv, fused_loss))) << "fused, dropout " << p;
  }
}

TEST_F(BackendGradients, SoftmaxCrossEntropy) {
  const int rows = 4, V = 6;
  auto logits = random_values(rows * V, 1, -3.0, 3.0);
  const auto labels = random_ints(rows, 2, 0, V);
  const auto gs = random_values(rows, 3, 0.1, 2.0);
  std::vector<double> loss_rows(rows);
  // L = sum_r grad_scale[r] * loss[r], whose gradient is what dlogits promises.
  auto loss = [&] {
    be->softmax_cross_entropy(loss_rows.data(), nullptr, nullptr, logits.data(), labels.data(), nullptr, rows, V);
    return dot(loss_rows, gs);
  };
  std::vector<double> dl(rows * V);
  be->softmax_cross_entropy(loss_rows.data(), dl.data(), nullptr, logits.data(), labels.data(), gs.data(), rows, V);
  EXPECT_TRUE(gradient_matches(dl, numeric_gradient(logits, loss)));
}

TEST_F(BackendGradients, SigmoidCrossEntropy) {
  const size_t n = 30;
  auto logits = random_values(n, 1, -6.0, 6.0);
  const auto labels = random_ints(n, 2, 0, 2);
  const auto gs = random_values(n, 3, 0.1, 2.0);
  std::vector<double> loss_el(n);
  auto loss = [&] {
    be->sigmoid_cross_entropy(loss_el.data(), nullptr, logits.data(), labels.data(), nullptr, n);
    return dot(loss_el, gs);
  };
  std::vector<double> dl(n);
  be->sigmoid_cross_entropy(loss_el.data(), dl.data(), logits.data(), labels.data(), gs.data(), n);
  EXPECT_TRUE(gradient_matches(dl, numeric_gradient(logits, loss)));
}

// A chain of ops (linear -> gelu -> layernorm -> linear -> softmax CE) back to its input: the pieces
// compose, and accumulate-vs-overwrite semantics are right when a gradient flows through several ops.
TEST_F(BackendGradients, SmallNetworkEndToEnd) {
  const int rows = 3, in = 4, hidden = 5, V = 6;
  auto x = random_values(rows * in, 1), w1 = random_values(hidden * in, 2), b1 = random_values(hidden, 3);
  auto gamma = random_values(hidden, 4, 0.5, 1.5), beta = random_values(hidden, 5);
  auto w2 = random_values(V * hidden, 6);
  const auto labels = random_ints(rows, 7, 0, V);
  std::vector<double> h(rows * hidden), a(rows * hidden), n(rows * hidden), mean(rows), rstd(rows), logits(rows * V),
      loss_rows(rows);
  auto loss = [&] {
    be->linear_forward(h.data(), x.data(), w1.data(), b1.data(), rows, in, hidden);
    be->activation_forward(Activation::kGelu, a.data(), h.data(), h.size());
    be->layernorm_forward(n.data(), mean.data(), rstd.data(), a.data(), gamma.data(), beta.data(), rows, hidden, 1e-12);
    be->linear_forward(logits.data(), n.data(), w2.data(), nullptr, rows, hidden, V);
    be->softmax_cross_entropy(loss_rows.data(), nullptr, nullptr, logits.data(), labels.data(), nullptr, rows, V);
    return loss_rows[0] + loss_rows[1] + loss_rows[2];
  };
  loss();
  std::vector<double> dlogits(rows * V), dn(rows * hidden), da(rows * hidden), dh(rows * hidden), dx(rows * in);
  std::vector<double> dw2(V * hidden, 0.0), dgamma(hidden, 0.0), dbeta(hidden, 0.0), dw1(hidden * in, 0.0),
      db1(hidden, 0.0);
  be->softmax_cross_entropy(loss_rows.data(), dlogits.data(), nullptr, logits.data(), labels.data(), nullptr, rows, V);
  be->linear_backward(dn.data(), dw2.data(), nullptr, dlogits.data(), n.data(), w2.data(), rows, hidden, V);
  be->layernorm_backward(da.data(), dgamma.data(), dbeta.data(), dn.data(), a.data(), mean.data(), rstd.data(),
                         gamma.data(), rows, hidden);
  be->activation_backward(Activation::kGelu, dh.data(), da.data(), h.data(), h.size());
  be->linear_backward(dx.data(), dw1.data(), db1.data(), dh.data(), x.data(), w1.data(), rows, in, hidden);
  EXPECT_TRUE(gradient_matches(dx, numeric_gradient(x, loss)));
  EXPECT_TRUE(gradient_matches(dw1, numeric_gradient(w1, loss)));
  EXPECT_TRUE(gradient_matches(db1, numeric_gradient(b1, loss)));
  EXPECT_TRUE(gradient_matches(dgamma, numeric_gradient(gamma, loss)));
  EXPECT_TRUE(gradient_matches(dbeta, numeric_gradient(beta, loss)));
  EXPECT_TRUE(gradient_matches(dw2, numeric_gradient(w2, loss)));
}

}  // namespace
}  // namespace electra::test
