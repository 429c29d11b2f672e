// One optimizer step, for electra-train and electra-bench alike: zero the gradients, forward and backward
// over the micro-batches (each trimmed to its longest row with data.trim_padding), the gradient allreduce
// started from backward's hooks, the agreed finite check with its loss-scale outcome, then clipping and
// the optimizer update on the true gradient norm. What only the trainer does (fault injection, naming the
// ranks of a skipped step, the running AUC) goes through StepCallbacks or reads the StepOutcome.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <type_traits>

#include "lib/core/batch.h"
#include "lib/dist/communicator.h"
#include "lib/dist/gradient_reducer.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/loss_scaler.h"
#include "lib/optim/optimizer.h"
#include "lib/train/step_profile.h"

namespace electra::train {

// Sums of one step over its micro-batches; `+=` adds steps of a log window, values() sums them over ranks
// in one allreduce. Losses are already global (normalised by global counts), so their sum over ranks is
// the step's loss.
struct StepMetrics {
  double total_loss = 0;
  double mlm_loss = 0;
  double disc_loss = 0;
  double sentence_loss = 0;
  double mlm_correct = 0;
  double mlm_weight = 0;
  double disc_correct = 0;
  double disc_tokens = 0;      // real (input_mask != 0) tokens
  double disc_fake = 0;        // replaced tokens
  double tokens = 0;           // slots: rows x data.seq_length, padding included
  double computed_tokens = 0;  // slots computed on: rows x each micro-batch's (trimmed) length
  double computed_flops = 0;   // model_flops_per_step of each micro-batch's computed shape

  static constexpr size_t kNumValues = 12;

  StepMetrics& operator+=(const StepMetrics& other);
  // One micro-batch's losses and counts.
  void add(const PretrainerLosses& losses);
  // The fields as one array (declaration order), for allreduce_sum.
  std::span<double> values() { return {&total_loss, kNumValues}; }
  std::span<const double> values() const { return {&total_loss, kNumValues}; }
  // A window of `steps` summed steps: the losses and the per-step sizes (tokens, computed_tokens,
  // computed_flops) averaged over them; the counts behind accuracies and fractions stay sums.
  StepMetrics window_average(int steps) const;
};
static_assert(std::is_standard_layout_v<StepMetrics> && sizeof(StepMetrics) == StepMetrics::kNumValues * sizeof(double),
              "StepMetrics::values() spans its doubles: only doubles, no padding");

// What became of one optimizer step.
enum class StepResult {
  kApplied,
  kOverflow,  // loss scaling: the scaled gradients overflowed, the scale was lowered (an expected event)
  kSkipped,   // a non-finite loss or gradient: counts toward train.max_skipped_steps
};

struct StepOutcome {
  StepResult result = StepResult::kApplied;
  StepMetrics metrics;          // this rank's sums (not yet over ranks)
  int64_t real_tokens = 0;      // real (non-pad) tokens of the global batch, whatever became of the step
  bool locally_finite = true;   // this rank's loss and gradients (false names it in a skipped step's warning)
  bool ranges_checked = false;  // gradients checked per range before the allreduce (else the reduced norm decided)
  double loss_scale = 1;        // the scale the step ran with
  double grad_norm = 0;         // the true (unscaled) global gradient norm; applied steps only
  double lr = 0;                // the learning rate applied; applied steps only
  double hook_seconds = 0;      // in backward's gradient hooks (range checks, the reducer's calls)
  double reducer_seconds = 0;   // of which in the reducer's mark_ready / progress
};

// What one step works on; the caller owns all of it.
struct StepParts {
  PretrainerModel<float>* model = nullptr;
  Optimizer<float>* optimizer = nullptr;
  LossScaler* loss_scaler = nullptr;
  Backend<float>* backend = nullptr;
  const dist::Communicator* comm = nullptr;
  dist::GradientReducer* reducer = nullptr;  // null: no allreduce (one rank)
};

struct StepOptions {
  uint64_t seed = 1;                 // train.seed: keys dropout and sampling
  int micro_rows = 0;                // rows per forward/backward (0: the whole slice); must divide the slice
  bool trim_padding = true;          // data.trim_padding
  bool overlap = true;               // start each range's allreduce during backward (else reduce_all after it)
  bool stages_through_host = false;  // the reducer copies device gradients to the host (RankReducer)
};

// Optional callbacks; empty ones cost nothing.
struct StepCallbacks {
  std::function<void(StepPhase)> on_model_phase;  // StepHooks::on_phase of every micro-batch
  // Each step phase as it begins: "zero_gradients", "allreduce" (with a reducer), "finite_check",
  // "optimizer" (applied steps). For electra-bench --breakdown.
  std::function<void(const char* phase)> on_phase;
  // Each micro-batch after its backward (electra-train's running AUC).
  std::function<void(const Batch& rows, const PretrainerOutputs<float>& out)> on_micro_batch;
  // A range of the gradient is final (last micro-batch), before it is checked and reduced.
  std::function<void(size_t offset, size_t count)> on_gradients_ready;
  // After the last backward, before waiting for the allreduce.
  std::function<void()> after_backward;
};

// This rank's global loss denominators summed over ranks (one allreduce): with them the gradient summed
// over ranks is the global batch's gradient.
GlobalNormalizers global_normalizers(const Batch& batch, const dist::Communicator& comm);

class TrainStep {
 public:
  TrainStep(const StepParts& parts, const StepOptions& options);

  // One optimizer step on this rank's slice `batch`; `step` is the number of completed optimizer steps
  // (keys dropout and the learning rate), `skipped_before` how many of them were skipped (non-finite or
  // overflowed: Adam's t counts only the updates, Optimizer::step_with_norm). Collective over the communicator.
  // `profile` (train.profile) gets the forward/backward, gradient hook, allreduce wait, finite check and optimizer
  // phases.
  StepOutcome run(const Batch& batch, const GlobalNormalizers& global, int64_t step, int64_t skipped_before,
                  const StepCallbacks& callbacks = {}, StepProfile* profile = nullptr);

  // NaN/Inf is checked per gradient range on this rank as backward finishes it (so a log can name the
  // rank), except when the allreduce runs on the device: there every check would stall the GPU once per
  // range, so the reduced gradient's norm decides (the same on every rank).
  bool checks_ranges() const { return check_ranges_; }

 private:
  StepParts parts_;
  StepOptions options_;
  bool check_ranges_ = true;
  Batch micro_;  // the step's micro-batch or trimmed batch (its vectors keep their capacity)
};

}  // namespace electra::train
