// electra-train's checkpointing component: which checkpoint a run starts from (--resume), what a checkpoint
// holds (parameters, the optimizer's moments, the loss scale, the global loader position, the vocabulary and
// the run's counters) and when one is written (train.checkpoint_every, the last step, a stop). The files
// themselves are CheckpointManager's (checkpoint_manager.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data_pipeline/loader/loader.h"
#include "lib/backend/backend.h"
#include "lib/core/config.h"
#include "lib/core/tensor_slice.h"
#include "lib/dist/communicator.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/loss_scaler.h"
#include "lib/optim/optimizer.h"
#include "lib/train/checkpoint.h"
#include "lib/train/checkpoint_manager.h"
#include "lib/train/collapse_check.h"
#include "lib/train/log_window.h"
#include "lib/train/train_settings.h"

namespace electra::train {

// The run's counters a checkpoint carries besides the tensors (state "step", "tokens_seen", "skipped_steps").
struct TrainingState {
  int64_t step = 0;  // completed optimizer steps
  int64_t tokens_seen = 0;
  int64_t skipped_steps = 0;  // steps whose update was skipped (non-finite or overflowed), over the whole run
  // Non-finite steps in a row (overflows of dynamic loss scaling excluded): train.max_skipped_steps stops
  // the run at the same step however often it is stopped and resumed.
  int64_t skipped_in_a_row = 0;
  // The last applied step's learning rate and gradient norm: a log window whose steps were all skipped
  // reports them, after a resume as before.
  double last_lr = 0, last_grad_norm = 0;
  // The CPU's parallel chunks (train.parallel_chunks as resolved): they fix the order of the gradient sums, so
  // a resume with the same count continues bitwise. 0: not a CPU run, or a checkpoint that did not say.
  int parallel_chunks = 0;
  // Each rank's parallel_chunks (rank 0's list; ranks may run other thread counts). On resume with as many
  // ranks, parallel_chunks above is this rank's entry.
  std::vector<int> rank_parallel_chunks;
  CollapseCheck::Streak collapse_streak;  // rank 0's (the one that judges the log windows)
};

// What a checkpoint is read into and written from; all owned by the trainer and outliving RunCheckpoints.
struct CheckpointParts {
  PretrainerModel<float>* model = nullptr;
  Optimizer<float>* optimizer = nullptr;
  LossScaler* loss_scaler = nullptr;
  Backend<float>* backend = nullptr;
  data::Loader* loader = nullptr;  // its vocabulary and global position
  const Config* config = nullptr;  // the resolved run configuration, stored in every checkpoint
  const dist::Communicator* comm = nullptr;
};

class RunCheckpoints {
 public:
  // Checkpoints in run_dir/checkpoints, kept and scheduled by `settings` (train.keep_last, train.keep_every,
  // train.checkpoint_every, train.steps; debug.hang_checkpoint_step hangs a save). `lower_case`: the shards'
  // tokenizer.lower_case (unknown without a manifest).
  RunCheckpoints(const CheckpointParts& parts, const TrainSettings& settings, std::filesystem::path run_dir,
                 std::optional<bool> lower_case);

  // --resume: "auto" (the newest complete checkpoint, else a fresh start), "none" or "" (a fresh start) or a
  // path. Reads the checkpoint into the parts and returns its counters with the path it came from; nullopt
  // for a fresh start. Fails when the checkpoint does not fit the run, when "auto" finds only damaged
  // checkpoints, and when a fresh start would write over a run's checkpoints.
  struct Resumed {
    TrainingState state;
    std::filesystem::path path;
    nlohmann::json log_windows;  // the saved ranks' LogWindow::state(), by rank (null in older checkpoints)
  };
  std::optional<Resumed> resume(const std::string& resume_option);

  // Rank 0, once the run has resumed `file` (of `step`): CheckpointManager::adopt_resumed.
  void adopt_resumed(int64_t step, const std::filesystem::path& file) { files_.adopt_resumed(step, file); }

  bool should_save(int64_t step) const { return schedule_.due(step); }
  // Writes the checkpoint of `state` (rank 0), with every rank's open log window (state "log_windows"),
  // unless that step already has one. Collective: every rank checks that all hold the same parameters,
  // hands its window to rank 0, and waits until the file is complete.
  void save(const TrainingState& state, const LogWindow& window);

 private:
  void resume_from(const std::filesystem::path& path, TrainingState& state, nlohmann::json& log_windows);
  void warn_of_changed_settings(const std::filesystem::path& path, const nlohmann::json& saved) const;
  void check_vocabulary(const CheckpointFile& file) const;

  CheckpointParts parts_;
  const TrainSettings& settings_;
  std::filesystem::path run_dir_;
  std::optional<bool> lower_case_;
  CheckpointManager files_;
  std::vector<TensorSlice> layout_;  // the model's tensors as the file stores them
  Periodic schedule_;                // train.checkpoint_every, and the last step
  bool temp_files_removed_ = false;  // rank 0 clears an interrupted save's files before its first save
  int64_t last_saved_step_ = -1;     // the step the newest checkpoint (written or resumed) holds
};

// Fails when the ranks' parameters are not bitwise equal (data parallelism is only right while they are):
// one allreduce of a hash each for max and min. Collective.
void check_parameters_agree(const PretrainerModel<float>& model, const dist::Communicator& comm, int64_t step,
                            const char* when);

}  // namespace electra::train
