// LossScaler (backoff, growth, bounds, modes, config keys, checkpoint state), the model's scaled
// backward (bitwise loss_scale x gradients) and AdamW's unscaling (bitwise the unscaled update).
#include "lib/optim/loss_scaler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "lib/core/error.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

LossScaleConfig dynamic_config(double init, int64_t interval) {
  LossScaleConfig c;
  c.mode = LossScaleMode::kDynamic;
  c.init = init;
  c.growth_interval = interval;
  return c;
}

TEST(LossScaler, AutoIsDynamicForFp16AndOffOtherwise) {
  const LossScaler fp16(LossScaleConfig{}, /*fp16=*/true);
  EXPECT_EQ(fp16.mode(), LossScaleMode::kDynamic);
  EXPECT_EQ(fp16.scale(), 65536.0);
  EXPECT_TRUE(fp16.enabled());
  const LossScaler other(LossScaleConfig{}, /*fp16=*/false);
  EXPECT_EQ(other.mode(), LossScaleMode::kOff);
  EXPECT_EQ(other.scale(), 1.0);
  EXPECT_FALSE(other.enabled());
}

TEST(LossScaler, BacksOffOnNonFiniteAndGrowsAfterTheInterval) {
  LossScaler s(dynamic_config(1024, 3), false);
  EXPECT_EQ(s.update(false), LossScaleOutcome::kOverflow);
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.update(true), LossScaleOutcome::kApply);
  EXPECT_EQ(s.update(true), LossScaleOutcome::kApply);
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.good_steps(), 2);
  // A non-finite step resets the run of good steps.
  EXPECT_EQ(s.update(false), LossScaleOutcome::kOverflow);
  EXPECT_EQ(s.scale(), 256.0);
  EXPECT_EQ(s.good_steps(), 0);
  for (int i = 0; i < 2; ++i) s.update(true);
  EXPECT_EQ(s.scale(), 256.0);
  s.update(true);  // the third in a row
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.good_steps(), 0);
}

TEST(LossScaler, CustomBackoff) {
  LossScaleConfig c = dynamic_config(1000, 10);
  c.backoff = 0.25;
  LossScaler s(c, false);
  s.update(false);
  EXPECT_EQ(s.scale(), 250.0);
}

TEST(LossScaler, NeverLeavesTheBounds) {
  LossScaler low(dynamic_config(4, 1000), false);
  EXPECT_EQ(low.update(false), LossScaleOutcome::kOverflow);  // 2
  EXPECT_EQ(low.update(false), LossScaleOutcome::kOverflow);  // 1
  EXPECT_EQ(low.scale(), 1.0);
  // At the minimum a smaller scale cannot help: a real failure.
  EXPECT_EQ(low.update(false), LossScaleOutcome::kNonFinite);
  EXPECT_EQ(low.scale(), 1.0);

  LossScaler high(dynamic_config(LossScaleConfig::kMaxScale / 2, 1), false);
  high.update(true);
  EXPECT_EQ(high.scale(), LossScaleConfig::kMaxScale);
  high.update(true);
  EXPECT_EQ(high.scale(), LossScaleConfig::kMaxScale);

  LossScaleConfig odd = dynamic_config(3, 1000);
  odd.backoff = 0.5;
  LossScaler clamp(odd, false);
  clamp.update(false);  // 1.5
  clamp.update(false);  // 0.75 -> 1
  EXPECT_EQ(clamp.scale(), 1.0);
}

TEST(LossScaler, FixedAndOffNeverChange) {
  LossScaleConfig c;
  c.mode = LossScaleMode::kFixed;
  c.init = 1024;
  c.growth_interval = 1;
  LossScaler fixed(c, true);
  EXPECT_EQ(fixed.update(true), LossScaleOutcome::kApply);
  EXPECT_EQ(fixed.scale(), 1024.0);
  EXPECT_EQ(fixed.update(false), LossScaleOutcome::kNonFinite);
  EXPECT_EQ(fixed.scale(), 1024.0);
  c.mode = LossScaleMode::kOff;
  LossScaler off(c, true);
  EXPECT_EQ(off.scale(), 1.0);
  EXPECT_FALSE(off.enabled());
  EXPECT_EQ(off.update(false), LossScaleOutcome::kNonFinite);
}

TEST(LossScaler, StateRoundTripContinuesExactly) {
  LossScaler a(dynamic_config(65536, 4), true);
  a.update(false);
  a.update(true);
  a.update(true);
  // Through JSON text, as a checkpoint stores it.
  const nlohmann::json saved = nlohmann::json::parse(a.state().dump());
  LossScaler b(dynamic_config(65536, 4), true);
  ASSERT_TRUE(b.restore(saved));
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.good_steps(), 2);
  for (bool finite : {true, true, false, true, true, true, true, true}) {
    EXPECT_EQ(a.update(finite), b.update(finite));
    EXPECT_EQ(a.scale(), b.scale());
    EXPECT_EQ(a.good_steps(), b.good_steps());
  }
}

