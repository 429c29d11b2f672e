// Loss scaling: the backward pass starts from loss_scale * d(loss) so that small gradients survive fp16
// GEMMs; the optimizer divides it out again (AdamW::step_with_norm's loss_scale). With dynamic scaling
// the scale halves on a step whose gradients are not finite (that step is skipped) and doubles after
// growth_interval finite steps in a row, as torch.cuda.amp.GradScaler and apex do.
//
// Keys of the `optim.loss_scale` section (all optional):
//   mode             string "auto"   "auto": "dynamic" when train.precision is fp16, else "off";
//                                    "dynamic": as above; "fixed": always `init`; "off": scale 1
//   init             float  65536    the first (dynamic) or only (fixed) scale, in [1, 2^24]
//   backoff          float  0.5      factor applied on a non-finite step (dynamic), in (0, 1)
//   growth_interval  int    2000     finite steps in a row before the scale doubles (dynamic), >= 1
// Powers of two keep scaled gradients exactly proportional to unscaled ones (float products by 2^k are
// exact), so a fixed power-of-two scale gives bitwise the same training as no scale.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace electra {

enum class LossScaleMode { kAuto, kOff, kFixed, kDynamic };
// "auto" | "off" | "fixed" | "dynamic"; fails naming optim.loss_scale.mode and the accepted values.
LossScaleMode parse_loss_scale_mode(const std::string& name);
std::string to_string(LossScaleMode mode);

struct LossScaleConfig {
  static constexpr double kMinScale = 1.0;
  static constexpr double kMaxScale = 16777216.0;  // 2^24
  LossScaleMode mode = LossScaleMode::kAuto;
  double init = 65536.0;
  double backoff = 0.5;
  int64_t growth_interval = 2000;
};

// Parses the `optim.loss_scale` section (keys above); unknown keys, wrong types and values out of range
// fail naming the key ("optim.loss_scale.backoff").
LossScaleConfig loss_scale_config_from_json(const nlohmann::json& section);
nlohmann::json to_json(const LossScaleConfig& config);

// What a step's gradients did to the scaler.
enum class LossScaleOutcome {
  kApply,     // finite: apply the update
  kOverflow,  // not finite, dynamic scale above the minimum: skip the step, the scale was lowered;
              // an expected event, not a failure
  kNonFinite  // not finite and scaling cannot help (off, fixed, or already at the minimum): skip and
              // count it as a failed step
};

class LossScaler {
 public:
  // `fp16` resolves mode "auto". Fails when the config is out of range (see loss_scale_config_from_json).
  LossScaler(const LossScaleConfig& config, bool fp16);

  LossScaleMode mode() const { return mode_; }  // never kAuto
  bool dynamic() const { return mode_ == LossScaleMode::kDynamic; }
  // Whether the loss is scaled at all (a fixed scale of 1 is the same as off).
  bool enabled() const { return mode_ != LossScaleMode::kOff && (dynamic() || scale_ != 1.0); }
  double scale() const { return scale_; }
  // Finite steps since the last change of the scale (or the last non-finite step).
  int64_t good_steps() const { return good_steps_; }

  // Called once per optimizer step with the verdict all ranks agreed on: are the scaled gradients finite?
  LossScaleOutcome update(bool gradients_finite);

  // {"loss_scale": scale, "loss_scale_mode": "dynamic", "loss_scale_good_steps": n}: keys of a
  // checkpoint's /state JSON.
  nlohmann::json state() const;
  // Continues from a checkpoint's /state saved in the same mode: the count of finite steps, and a dynamic
  // scaler's scale (clamped to the bounds); otherwise (an older checkpoint without these keys, another
  // mode) it keeps its start values. Returns whether it restored a dynamic scale.
  bool restore(const nlohmann::json& state);

 private:
  LossScaleMode mode_;
  double init_, backoff_;
  int64_t growth_interval_;
  double scale_;
  int64_t good_steps_ = 0;
};

}  // namespace electra
