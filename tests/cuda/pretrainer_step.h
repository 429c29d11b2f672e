// One whole pre-training step for the CUDA-vs-CPU pretrainer tests (pretrainer_test.cpp on float storage,
// pretrainer_bf16_test.cpp on bf16 storage): the same parameters, batch, seeds and optimizer settings on
// whichever backend runs it.
#pragma once

#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"

namespace electra::test {

struct AdamStepResult {
  PretrainerOutputs<float> first, second;  // forward before and after one AdamW step
  std::vector<float> grads, params;
  OptimizerStepStats stats;
};

// Forward, backward and one AdamW step on the fp32 master parameters (lr 1e-3, no warmup) of a model with
// storage type T initialised from seed 123, then a second forward (it reads the updated parameters).
template <typename T>
AdamStepResult run_adam_step(Backend<T>& be, const PretrainerConfig& config, const Batch& batch,
                             AttentionImpl attention = AttentionImpl::kAuto) {
  ElectraPretrainer<T> model(config, be);
  model.set_attention_impl(attention);
  model.init_parameters(123);
  OptimizerConfig oc;
  oc.lr = 1e-3;
  oc.warmup_steps = 0;
  oc.total_steps = 100;
  AdamW<float> adam(oc, model.layout(), model.parameter_backend());
  StepContext ctx;
  ctx.seed = 77;
  ctx.step = 3;
  AdamStepResult r;
  model.zero_gradients();
  r.first = model.forward(batch, ctx);
  model.backward();
  r.grads = model.gradients_to_host();
  r.stats = adam.step(model.parameters(), model.gradients(), 3);
  r.params = model.parameters_to_host();
  ctx.step = 4;
  r.second = model.forward(batch, ctx);
  return r;
}

}  // namespace electra::test