// Loss scaling off (fp32, bf16): the counter of finite steps still continues, so a resumed run's state is the
// uninterrupted run's (it restarted from 0 at every resume).
TEST(LossScaler, WithoutScalingTheFiniteStepCountContinues) {
  LossScaleConfig c;
  c.mode = LossScaleMode::kOff;
  LossScaler a(c, false);
  for (int i = 0; i < 5; ++i) a.update(true);
  LossScaler b(c, false);
  EXPECT_FALSE(b.restore(nlohmann::json::parse(a.state().dump())));  // no scale restored
  EXPECT_EQ(b.good_steps(), 5);
  a.update(true);
  b.update(true);
  EXPECT_EQ(a.state(), b.state());
}

TEST(LossScaler, OldOrOtherStatesKeepTheDefaults) {
  LossScaler s(dynamic_config(65536, 4), true);
  // A checkpoint written before loss scaling: "loss_scale": 1 as a placeholder, no counter.
  EXPECT_FALSE(s.restore({{"step", 10}, {"loss_scale", 1.0}}));
  EXPECT_EQ(s.scale(), 65536.0);
  // Saved by a run without dynamic scaling.
  EXPECT_FALSE(s.restore({{"loss_scale", 1.0}, {"loss_scale_mode", "off"}, {"loss_scale_good_steps", 7}}));
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.good_steps(), 0);
  // A fixed scaler ignores a dynamic state.
  LossScaleConfig fixed;
  fixed.mode = LossScaleMode::kFixed;
  fixed.init = 8;
  LossScaler f(fixed, false);
  EXPECT_FALSE(f.restore({{"loss_scale", 512.0}, {"loss_scale_mode", "dynamic"}, {"loss_scale_good_steps", 7}}));
  EXPECT_EQ(f.scale(), 8.0);
  EXPECT_FALSE(s.restore({{"loss_scale", 512.0}, {"loss_scale_mode", 3}, {"loss_scale_good_steps", 7}}));
  // Out-of-range saved scales are clamped.
  EXPECT_TRUE(s.restore({{"loss_scale", 1e30}, {"loss_scale_mode", "dynamic"}, {"loss_scale_good_steps", 1}}));
  EXPECT_EQ(s.scale(), LossScaleConfig::kMaxScale);
  EXPECT_THROW(s.restore({{"loss_scale", "big"}, {"loss_scale_mode", "dynamic"}, {"loss_scale_good_steps", 1}}), Error);
}

TEST(LossScaler, ConfigKeysRoundTripAndBadValuesNameTheKey) {
  LossScaleConfig c = dynamic_config(128, 50);
  c.backoff = 0.25;
  const LossScaleConfig back = loss_scale_config_from_json(to_json(c));
  EXPECT_EQ(back.mode, LossScaleMode::kDynamic);
  EXPECT_EQ(back.init, 128.0);
  EXPECT_EQ(back.backoff, 0.25);
  EXPECT_EQ(back.growth_interval, 50);
  // Through the optim section.
  nlohmann::json optim = to_json(OptimizerConfig{});
  optim["loss_scale"]["mode"] = "fixed";
  EXPECT_EQ(optimizer_config_from_json(optim, 10).loss_scale.mode, LossScaleMode::kFixed);

  const auto message = [](const nlohmann::json& section) -> std::string {
    try {
      loss_scale_config_from_json(section);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({{"mode", "sometimes"}}).find("optim.loss_scale.mode"), std::string::npos);
  EXPECT_NE(message({{"init", 0.5}}).find("optim.loss_scale.init"), std::string::npos);
  EXPECT_NE(message({{"init", 1e9}}).find("optim.loss_scale.init"), std::string::npos);
  EXPECT_NE(message({{"backoff", 1.0}}).find("optim.loss_scale.backoff"), std::string::npos);
  EXPECT_NE(message({{"growth_interval", 0}}).find("optim.loss_scale.growth_interval"), std::string::npos);
  EXPECT_NE(message({{"growth_interval", 1.5}}).find("optim.loss_scale.growth_interval"), std::string::npos);
  EXPECT_NE(message({{"growth_interval", nlohmann::json(uint64_t{1} << 63)}}).find("is too large"), std::string::npos);
  EXPECT_NE(message({{"factor", 2}}).find("optim.loss_scale.factor"), std::string::npos);
  EXPECT_NE(message(nlohmann::json("dynamic")).find("optim.loss_scale"), std::string::npos);
}

// Gradients of one forward/backward with `scale`, in float, dropout on, NSP labels (all three seeds).
std::vector<float> gradients_with_scale(float scale) {
  auto backend = make_cpu_backend<float>();
  ElectraPretrainer<float> model(test::tiny_config(), *backend);
  model.init_parameters(7);
  const Batch batch = test::random_batch(4, 10, 3, 30, 11, /*with_nsp=*/true, 3);
  StepContext ctx;
  ctx.seed = 5;
  ctx.step = 2;
  ctx.loss_scale = scale;
  model.zero_gradients();
  const PretrainerOutputs<float>& out = model.forward(batch, ctx);
  EXPECT_TRUE(std::isfinite(out.losses.total_loss));
  EXPECT_GT(out.losses.sentence_loss, 0.0);
  model.backward();
  return model.gradients_to_host();
}

TEST(LossScaledBackward, PowerOfTwoScaleMultipliesEveryGradientExactly) {
  const std::vector<float> plain = gradients_with_scale(1.0f);
  const std::vector<float> scaled = gradients_with_scale(1024.0f);
  ASSERT_EQ(plain.size(), scaled.size());
  size_t nonzero = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    const float expected = plain[i] * 1024.0f;
    ASSERT_EQ(std::memcmp(&expected, &scaled[i], sizeof(float)), 0)
        << "element " << i << ": " << plain[i] << " * 1024 != " << scaled[i];
    nonzero += plain[i] != 0.0f;
  }
  EXPECT_GT(nonzero, plain.size() / 2);  // the comparison means something
  // A scale that is not a power of two still scales (to rounding), so the seeds really carry it.
  // Norm-wise: elements that are sums of cancelling terms differ by more than their own size.
  const std::vector<float> three = gradients_with_scale(3.0f);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    diff += std::pow(double(three[i]) - 3.0 * plain[i], 2);
    norm += std::pow(3.0 * plain[i], 2);
  }
  EXPECT_LT(std::sqrt(diff), 1e-5 * std::sqrt(norm));
  EXPECT_GT(std::sqrt(norm), 0.0);
}

