// AdamW over the flat parameter buffer (google-research/electra's AdamWeightDecayOptimizer by default),
// with the ELECTRA learning-rate schedule and global-norm gradient clipping; the optimizer configuration
// shared with LAMB (lamb.h).
//
// Keys of the `optim` section (all optional; defaults are ELECTRA-small's):
//   name             string adamw  adamw | lamb (lamb.h: per-tensor trust ratios, for large global batches)
//   lr               float 5e-4    peak learning rate lr0
//   warmup_steps     int   10000   W: linear warmup
//   decay_power      float 1.0     p: polynomial decay to 0 at the last step
//   beta1, beta2     float 0.9, 0.999
//   eps              float 1e-6
//   weight_decay     float 0.01    decoupled; not applied to LayerNorm parameters and biases
//   clip_norm        float 1.0     global gradient norm bound (<= 0: no clipping)
//   bias_correction  bool  false   true: PyTorch AdamW's bias-corrected moments (adamw; lamb always corrects)
//   loss_scale       object        loss scaling (mode, init, backoff, growth_interval): loss_scaler.h
// The number of training steps T comes from the train section (train.steps) and is passed separately.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"
#include "lib/optim/loss_scaler.h"
#include "lib/optim/optimizer.h"

namespace electra {

struct OptimizerConfig {
  std::string name = "adamw";  // adamw | lamb
  double lr = 5e-4;
  long long warmup_steps = 10000;
  long long total_steps = 1000000;  // T (train.steps)
  double decay_power = 1.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;
  double weight_decay = 0.01;
  double clip_norm = 1.0;
  bool bias_correction = false;
  LossScaleConfig loss_scale;  // used by the trainer (LossScaler); AdamW itself takes the scale per step
};

// Parses the `optim` section (keys above); unknown keys, wrong types and invalid values fail naming the
// key ("optim.beta2"). total_steps must be positive.
OptimizerConfig optimizer_config_from_json(const nlohmann::json& optim, long long total_steps);
// The `optim` section (without total_steps).
nlohmann::json to_json(const OptimizerConfig& config);

// lr(t) = lr0 * (1 - min(t, T) / T)^p * min(1, t / W) for t = completed optimizer steps (0-based), as
// google-research/electra (polynomial_decay then warmup); W = 0 means no warmup. lr(0) = 0 when W > 0.
double learning_rate(const OptimizerConfig& config, long long step);
// clip_norm / max(norm, clip_norm) (tf.clip_by_global_norm), 1 when clip_norm <= 0.
double clip_factor(double grad_norm, double clip_norm);

// What AdamW and LAMB share: the configuration, the backend, first and second moments in the parameter
// layout, the gradient norm, and the step's schedule and clipping (step_stats).
template <typename T>
class MomentOptimizer : public Optimizer<T> {
 public:
  double gradient_norm(const T* grads) override;
  // Optimizer::step_with_norm with the norm computed here. Gradients are clipped to clip_norm by scaling
  // (passed to the backend as grad_scale, grads are not modified).
  OptimizerStepStats step(T* params, const T* grads, long long step);
  // First and second moments (device, layout order): what a checkpoint saves as adam_m / adam_v.
  T* first_moment() override { return m_.data(); }
  T* second_moment() override { return v_.data(); }
  size_t size() const override { return size_; }
  void reset_moments();
  const OptimizerConfig& config() const { return config_; }

 protected:
  // Allocates m and v (`size` each, zero) through `backend`, which must outlive this.
  MomentOptimizer(const OptimizerConfig& config, Backend<T>& backend, size_t size);
  // The learning rate of `step`, the norm and the clipping factor; fails unless loss_scale is positive
  // and finite. The backend's grad_scale is stats.clip_factor / loss_scale.
  OptimizerStepStats step_stats(long long step, double grad_norm, double loss_scale) const;

  OptimizerConfig config_;
  Backend<T>& backend_;
  size_t size_;
  DeviceBuffer<T> m_, v_;
};

template <typename T>
class AdamW final : public MomentOptimizer<T> {
 public:
  // Allocates m and v (layout.total_size() each, zero) through `backend`, which must outlive this.
  AdamW(const OptimizerConfig& config, const ParameterLayout& layout, Backend<T>& backend);

  const char* name() const override { return "adamw"; }
  // See Optimizer::step_with_norm; the backend's grad_scale is clip_factor / loss_scale.
  OptimizerStepStats step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                    double loss_scale = 1.0, long long updates_before = -1) override;

 private:
  // Contiguous slices with the same weight-decay flag, updated with one backend call each.
  struct Run {
    size_t offset, size;
    bool decay;
  };
  std::vector<Run> runs_;
};

}  // namespace electra
