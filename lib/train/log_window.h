// When electra-train's periodic concerns act, and the training line's log window. Each concern says for
// itself whether a step is its step (torchtitan's should_log / should_validate / checkpointer.save):
// logging every train.log_every steps, evaluation every train.eval_every, checkpoints every
// train.checkpoint_every, each also at the last step.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "lib/dist/communicator.h"
#include "lib/eval/eval_metrics.h"
#include "lib/train/step.h"

namespace electra::train {

// Every `every` completed steps (0: never) and at `last_step`.
struct Periodic {
  int64_t every = 0;
  int64_t last_step = 0;
  bool due(int64_t step) const { return (every > 0 && step % every == 0) || step == last_step; }
};

// Bins of the training line's running disc_auc: pairs in one bin count as ties, so the AUC of a collapsed
// discriminator (scores differing in the sixth decimal) is 0.5, not float noise.
constexpr int kRunningAucBins = 1000;

// The applied steps since the last training line: their StepMetrics and discriminator scores (of real
// tokens, by class), and the wall time they took.
class LogWindow {
 public:
  using Clock = std::chrono::steady_clock;

  explicit LogWindow(Periodic schedule) : schedule_(schedule) {}

  // An applied step's sums and scores (this rank's).
  void add(const StepMetrics& metrics, const eval::ScoreHistogram& scores);
  // A line is due at the schedule's steps when the window holds an applied step (every rank applies the
  // same steps, so all agree; a window of only skipped steps has nothing to report).
  bool should_log(int64_t step) const { return schedule_.due(step) && steps_ > 0; }
  // The schedule alone (train.profile's line comes with it).
  bool at_log_step(int64_t step) const { return schedule_.due(step); }
  // Checkpoints and evaluations are not the steps' time: the window's clock restarts after them.
  void restart_clock() { start_ = Clock::now(); }

  struct Summary {
    StepMetrics average;  // summed over ranks, StepMetrics::window_average over the window's steps
    int steps = 0;
    double step_seconds = 0;  // wall seconds per step
    double disc_auc = 0;      // of the window's scores over all ranks; NaN without both classes
  };
  // Sums the window over ranks (collective: two allreduces) and starts the next one.
  Summary close(const dist::Communicator& comm);

  // This rank's open window (its steps, sums and score counts; not its clock), for a checkpoint: a run
  // stopped between training lines and resumed then logs the same numbers at the next line as a run that
  // did not stop. `state` of one rank; restore() adds its sums and scores to the window (a resume on another
  // number of ranks merges them all on rank 0). Every rank's window holds the same steps.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

 private:
  Periodic schedule_;
  StepMetrics sums_;
  eval::ScoreHistogram scores_{kRunningAucBins};
  int steps_ = 0;
  Clock::time_point start_ = Clock::now();
};

}  // namespace electra::train
