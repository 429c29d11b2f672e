// AdamW against a hand computation, the learning-rate schedule, global-norm clipping and the
// weight-decay exclusions.
#include "lib/optim/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"

namespace electra {
namespace {

// Two tensors: "w" (decayed) and "b" (not), 3 + 2 elements.
ParameterLayout small_layout() {
  ParameterLayout l;
  l.add("w.weight", {3}, true, Network::kShared, ParamInit::kEncoder);
  l.add("w.bias", {2}, false, Network::kShared, ParamInit::kZeros);
  return l;
}

// The backend takes the hyperparameters as float (backend.h); the reference uses the same values.
// volatile: GCC 12.2's SLP vectorizer at -O2 drops a double->float->double round trip of two adjacent
// values (e.g. beta1, beta2) and would give the reference the unrounded doubles.
double f32(double x) {
  volatile float f = static_cast<float>(x);
  return f;
}

struct Reference {  // google-research AdamWeightDecayOptimizer / PyTorch AdamW, one element
  double p, m = 0, v = 0;
  void step(double g, double lr, const OptimizerConfig& c, bool decay, long long t) {
    const double b1 = f32(c.beta1), b2 = f32(c.beta2);
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    double mh = m, vh = v;
    if (c.bias_correction) {
      mh = m / (1 - std::pow(b1, t));
      vh = v / (1 - std::pow(b2, t));
    }
    p -= f32(lr) * (mh / (std::sqrt(vh) + f32(c.eps)) + (decay ? f32(c.weight_decay) * p : 0.0));
  }
};

void check_against_reference(bool bias_correction) {
  auto be = make_cpu_backend<double>();
  const ParameterLayout layout = small_layout();
  OptimizerConfig c;
  c.lr = 0.1;
  c.warmup_steps = 2;
  c.total_steps = 10;
  c.weight_decay = 0.05;
  c.clip_norm = 0;  // no clipping here
  c.bias_correction = bias_correction;
  AdamW<double> adam(c, layout, *be);
  std::vector<double> p = {0.5, -1.0, 2.0, 0.3, -0.2};
  std::vector<Reference> ref;
  for (double x : p) ref.push_back({x});
  DeviceBuffer<double> d_p(*be, 5), d_g(*be, 5);
  be->copy_from_host(d_p.data(), p.data(), 5);
  for (long long step = 0; step < 5; ++step) {
    const std::vector<double> g = {0.1 * (step + 1), -0.3, 0.02 * step, 1.0, -0.5 + step};
    be->copy_from_host(d_g.data(), g.data(), 5);
    const OptimizerStepStats s = adam.step(d_p.data(), d_g.data(), step);
    EXPECT_DOUBLE_EQ(s.lr, learning_rate(c, step));
    for (int i = 0; i < 5; ++i) ref[i].step(g[i], s.lr, c, i < 3, step + 1);
  }
  be->copy_to_host(p.data(), d_p.data(), 5);
  std::vector<double> m(5), v(5);
  be->copy_to_host(m.data(), adam.first_moment(), 5);
  be->copy_to_host(v.data(), adam.second_moment(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(p[i], ref[i].p, 1e-12 * (1 + std::abs(ref[i].p))) << i;
    EXPECT_NEAR(m[i], ref[i].m, 1e-12 * (1 + std::abs(ref[i].m))) << i;
    EXPECT_NEAR(v[i], ref[i].v, 1e-12 * (1 + std::abs(ref[i].v))) << i;
  }
}

TEST(OptimAdamW, MatchesHandComputationWithoutBiasCorrection) { check_against_reference(false); }
TEST(OptimAdamW, MatchesHandComputationWithBiasCorrection) { check_against_reference(true); }

// A skipped step (non-finite, overflow) is left out of Adam's t: after one update, step 2 with one update before
// is the moments' second update (t = 2), bitwise as step 1 of a run that skipped nothing, under a constant
// learning rate; counting the skipped step (t = 3) gives another update. The same for LAMB's call.
TEST(OptimAdamW, ASkippedStepIsLeftOutOfTheBiasCorrection) {
  auto be = make_cpu_backend<double>();
  const ParameterLayout layout = small_layout();
  OptimizerConfig c;
  c.lr = 0.1;
  c.warmup_steps = 0;
  c.decay_power = 0.0;  // lr(step) = lr: only t differs
  c.total_steps = 10;
  c.clip_norm = 0;
  c.bias_correction = true;  // without it t is not used
  const std::vector<double> g1 = {0.1, -0.3, 0.2, 1.0, -0.5}, g2 = {0.4, 0.1, -0.2, 0.3, 0.6};
  auto after = [&](long long second_step, long long updates_before) {
    AdamW<double> adam(c, layout, *be);
    std::vector<double> p = {0.5, -1.0, 2.0, 0.3, -0.2};
    DeviceBuffer<double> d_p(*be, 5), d_g(*be, 5);
    be->copy_from_host(d_p.data(), p.data(), 5);
    be->copy_from_host(d_g.data(), g1.data(), 5);
    adam.step(d_p.data(), d_g.data(), 0);
    be->copy_from_host(d_g.data(), g2.data(), 5);
    adam.step_with_norm(d_p.data(), d_g.data(), second_step, adam.gradient_norm(d_g.data()), 1.0, updates_before);
    be->copy_to_host(p.data(), d_p.data(), 5);
    return p;
  };
  EXPECT_EQ(after(2, 1), after(1, -1));
  EXPECT_NE(after(2, -1), after(1, -1));
}

TEST(OptimAdamW, FirstStepByHand) {
  // One element, g = 2, no decay, no bias correction: m = 0.2, v = 0.004, p -= lr * 0.2 / (sqrt(0.004) + eps).
  auto be = make_cpu_backend<double>();
  ParameterLayout l;
  l.add("x.bias", {1}, false, Network::kShared, ParamInit::kZeros);
  OptimizerConfig c;
  c.lr = 0.01;
  c.warmup_steps = 0;
  c.total_steps = 100;
  c.clip_norm = 0;
  AdamW<double> adam(c, l, *be);
  DeviceBuffer<double> p(*be, 1), g(*be, 1);
  const double one = 1.0, two = 2.0;
  be->copy_from_host(p.data(), &one, 1);
  be->copy_from_host(g.data(), &two, 1);
  adam.step(p.data(), g.data(), 0);
  double out;
  be->copy_to_host(&out, p.data(), 1);
  const double m = (1 - f32(0.9)) * 2, v = (1 - f32(0.999)) * 4;  // ~0.2, ~0.004
  EXPECT_NEAR(out, 1.0 - f32(0.01) * m / (std::sqrt(v) + f32(1e-6)), 1e-12);
  EXPECT_NEAR(out, 1.0 - 0.01 * 0.2 / (std::sqrt(0.004) + 1e-6), 1e-6);
}

TEST(OptimSchedule, WarmupThenPolynomialDecay) {
  OptimizerConfig c;
  c.lr = 5e-4;
  c.warmup_steps = 100;
  c.total_steps = 1000;
  EXPECT_EQ(learning_rate(c, 0), 0.0);
  EXPECT_NEAR(learning_rate(c, 50), 5e-4 * (1 - 50.0 / 1000) * 0.5, 1e-15);
  EXPECT_NEAR(learning_rate(c, 100), 5e-4 * (1 - 100.0 / 1000), 1e-15);
  EXPECT_NEAR(learning_rate(c, 550), 5e-4 * 0.45, 1e-15);
  EXPECT_EQ(learning_rate(c, 1000), 0.0);
  EXPECT_EQ(learning_rate(c, 1200), 0.0);  // clamped past the end
  c.decay_power = 2.0;
  EXPECT_NEAR(learning_rate(c, 100), 5e-4 * 0.9 * 0.9, 1e-15);
  EXPECT_NEAR(learning_rate(c, 50), 5e-4 * 0.95 * 0.95 * 0.5, 1e-15);
  c.warmup_steps = 0;
  EXPECT_NEAR(learning_rate(c, 0), 5e-4, 1e-15);
}

TEST(OptimClipping, ScalesTheGlobalNormToClipNorm) {
  EXPECT_DOUBLE_EQ(clip_factor(10.0, 1.0), 0.1);
  EXPECT_DOUBLE_EQ(clip_factor(0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_factor(10.0, 0.0), 1.0);

  auto be = make_cpu_backend<double>();
  const ParameterLayout layout = small_layout();
  OptimizerConfig c;
  c.lr = 0.0;  // only the moments move
  c.warmup_steps = 0;
  c.total_steps = 10;
  c.clip_norm = 1.0;
  AdamW<double> adam(c, layout, *be);
  const std::vector<double> g = {3.0, 4.0, 0.0, 12.0, 0.0};  // norm 13
  DeviceBuffer<double> d_p(*be, 5), d_g(*be, 5);
  be->fill(d_p.data(), 5, 1.0);
  be->copy_from_host(d_g.data(), g.data(), 5);
  const OptimizerStepStats s = adam.step(d_p.data(), d_g.data(), 0);
  EXPECT_NEAR(s.grad_norm, 13.0, 1e-12);
  EXPECT_NEAR(s.clip_factor, 1.0 / 13.0, 1e-12);
  // m = (1 - beta1) * clipped g: the clipped gradient has norm clip_norm.
  std::vector<double> m(5);
  be->copy_to_host(m.data(), adam.first_moment(), 5);
  double norm2 = 0;
  for (int i = 0; i < 5; ++i) {
    const double clipped = m[i] / (1 - f32(c.beta1));
    EXPECT_NEAR(clipped, g[i] * f32(1.0 / 13.0), 1e-12);
    norm2 += clipped * clipped;
  }
  EXPECT_NEAR(std::sqrt(norm2), 1.0, 1e-6);
  // The gradients themselves are untouched.
  std::vector<double> after(5);
  be->copy_to_host(after.data(), d_g.data(), 5);
  EXPECT_EQ(after, g);
}

TEST(OptimAdamW, NoWeightDecayOnLayerNormAndBiases) {
  auto be = make_cpu_backend<double>();
  PretrainerConfig pc = pretrainer_config_from_json(model_preset("tiny", 20));
  pc.discriminator.num_layers = pc.generator.num_layers = 1;
  const PretrainerLayout pl = build_pretrainer_layout(pc);
  const size_t n = pl.layout.total_size();
  OptimizerConfig c;
  c.lr = 0.1;
  c.warmup_steps = 0;
  c.total_steps = 10;
  c.weight_decay = 0.01;
  AdamW<double> adam(c, pl.layout, *be);
  DeviceBuffer<double> p(*be, n), g(*be, n);
  be->fill(p.data(), n, 2.0);
  be->fill(g.data(), n, 0.0);  // zero gradients: only decoupled weight decay moves parameters
  adam.step(p.data(), g.data(), 0);
  std::vector<double> out(n);
  be->copy_to_host(out.data(), p.data(), n);
  int decayed = 0, kept = 0;
  for (const ParameterSlice& v : pl.layout.slices()) {
    const bool no_decay =
        v.name.find("LayerNorm") != std::string::npos || v.name.compare(v.name.size() - 5, 5, ".bias") == 0;
    const double expected = no_decay ? 2.0 : 2.0 - 0.1 * 0.01 * 2.0;
    for (size_t i = 0; i < v.size; ++i) ASSERT_NEAR(out[v.offset + i], expected, 1e-9) << v.name;
    (no_decay ? kept : decayed)++;
  }
  EXPECT_GT(decayed, 5);
  EXPECT_GT(kept, 5);
}

TEST(OptimConfig, FromJson) {
  const OptimizerConfig c = optimizer_config_from_json(
      {{"lr", 2e-4}, {"warmup_steps", 500}, {"bias_correction", true}, {"clip_norm", 0.5}}, 1000);
  EXPECT_DOUBLE_EQ(c.lr, 2e-4);
  EXPECT_EQ(c.warmup_steps, 500);
  EXPECT_EQ(c.total_steps, 1000);
  EXPECT_TRUE(c.bias_correction);
  EXPECT_DOUBLE_EQ(c.clip_norm, 0.5);
  EXPECT_DOUBLE_EQ(c.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.01);
  EXPECT_EQ(optimizer_config_from_json(to_json(c), 1000).warmup_steps, 500);
  auto expect_error = [](const nlohmann::json& j, const std::string& key) {
    try {
      optimizer_config_from_json(j, 10);
      ADD_FAILURE() << "expected an error naming " << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_error({{"beta2", 1.0}}, "optim.beta2");
  expect_error({{"warmup_steps", 1.5}}, "optim.warmup_steps");
  expect_error({{"learning_rate", 1e-3}}, "optim.learning_rate");
  expect_error({{"eps", 0}}, "optim.eps");
  // Values that float (the optimizer's arithmetic) cannot hold: lr 1e39 made every parameter NaN with exit 0,
  // eps 1e39 trained nothing. An unsigned value past int64 wrapped to -1 in the message.
  expect_error({{"lr", 1e39}}, "'optim.lr': 1e+39 is not a finite float");
  expect_error({{"eps", 1e39}}, "'optim.eps': 1e+39 is not a finite float");
  expect_error({{"weight_decay", 1e39}}, "'optim.weight_decay'");
  // And values that float rounds to what is refused: every update was non-finite, exit 0.
  expect_error({{"eps", 1e-50}}, "'optim.eps' must be > 0 as a float");
  expect_error({{"beta2", 0.99999999999}}, "'optim.beta2' must be in [0, 1) as a float");
  expect_error({{"warmup_steps", nlohmann::json(uint64_t{18446744073709551615u})}},
               "'optim.warmup_steps': 18446744073709551615 is too large");
  EXPECT_THROW(optimizer_config_from_json(nlohmann::json::object(), 0), Error);
}

}  // namespace
}  // namespace electra
