// LAMB over the flat parameter buffer, as NVIDIA DeepLearningExamples' ELECTRA (TensorFlow2) trains with
// large global batches (tfa.optimizers.LAMB, their recipe's --skip_adaptive): Adam's bias-corrected
// direction plus decoupled weight decay, scaled per parameter tensor by the trust ratio
// ||w|| / ||update|| (Backend::lamb_step_runs has the formula). optim.name = lamb picks it; the other
// keys are AdamW's (adamw.h: schedule, betas, eps, weight decay, clipping, loss scaling), except that
// optim.bias_correction does not apply (LAMB always corrects). LayerNorm parameters and biases take
// neither weight decay nor a trust ratio (ratio 1), as in NVIDIA's recipe.
#pragma once

#include <vector>

#include "lib/backend/backend.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"
#include "lib/optim/adamw.h"
#include "lib/optim/optimizer.h"

namespace electra {

template <typename T>
class Lamb final : public MomentOptimizer<T> {
 public:
  // Allocates m and v (layout.total_size() each, zero) through `backend`, which must outlive this. Fails
  // when the backend has no lamb_step_runs.
  Lamb(const OptimizerConfig& config, const ParameterLayout& layout, Backend<T>& backend);

  const char* name() const override { return "lamb"; }
  // See Optimizer::step_with_norm: one backend call, the gradients scaled by clip_factor / loss_scale.
  OptimizerStepStats step_with_norm(T* params, const T* grads, long long step, double grad_norm,
                                    double loss_scale = 1.0, long long updates_before = -1) override;
  // One run per layout slice (trust ratios are per tensor), in layout order.
  const std::vector<typename Backend<T>::LambRun>& runs() const { return runs_; }

 private:
  std::vector<typename Backend<T>::LambRun> runs_;
};

}  // namespace electra
