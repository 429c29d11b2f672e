// LAMB (lib/optim/lamb.h) against a naive double implementation of NVIDIA's formula on a few tensors,
// including the zero-norm rules, clipping and the exclusions of LayerNorm parameters and biases; the
// optim.name key and the optimizer factory.
#include "lib/optim/lamb.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"
#include "lib/optim/optimizer.h"

namespace electra {
namespace {

// The backend takes the hyperparameters as float (backend.h); the reference uses the same values.
// volatile: see adamw_test.cpp (GCC's SLP vectorizer would drop a double->float->double round trip).
double f32(double x) {
  volatile float f = static_cast<float>(x);
  return f;
}

// tfa.optimizers.LAMB on one tensor, everything in double: the moments, the bias-corrected direction plus
// weight decay, the trust ratio ||w|| / ||u|| (1 when either is 0 or the tensor is excluded), the update.
struct ReferenceTensor {
  std::vector<double> p, m, v;
  bool excluded;  // LayerNorm parameter or bias: no weight decay, no trust ratio
  void step(const std::vector<double>& g, double grad_scale, double lr, const OptimizerConfig& c, long long t) {
    const double b1 = f32(c.beta1), b2 = f32(c.beta2), eps = f32(c.eps), wd = excluded ? 0.0 : f32(c.weight_decay);
    std::vector<double> u(p.size());
    double w_norm = 0, u_norm = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      const double gi = g[i] * grad_scale;
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const double m_hat = m[i] / (1 - std::pow(b1, static_cast<double>(t)));
      const double v_hat = v[i] / (1 - std::pow(b2, static_cast<double>(t)));
      u[i] = m_hat / (std::sqrt(v_hat) + eps) + wd * p[i];
      w_norm += p[i] * p[i];
      u_norm += u[i] * u[i];
    }
    w_norm = std::sqrt(w_norm);
    u_norm = std::sqrt(u_norm);
    const double ratio = !excluded && w_norm > 0 && u_norm > 0 ? w_norm / u_norm : 1.0;
    last_ratio = ratio;
    for (size_t i = 0; i < p.size(); ++i) p[i] -= f32(lr) * ratio * u[i];
  }
  double last_ratio = 1.0;
};

// Five tensors: an ordinary weight, a bias, a LayerNorm weight, a weight that starts at zero (||w|| = 0 on
// the first step), and a weight at zero with zero gradients (both norms 0: it must stay 0).
ParameterLayout reference_layout() {
  ParameterLayout l;
  l.add("enc.dense.weight", {4, 3}, true, Network::kShared, ParamInit::kEncoder);
  l.add("enc.dense.bias", {4}, false, Network::kShared, ParamInit::kZeros);
  l.add("enc.LayerNorm.weight", {3}, false, Network::kShared, ParamInit::kOnes);
  l.add("enc.zero.weight", {2, 3}, true, Network::kShared, ParamInit::kEncoder);
  l.add("enc.still.weight", {5}, true, Network::kShared, ParamInit::kEncoder);
  return l;
}

void check_against_reference(double weight_decay, double clip_norm) {
  auto be = make_cpu_backend<double>();
  const ParameterLayout layout = reference_layout();
  const size_t n = layout.total_size();
  OptimizerConfig c;
  c.name = "lamb";
  c.lr = 0.05;
  c.warmup_steps = 2;
  c.total_steps = 10;
  c.decay_power = 0.5;
  c.beta1 = 0.878;  // NVIDIA's ELECTRA recipe
  c.beta2 = 0.974;
  c.weight_decay = weight_decay;
  c.clip_norm = clip_norm;
  Lamb<double> lamb(c, layout, *be);
  ASSERT_EQ(lamb.runs().size(), layout.slices().size());  // one trust ratio per tensor

  std::vector<double> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = 0.3 * std::sin(1.7 * static_cast<double>(i) + 0.4);
  std::vector<ReferenceTensor> ref;
  for (const ParameterSlice& v : layout.slices()) {
    if (v.name.starts_with("enc.zero") || v.name.starts_with("enc.still")) {
      std::fill(p.begin() + v.offset, p.begin() + v.offset + v.size, 0.0);
    }
    ref.push_back({std::vector<double>(p.begin() + v.offset, p.begin() + v.offset + v.size),
                   std::vector<double>(v.size, 0.0), std::vector<double>(v.size, 0.0), !v.weight_decay});
  }
  DeviceBuffer<double> d_p(*be, n), d_g(*be, n);
  be->copy_from_host(d_p.data(), p.data(), n);
  bool clipped = false;
  for (long long step = 0; step < 5; ++step) {
    std::vector<double> g(n);
    for (size_t i = 0; i < n; ++i) g[i] = (0.2 + 0.5 * step) * std::cos(0.9 * static_cast<double>(i * (step + 1)));
    const ParameterSlice& still = layout.find("enc.still.weight");
    std::fill(g.begin() + still.offset, g.begin() + still.offset + still.size, 0.0);
    be->copy_from_host(d_g.data(), g.data(), n);
    const OptimizerStepStats s = lamb.step(d_p.data(), d_g.data(), step);
    EXPECT_DOUBLE_EQ(s.lr, learning_rate(c, step));
    clipped |= s.clip_factor < 1;
    for (size_t k = 0; k < ref.size(); ++k) {
      const ParameterSlice& v = layout.slices()[k];
      ref[k].step(std::vector<double>(g.begin() + v.offset, g.begin() + v.offset + v.size), f32(s.clip_factor), s.lr, c,
                  step + 1);
    }
  }
  if (clip_norm > 0) {
    EXPECT_TRUE(clipped) << "the gradients should have been clipped on some step";
  }
  std::vector<double> m(n), v(n);
  be->copy_to_host(p.data(), d_p.data(), n);
  be->copy_to_host(m.data(), lamb.first_moment(), n);
  be->copy_to_host(v.data(), lamb.second_moment(), n);
  for (size_t k = 0; k < ref.size(); ++k) {
    const ParameterSlice& view = layout.slices()[k];
    for (size_t i = 0; i < view.size; ++i) {
      const size_t j = view.offset + i;
      EXPECT_NEAR(p[j], ref[k].p[i], 1e-12 * (1 + std::abs(ref[k].p[i]))) << view.name << " " << i;
      EXPECT_NEAR(m[j], ref[k].m[i], 1e-12 * (1 + std::abs(ref[k].m[i]))) << view.name << " " << i;
      EXPECT_NEAR(v[j], ref[k].v[i], 1e-12 * (1 + std::abs(ref[k].v[i]))) << view.name << " " << i;
    }
  }
  // Both norms zero: nothing moves. The trust ratio of the ordinary weight is not 1 (it was used).
  const ParameterSlice& still = layout.find("enc.still.weight");
  for (size_t i = 0; i < still.size; ++i) EXPECT_EQ(p[still.offset + i], 0.0);
  EXPECT_NE(ref[0].last_ratio, 1.0);
  // The weight that started at zero moved away from it (ratio 1 on its first step, then its own norm).
  const ParameterSlice& zero = layout.find("enc.zero.weight");
  EXPECT_NE(p[zero.offset], 0.0);
}

TEST(OptimLamb, MatchesNaiveDoubleImplementation) { check_against_reference(0.01, 0.0); }
TEST(OptimLamb, MatchesNaiveDoubleImplementationWithClipping) { check_against_reference(0.01, 1.0); }
TEST(OptimLamb, MatchesNaiveDoubleImplementationWithoutWeightDecay) { check_against_reference(0.0, 1.0); }

TEST(OptimLamb, NoWeightDecayAndNoTrustRatioOnLayerNormAndBiases) {
  // Zero gradients: u = wd * p on decayed tensors, so the trust ratio is ||p|| / (wd ||p||) = 1 / wd and
  // p -= lr * p whatever wd is; LayerNorm parameters and biases (u = 0) stay where they are.
  auto be = make_cpu_backend<double>();
  PretrainerConfig pc = pretrainer_config_from_json(model_preset("tiny", 20));
  pc.discriminator.num_layers = pc.generator.num_layers = 1;
  const PretrainerLayout pl = build_pretrainer_layout(pc);
  const size_t n = pl.layout.total_size();
  OptimizerConfig c;
  c.name = "lamb";
  c.lr = 0.1;
  c.warmup_steps = 0;
  c.total_steps = 10;
  c.weight_decay = 0.01;
  Lamb<double> lamb(c, pl.layout, *be);
  DeviceBuffer<double> p(*be, n), g(*be, n);
  be->fill(p.data(), n, 2.0);
  be->fill(g.data(), n, 0.0);
  lamb.step(p.data(), g.data(), 0);
  std::vector<double> out(n);
  be->copy_to_host(out.data(), p.data(), n);
  int decayed = 0, kept = 0;
  for (const ParameterSlice& v : pl.layout.slices()) {
    const bool no_decay =
        v.name.find("LayerNorm") != std::string::npos || v.name.compare(v.name.size() - 5, 5, ".bias") == 0;
    const double expected = no_decay ? 2.0 : 2.0 - f32(0.1) * 2.0;
    for (size_t i = 0; i < v.size; ++i) ASSERT_NEAR(out[v.offset + i], expected, 1e-9) << v.name;
    (no_decay ? kept : decayed)++;
  }
  EXPECT_GT(decayed, 5);
  EXPECT_GT(kept, 5);

  // Excluded tensors take plain bias-corrected Adam steps (ratio 1): on the first step with a constant
  // gradient g, u = g / (|g| + eps) and p -= lr * u, however large p is.
  Lamb<double> fresh(c, pl.layout, *be);
  be->fill(p.data(), n, 100.0);
  be->fill(g.data(), n, 0.5);
  fresh.step(p.data(), g.data(), 0);
  be->copy_to_host(out.data(), p.data(), n);
  const double clip = clip_factor(std::sqrt(0.25 * static_cast<double>(n)), c.clip_norm);
  const double gc = 0.5 * f32(clip);
  for (const ParameterSlice& v : pl.layout.slices()) {
    if (v.weight_decay) continue;
    for (size_t i = 0; i < v.size; ++i) {
      ASSERT_NEAR(out[v.offset + i], 100.0 - f32(0.1) * gc / (gc + f32(c.eps)), 1e-9) << v.name;
    }
  }
}

TEST(OptimLamb, ConfigNameAndFactory) {
  EXPECT_EQ(optimizer_config_from_json(nlohmann::json::object(), 10).name, "adamw");
  const OptimizerConfig lamb = optimizer_config_from_json({{"name", "lamb"}}, 10);
  EXPECT_EQ(lamb.name, "lamb");
  EXPECT_EQ(optimizer_config_from_json(to_json(lamb), 10).name, "lamb");
  for (const nlohmann::json& bad : {nlohmann::json("sgd"), nlohmann::json("LAMB"), nlohmann::json(3)}) {
    try {
      optimizer_config_from_json({{"name", bad}}, 10);
      ADD_FAILURE() << "expected an error naming optim.name for " << bad.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("optim.name"), std::string::npos) << e.what();
    }
  }
  auto be = make_cpu_backend<float>();
  const ParameterLayout layout = reference_layout();
  EXPECT_STREQ(make_optimizer<float>(OptimizerConfig{}, layout, *be)->name(), "adamw");
  EXPECT_STREQ(make_optimizer<float>(lamb, layout, *be)->name(), "lamb");
  EXPECT_EQ(make_optimizer<float>(lamb, layout, *be)->size(), layout.total_size());
}

}  // namespace
}  // namespace electra
