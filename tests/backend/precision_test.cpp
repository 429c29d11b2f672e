// The float backend against the double backend on the same random inputs, at shapes like one ELECTRA
// layer (scaled down): float rounding must stay at the 1e-5 level through every forward and backward.
#include <gtest/gtest.h>

#include <map>

#include "lib/backend/backend.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

using Outputs = std::map<std::string, std::vector<double>>;

template <typename T>
Outputs run_layer(Backend<T>& be) {
  const int B = 4, S = 24, H = 2, D = 16, E = H * D, F = 4 * E, V = 300, P = 5;
  const int rows = B * S;
  Outputs out;
  // Inputs: the same doubles for both backends, rounded to T.
  const auto x = cast<T>(random_values(rows * E, 1));
  const auto w_qkv = cast<T>(random_values(3 * E * E, 2, -0.3, 0.3)), b_qkv = cast<T>(random_values(3 * E, 3));
  const auto w1 = cast<T>(random_values(F * E, 4, -0.3, 0.3)), b1 = cast<T>(random_values(F, 5));
  const auto gamma = cast<T>(random_values(F, 6, 0.5, 1.5)), beta = cast<T>(random_values(F, 7));
  const auto w_out = cast<T>(random_values(V * F, 8, -0.2, 0.2));
  std::vector<int32_t> mask(rows, 1);
  for (int s = 18; s < S; ++s) mask[s] = 0;
  const auto positions = random_ints(B * P, 9, 0, S);
  const auto labels = random_ints(B * P, 10, 0, V);
  const DropoutKey key{.seed = 1, .step = 2, .lane = 3, .first_example = 0, .elements_per_example = H * S * S};

  // Forward: qkv projection -> attention -> FFN-in + gelu -> layernorm -> gather -> vocabulary logits -> CE.
  std::vector<T> qkv(rows * 3 * E), ctx(rows * E), probs(B * H * S * S), h(rows * F), a(rows * F), n(rows * F),
      mean(rows), rstd(rows), g(B * P * F), logits(B * P * V), loss(B * P);
  std::vector<uint8_t> keep(B * H * S * S);
  be.linear_forward(qkv.data(), x.data(), w_qkv.data(), b_qkv.data(), rows, E, 3 * E);
  be.attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, 0.1f, key);
  be.linear_forward(h.data(), ctx.data(), w1.data(), b1.data(), rows, E, F);
  be.activation_forward(Activation::kGelu, a.data(), h.data(), a.size());
  be.layernorm_forward(n.data(), mean.data(), rstd.data(), a.data(), gamma.data(), beta.data(), rows, F, T(1e-12));
  be.gather_rows(g.data(), n.data(), positions.data(), B, S, P, F);
  be.linear_forward(logits.data(), g.data(), w_out.data(), nullptr, B * P, F, V);
  std::vector<T> dlogits(logits.size());
  be.softmax_cross_entropy(loss.data(), dlogits.data(), nullptr, logits.data(), labels.data(), nullptr, B * P, V);
  out["context"] = to_double(ctx);
  out["probs"] = to_double(probs);
  out["layernorm"] = to_double(n);
  out["logits"] = to_double(logits);
  out["loss"] = to_double(loss);

  // Backward all the way to the input.
  std::vector<T> dg(g.size()), dn(n.size(), T(0)), da(a.size()), dh(h.size()), dctx(ctx.size()), dqkv(qkv.size()),
      dx(x.size()), scratch(B * H * S * S);
  std::vector<T> dw_out(w_out.size(), T(0)), dgamma(F, T(0)), dbeta(F, T(0)), dw1(w1.size(), T(0)), db1(F, T(0)),
      dw_qkv(w_qkv.size(), T(0)), db_qkv(3 * E, T(0));
  be.linear_backward(dg.data(), dw_out.data(), nullptr, dlogits.data(), g.data(), w_out.data(), B * P, F, V);
  be.scatter_add_rows(dn.data(), dg.data(), positions.data(), B, S, P, F);
  be.layernorm_backward(da.data(), dgamma.data(), dbeta.data(), dn.data(), a.data(), mean.data(), rstd.data(),
                        gamma.data(), rows, F);
  be.activation_backward(Activation::kGelu, dh.data(), da.data(), h.data(), h.size());
  be.linear_backward(dctx.data(), dw1.data(), db1.data(), dh.data(), ctx.data(), w1.data(), rows, E, F);
  be.attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(), mask.data(), B,
                        S, H, D, 0.1f);
  be.linear_backward(dx.data(), dw_qkv.data(), db_qkv.data(), dqkv.data(), x.data(), w_qkv.data(), rows, E, 3 * E);
  out["dlogits"] = to_double(dlogits);
  out["dw_out"] = to_double(dw_out);
  out["dgamma"] = to_double(dgamma);
  out["dbeta"] = to_double(dbeta);
  out["dw1"] = to_double(dw1);
  out["dqkv"] = to_double(dqkv);
  out["dw_qkv"] = to_double(dw_qkv);
  out["db_qkv"] = to_double(db_qkv);
  out["dx"] = to_double(dx);

  // Discriminator-style loss and an optimizer step.
  const auto disc_logits = cast<T>(random_values(rows, 11, -5.0, 5.0));
  const auto disc_labels = random_ints(rows, 12, 0, 2);
  std::vector<T> bce(rows), dbce(rows);
  be.sigmoid_cross_entropy(bce.data(), dbce.data(), disc_logits.data(), disc_labels.data(), nullptr, rows);
  out["bce"] = to_double(bce);
  out["dbce"] = to_double(dbce);
  // Same gradients for both types: Adam's first steps are ~sign(g), which float noise could flip near 0.
  auto params = w1;
  const auto grads = cast<T>(random_values(params.size(), 13, -0.1, 0.1));
  std::vector<T> m(params.size(), T(0)), v(params.size(), T(0));
  for (long long t = 1; t <= 3; ++t) {
    be.adamw_step(params.data(), grads.data(), m.data(), v.data(), params.size(), 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, t,
                  0.7f, true);
  }
  out["adamw"] = to_double(params);
  return out;
}

TEST(BackendFloatVsDouble, OneLayerForwardBackward) {
  auto f = make_cpu_backend<float>();
  auto d = make_cpu_backend<double>();
  const Outputs of = run_layer(*f), od = run_layer(*d);
  for (const auto& [name, ref] : od) {
    // Relative to the tensor's scale: sums of mixed-sign terms lose relative accuracy in small elements.
    EXPECT_TRUE(all_near(of.at(name), ref, 1e-5, 2e-6 * std::max(1e-30, max_abs(ref)))) << name;
  }
}

}  // namespace
}  // namespace electra::test
