// What the trainer asks of an optimizer, whichever optim.name picks: AdamW (adamw.h, the default) or LAMB
// (lamb.h). Both keep first and second moments in the parameter layout (what a checkpoint saves as adam_m
// and adam_v), share the learning-rate schedule, global-norm clipping and loss-scale handling of adamw.h,
// and take the gradient norm from the caller (computed once, also for the NaN check).
#pragma once

#include <cstddef>
#include <memory>

#include "lib/backend/backend.h"
#include "lib/model/parameter_layout.h"

namespace electra {

struct OptimizerConfig;  // adamw.h

struct OptimizerStepStats {
  double lr = 0.0;
  double grad_norm = 0.0;    // before clipping
  double clip_factor = 1.0;  // the factor the gradients were scaled by
};

template <typename T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // optim.name: "adamw" or "lamb" (what a checkpoint records).
  virtual const char* name() const = 0;
  // sqrt(sum of squares) of the whole flat gradient buffer (deterministic order).
  virtual double gradient_norm(const T* grads) = 0;
  // One update of params with grads (device buffers in the layout). `step` is the number of completed
  // optimizer steps: the learning rate is learning_rate(step). `updates_before` is how many of them updated
  // (step less the skipped ones; -1: all): Adam's t = updates_before + 1, since the moments hold only those
  // updates (PyTorch's GradScaler and TF's LossScaleOptimizer leave a skipped step out of t). With loss scaling,
  // `grads` hold loss_scale * the true gradients and `grad_norm` is the norm of the TRUE (unscaled)
  // gradients: clipping is decided on it, and the gradients are scaled by clip_factor / loss_scale (grads
  // are not modified).
  virtual OptimizerStepStats step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                            double loss_scale = 1.0, long long updates_before = -1) = 0;
  // First and second moments (device, layout order, size() elements each).
  virtual T* first_moment() = 0;
  virtual T* second_moment() = 0;
  virtual size_t size() const = 0;
};

// The optimizer config.name names, moments zero, allocated through `backend` (which must outlive it).
// Fails when `backend` cannot run it (LAMB needs Backend::lamb_step_runs).
template <typename T>
std::unique_ptr<Optimizer<T>> make_optimizer(const OptimizerConfig& config, const ParameterLayout& layout,
                                             Backend<T>& backend);

}  // namespace electra
