#include "lib/train/step.h"

#include <chrono>
#include <cmath>
#include <optional>

#include "lib/core/error.h"
#include "lib/model/config.h"

namespace electra::train {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

StepMetrics& StepMetrics::operator+=(const StepMetrics& other) {
  const std::span<const double> from = other.values();
  const std::span<double> to = values();
  for (size_t i = 0; i < kNumValues; ++i) to[i] += from[i];
  return *this;
}

void StepMetrics::add(const PretrainerLosses& l) {
  total_loss += l.total_loss;
  mlm_loss += l.mlm_loss;
  disc_loss += l.disc_loss;
  sentence_loss += l.sentence_loss;
  mlm_correct += l.mlm_correct_sum;
  mlm_weight += l.mlm_weight_sum;
  disc_correct += l.disc_correct_sum;
  disc_tokens += l.disc_token_count;
  disc_fake += l.disc_fake_count;
}

StepMetrics StepMetrics::window_average(int steps) const {
  StepMetrics out = *this;
  for (double* value : {&out.total_loss, &out.mlm_loss, &out.disc_loss, &out.sentence_loss, &out.tokens,
                        &out.computed_tokens, &out.computed_flops}) {
    *value /= steps;
  }
  return out;
}

GlobalNormalizers global_normalizers(const Batch& batch, const dist::Communicator& comm) {
  double counts[3] = {0, 0, static_cast<double>(batch.rows)};
  for (float w : batch.masked_lm_weights) counts[0] += w;
  for (int32_t m : batch.input_mask) counts[1] += m != 0 ? 1 : 0;  // packed rows hold example ids, not 1
  comm.allreduce_sum(std::span<double>(counts, 3));
  return GlobalNormalizers{counts[0], counts[1], counts[2]};
}

TrainStep::TrainStep(const StepParts& parts, const StepOptions& options) : parts_(parts), options_(options) {
  ELECTRA_CHECK(parts.model && parts.optimizer && parts.loss_scaler && parts.backend && parts.comm,
                "TrainStep: model, optimizer, loss scaler, backend and communicator are required");
  check_ranges_ = parts.backend->device() == DeviceKind::kCpu || options.stages_through_host;
}

StepOutcome TrainStep::run(const Batch& batch, const GlobalNormalizers& global, int64_t step, int64_t skipped_before,
                           const StepCallbacks& callbacks, StepProfile* prof) {
  PretrainerModel<float>& model = *parts_.model;
  Backend<float>& backend = *parts_.backend;
  const dist::Communicator& comm = *parts_.comm;
  dist::GradientReducer* const reducer = parts_.reducer;
  const bool overlap = reducer && options_.overlap;
  const auto phase = [&](const char* name) {
    if (callbacks.on_phase) callbacks.on_phase(name);
  };
  StepOutcome outcome;
  outcome.real_tokens = static_cast<int64_t>(global.input_mask_count);
  outcome.ranges_checked = check_ranges_;

  StepContext context;
  context.seed = options_.seed;
  context.step = static_cast<uint64_t>(step);
  context.training = true;
  context.global = global;
  context.copy_outputs = false;
  context.hooks.on_phase = callbacks.on_model_phase;
  outcome.loss_scale = parts_.loss_scaler->scale();
  context.loss_scale = static_cast<float>(outcome.loss_scale);  // powers of two (or at least >= 1): exact in float

  phase("zero_gradients");
  model.zero_gradients();
  float* gradients = model.gradients();
  bool gradients_finite = true;
  if (overlap) reducer->begin();
  // The last micro-batch's backward reports each range of the gradient buffer as it becomes final: the
  // range is checked for NaN/Inf, then its allreduce starts while backward goes on with earlier layers.
  StepHooks last_micro_batch = context.hooks;
  last_micro_batch.on_gradients_ready = [&](size_t offset, size_t count) {
    const auto hook_start = Clock::now();
    if (callbacks.on_gradients_ready) callbacks.on_gradients_ready(offset, count);
    if (check_ranges_) {
      gradients_finite = gradients_finite && std::isfinite(backend.sum_squares(gradients + offset, count));
    }
    if (overlap) {
      const auto reduce_start = Clock::now();
      reducer->mark_ready(offset, count);  // copies the range to the host first when staging
      outcome.reducer_seconds += seconds_since(reduce_start);
    }
    outcome.hook_seconds += seconds_since(hook_start);
  };
  if (overlap) {
    last_micro_batch.on_progress = [&] {
      const auto hook_start = Clock::now();
      reducer->progress();
      const double spent = seconds_since(hook_start);
      outcome.reducer_seconds += spent;
      outcome.hook_seconds += spent;
    };
  }
  StepMetrics& metrics = outcome.metrics;
  const int micro_rows = options_.micro_rows > 0 ? options_.micro_rows : batch.rows;
  const auto compute_start = prof ? Clock::now() : Clock::time_point{};
  for (int begin = 0; begin < batch.rows; begin += micro_rows) {
    const int end = begin + micro_rows;
    if (end == batch.rows) context.hooks = last_micro_batch;
    // data.trim_padding: the micro-batch computes on its longest row (a multiple of 8), its padding cut off;
    // the model keys dropout and plans by the untrimmed length, so only float rounding changes.
    const int seq = options_.trim_padding ? needed_seq_length(batch, begin, end) : batch.seq_length;
    const bool copy = end - begin < batch.rows || seq < batch.seq_length;
    if (copy) copy_rows(batch, begin, end, seq, micro_);
    const Batch& rows = copy ? micro_ : batch;
    metrics.computed_tokens += static_cast<double>(rows.rows) * rows.seq_length;
    metrics.computed_flops += model_flops_per_step(model.config(), rows.rows, rows.seq_length);
    const PretrainerOutputs<float>& out = model.forward(rows, context);
    model.backward();
    if (callbacks.on_micro_batch) callbacks.on_micro_batch(rows, out);
    metrics.add(out.losses);
  }
  metrics.tokens = static_cast<double>(batch.rows) * batch.seq_length;
  if (prof) {
    prof->add(TrainPhase::kForwardBackward, seconds_since(compute_start) - outcome.hook_seconds);
    prof->add(TrainPhase::kGradientHook, outcome.hook_seconds);
  }
  if (callbacks.after_backward) callbacks.after_backward();

  if (reducer) {
    phase("allreduce");
    ScopedPhase waiting(prof, TrainPhase::kAllreduceWait);
    if (overlap) {
      reducer->wait_all();  // and copies staged gradients back to the device
    } else {
      reducer->reduce_all();
    }
  }
  phase("finite_check");
  std::optional<double> reduced_norm;  // the (scaled) norm of the reduced gradient, when computed already
  if (!check_ranges_) {
    reduced_norm = parts_.optimizer->gradient_norm(model.gradients());
    gradients_finite = std::isfinite(*reduced_norm);
  }

  // Every rank must know whether anyone went non-finite before anyone updates.
  const bool loss_finite = std::isfinite(metrics.total_loss);
  outcome.locally_finite = loss_finite && gradients_finite;
  std::optional<ScopedPhase> finite_check(std::in_place, prof, TrainPhase::kFiniteCheck);
  const bool all_finite = comm.agree_all(outcome.locally_finite);
  finite_check.reset();
  if (!all_finite) {
    // Loss scaling: finite losses everywhere but non-finite (scaled) gradients are an overflow: the scale
    // goes down and the step is skipped, an expected event. A non-finite loss leaves the scale alone.
    const bool losses_finite = comm.agree_all(loss_finite);
    const LossScaleOutcome scaled = losses_finite ? parts_.loss_scaler->update(false) : LossScaleOutcome::kNonFinite;
    outcome.result = scaled == LossScaleOutcome::kOverflow ? StepResult::kOverflow : StepResult::kSkipped;
    return outcome;
  }

  phase("optimizer");
  ScopedPhase optimizing(prof, TrainPhase::kOptimizer);
  // Clipping is decided on the true gradient norm; the optimizer divides the loss scale out of the update.
  const double grad_norm =
      (reduced_norm ? *reduced_norm : parts_.optimizer->gradient_norm(model.gradients())) / outcome.loss_scale;
  const OptimizerStepStats stats = parts_.optimizer->step_with_norm(
      model.parameters(), model.gradients(), step, grad_norm, outcome.loss_scale, step - skipped_before);
  parts_.loss_scaler->update(true);
  outcome.grad_norm = grad_norm;
  outcome.lr = stats.lr;
  outcome.result = StepResult::kApplied;
  return outcome;
}

}  // namespace electra::train