TEST(LossScaledBackward, AdamWUnscalesToTheSameUpdateBitwise) {
  auto backend = make_cpu_backend<float>();
  ParameterLayout layout;
  layout.add("w.weight", {64}, true, Network::kShared, ParamInit::kEncoder);
  layout.add("w.bias", {8}, false, Network::kShared, ParamInit::kZeros);
  OptimizerConfig c;
  c.warmup_steps = 0;
  c.total_steps = 100;
  c.lr = 0.01;
  c.clip_norm = 0.5;  // the gradients below have norm > 0.5: clipping is active
  const size_t n = layout.total_size();
  const std::vector<double> g = test::random_values(n, 3);
  const std::vector<double> p0 = test::random_values(n, 4);
  std::vector<float> grads(g.begin(), g.end()), scaled(n), params(p0.begin(), p0.end());
  for (size_t i = 0; i < n; ++i) scaled[i] = grads[i] * 4096.0f;

  const auto run = [&](const std::vector<float>& gradient, double loss_scale, double* clip) {
    AdamW<float> adam(c, layout, *backend);
    DeviceBuffer<float> p(*backend, n), d(*backend, n);
    backend->copy_from_host(p.data(), params.data(), n);
    backend->copy_from_host(d.data(), gradient.data(), n);
    for (long long step = 0; step < 3; ++step) {
      const double norm = adam.gradient_norm(d.data()) / loss_scale;
      *clip = adam.step_with_norm(p.data(), d.data(), step, norm, loss_scale).clip_factor;
    }
    std::vector<float> out(n);
    backend->copy_to_host(out.data(), p.data(), n);
    return out;
  };
  double clip_plain = 0, clip_scaled = 0;
  const std::vector<float> a = run(grads, 1.0, &clip_plain);
  const std::vector<float> b = run(scaled, 4096.0, &clip_scaled);
  EXPECT_LT(clip_plain, 1.0);
  EXPECT_EQ(clip_plain, clip_scaled);
  ASSERT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0);
  EXPECT_NE(a, params);
  // Passing the scaled norm (the mistake this API guards against) changes the update.
  double ignored = 0;
  AdamW<float> adam(c, layout, *backend);
  DeviceBuffer<float> p(*backend, n), d(*backend, n);
  backend->copy_from_host(p.data(), params.data(), n);
  backend->copy_from_host(d.data(), scaled.data(), n);
  ignored = adam.step_with_norm(p.data(), d.data(), 0, adam.gradient_norm(d.data()), 4096.0).clip_factor;
  EXPECT_LT(ignored, clip_plain);
  EXPECT_THROW(adam.step_with_norm(p.data(), d.data(), 1, 1.0, 0.0), Error);
}

}  // namespace
}  // namespace electra
