// AdamW over the flat parameter buffer (google-research/electra's AdamWeightDecayOptimizer by default),
// with the ELECTRA learning-rate schedule and global-norm gradient clipping.
//
// Keys of the `optim` section (all optional; defaults are ELECTRA-small's):
//   lr               float 5e-4    peak learning rate lr0
//   warmup_steps     int   10000   W: linear warmup
//   decay_power      float 1.0     p: polynomial decay to 0 at the last step
//   beta1, beta2     float 0.9, 0.999
//   eps              float 1e-6
//   weight_decay     float 0.01    decoupled; not applied to LayerNorm parameters and biases
//   clip_norm        float 1.0     global gradient norm bound (<= 0: no clipping)
//   bias_correction  bool  false   true: PyTorch AdamW's bias-corrected moments
//   loss_scale       object        loss scaling (mode, init, backoff, growth_interval): loss_scaler.h
// The number of training steps T comes from the train section (train.steps) and is passed separately.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"
#include "lib/optim/loss_scaler.h"

namespace electra {

struct OptimizerConfig {
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

struct OptimizerStepStats {
  double lr = 0.0;
  double grad_norm = 0.0;    // before clipping
  double clip_factor = 1.0;  // the factor the gradients were scaled by
};

template <typename T>
class AdamW {
 public:
  // Allocates m and v (layout.total_size() each, zero) through `backend`, which must outlive this.
  AdamW(const OptimizerConfig& config, const ParameterLayout& layout, Backend<T>& backend);

  // sqrt(sum of squares) of the whole flat gradient buffer (deterministic order).
  double gradient_norm(const T* grads);
  // One update of params with grads (device buffers in the layout). `step` is the number of completed
  // optimizer steps: the learning rate is learning_rate(step) and Adam's t = step + 1. Gradients are
  // clipped to clip_norm by scaling (passed to the backend as grad_scale, grads are not modified).
  OptimizerStepStats step(T* params, const T* grads, long long step);
  // The same with a norm computed by the caller (e.g. after a NaN check). With loss scaling, `grads` hold
  // loss_scale * the true gradients and `grad_norm` is the norm of the TRUE (unscaled) gradients: clipping
  // is decided on it, and the backend's grad_scale is clip_factor / loss_scale.
  OptimizerStepStats step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                    double loss_scale = 1.0);

  // First and second moments (device, layout order): what a checkpoint saves as adam_m / adam_v.
  T* first_moment() { return m_.data(); }
  T* second_moment() { return v_.data(); }
  size_t size() const { return size_; }
  void reset_moments();
  const OptimizerConfig& config() const { return config_; }

 private:
  // Contiguous views with the same weight-decay flag, updated with one backend call each.
  struct Run {
    size_t offset, size;
    bool decay;
  };
  OptimizerConfig config_;
  Backend<T>& backend_;
  size_t size_;
  std::vector<Run> runs_;
  DeviceBuffer<T> m_, v_;
};

}  // namespace electra
