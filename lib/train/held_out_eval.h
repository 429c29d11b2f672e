// electra-train's evaluation component: the held-out shards of data.eval_dir, evaluated (lib/eval) every
// train.eval_every steps and at the last; rank 0 logs the metrics and writes them to metrics.jsonl and
// TensorBoard as "eval/<name>".
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data_pipeline/loader/loader.h"
#include "lib/dist/communicator.h"
#include "lib/model/pretrainer.h"
#include "lib/train/log_window.h"
#include "lib/train/metrics.h"
#include "lib/train/tensorboard.h"
#include "lib/train/train_settings.h"

namespace electra::train {

class HeldOutEval {
 public:
  // Opens data.eval_dir when it is set and train.eval_every > 0, masked as the training data (settings.loader:
  // mask_prob, max_predictions, vocab_path); rank 0 warns when only one of the two is set (evaluation off).
  // Fails when the held-out shards were made with another vocabulary than `training_loader`'s.
  HeldOutEval(const TrainSettings& settings, const data::Loader& training_loader, const dist::Communicator& comm);

  bool should_evaluate(int64_t step) const { return loader_ && schedule_.due(step); }
  // The held-out shards' identity (ShardDataset::identity), null when evaluation is off.
  nlohmann::json data_identity() const { return loader_ ? loader_->dataset().identity() : nlohmann::json(); }

  // Evaluates `model` after `step` (collective: every rank its slice of the same batches). `metrics` and
  // `tensorboard` are rank 0's writers (null elsewhere; no TensorBoard with train.tensorboard off).
  void evaluate(PretrainerModel<float>& model, int64_t step, MetricsWriter* metrics, TensorBoardWriter* tensorboard);

 private:
  const TrainSettings& settings_;
  const dist::Communicator& comm_;
  std::unique_ptr<data::Loader> loader_;  // null: evaluation off
  Periodic schedule_;                     // train.eval_every, and the last step
};

}  // namespace electra::train
