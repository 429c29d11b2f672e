#include "lib/optim/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "lib/core/error.h"

namespace electra {

LossScaleMode parse_loss_scale_mode(const std::string& name) {
  if (name == "auto") return LossScaleMode::kAuto;
  if (name == "off") return LossScaleMode::kOff;
  if (name == "fixed") return LossScaleMode::kFixed;
  if (name == "dynamic") return LossScaleMode::kDynamic;
  fail("config key 'optim.loss_scale.mode': unknown mode '", name, "' (expected auto, dynamic, fixed or off)");
}

std::string to_string(LossScaleMode mode) {
  switch (mode) {
    case LossScaleMode::kAuto:
      return "auto";
    case LossScaleMode::kOff:
      return "off";
    case LossScaleMode::kFixed:
      return "fixed";
    case LossScaleMode::kDynamic:
      return "dynamic";
  }
  fail("to_string: unknown loss scale mode ", static_cast<int>(mode));
}

namespace {

void check(const LossScaleConfig& c) {
  if (!(c.init >= LossScaleConfig::kMinScale && c.init <= LossScaleConfig::kMaxScale)) {
    fail("config key 'optim.loss_scale.init' must be in [1, 16777216], got ", c.init);
  }
  if (!(c.backoff > 0.0 && c.backoff < 1.0)) {
    fail("config key 'optim.loss_scale.backoff' must be in (0, 1), got ", c.backoff);
  }
  if (c.growth_interval < 1) {
    fail("config key 'optim.loss_scale.growth_interval' must be >= 1, got ", c.growth_interval);
  }
}

}  // namespace

LossScaleConfig loss_scale_config_from_json(const nlohmann::json& section) {
  static const std::set<std::string> keys = {"mode", "init", "backoff", "growth_interval"};
  if (!section.is_object()) fail("config section 'optim.loss_scale' must be a JSON object, got ", section.dump());
  for (const auto& [key, value] : section.items()) {
    if (!keys.count(key)) fail("unknown config key 'optim.loss_scale.", key, "'");
  }
  LossScaleConfig c;
  if (section.contains("mode")) {
    const nlohmann::json& mode = section.at("mode");
    if (!mode.is_string()) fail("config key 'optim.loss_scale.mode': expected a string, got ", mode.dump());
    c.mode = parse_loss_scale_mode(mode.get<std::string>());
  }
  for (const char* key : {"init", "backoff"}) {
    if (!section.contains(key)) continue;
    const nlohmann::json& value = section.at(key);
    if (!value.is_number()) fail("config key 'optim.loss_scale.", key, "': expected a number, got ", value.dump());
    (std::string(key) == "init" ? c.init : c.backoff) = value.get<double>();
  }
  if (section.contains("growth_interval")) {
    const nlohmann::json& value = section.at("growth_interval");
    if (!value.is_number_integer()) {
      fail("config key 'optim.loss_scale.growth_interval': expected an integer, got ", value.dump());
    }
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("config key 'optim.loss_scale.growth_interval': ", value.dump(), " is too large");
    }
    c.growth_interval = value.get<int64_t>();
  }
  check(c);
  return c;
}

nlohmann::json to_json(const LossScaleConfig& c) {
  return nlohmann::json{
      {"mode", to_string(c.mode)}, {"init", c.init}, {"backoff", c.backoff}, {"growth_interval", c.growth_interval}};
}

LossScaler::LossScaler(const LossScaleConfig& config, bool fp16)
    : mode_(config.mode == LossScaleMode::kAuto ? (fp16 ? LossScaleMode::kDynamic : LossScaleMode::kOff) : config.mode),
      init_(config.init),
      backoff_(config.backoff),
      growth_interval_(config.growth_interval) {
  check(config);
  scale_ = mode_ == LossScaleMode::kOff ? 1.0 : init_;
}

LossScaleOutcome LossScaler::update(bool gradients_finite) {
  if (gradients_finite) {
    ++good_steps_;
    if (dynamic() && good_steps_ >= growth_interval_) {
      scale_ = std::min(scale_ * 2.0, LossScaleConfig::kMaxScale);
      good_steps_ = 0;
    }
    return LossScaleOutcome::kApply;
  }
  good_steps_ = 0;
  // At the minimum a smaller scale cannot help: the gradients are broken, not overflowing.
  if (!dynamic() || scale_ <= LossScaleConfig::kMinScale) return LossScaleOutcome::kNonFinite;
  scale_ = std::max(scale_ * backoff_, LossScaleConfig::kMinScale);
  return LossScaleOutcome::kOverflow;
}

nlohmann::json LossScaler::state() const {
  return nlohmann::json{
      {"loss_scale", scale_}, {"loss_scale_mode", to_string(mode_)}, {"loss_scale_good_steps", good_steps_}};
}

bool LossScaler::restore(const nlohmann::json& state) {
  // Only a state saved in the same mode continues (an older checkpoint has none of these keys).
  if (!state.is_object() || !state.contains("loss_scale_good_steps") || !state.contains("loss_scale_mode") ||
      state.at("loss_scale_mode") != to_string(mode_)) {
    return false;
  }
  const nlohmann::json& good = state.at("loss_scale_good_steps");
  if (!good.is_number_integer()) fail("checkpoint state: loss_scale_good_steps ", good.dump(), " is not an integer");
  // Without a dynamic scale the count is all there is (it counts finite steps); the scale stays as configured.
  good_steps_ = std::max<int64_t>(0, good.get<int64_t>());
  if (!dynamic() || !state.contains("loss_scale")) return false;
  const nlohmann::json& scale = state.at("loss_scale");
  if (!scale.is_number()) fail("checkpoint state: loss_scale ", scale.dump(), " is not a number");
  const double saved = scale.get<double>();
  if (!std::isfinite(saved)) fail("checkpoint state: loss_scale ", saved, " is not finite");
  scale_ = std::clamp(saved, LossScaleConfig::kMinScale, LossScaleConfig::kMaxScale);
  return true;
}

}  // namespace electra
