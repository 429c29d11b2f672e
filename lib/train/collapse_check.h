// Is the discriminator learning? ELECTRA's discriminator can collapse to the base rate: it then predicts
// "replaced" with probability replaced_fraction for every token, its loss equals the binary entropy of
// that fraction and its accuracy equals 1 - replaced_fraction, which looks high. Its gain over the prior
// (eval::discriminator_gain, nats per token) is then 0, while a learning discriminator's is clearly
// positive (the tiny preset on the Python docs: 0.02-0.13 nats after warm-up; collapsed runs: |gain| < 0.002).
//
// CollapseCheck watches the gain of each log window once warm-up is over and reports when it has stayed
// under `min_gain` for `windows` log windows in a row: electra-train then logs a warning that names the
// likely causes and the keys to change (train.collapse_warning.*).
#pragma once

#include <cstdint>

namespace electra::train {

struct CollapseCheckOptions {
  double min_gain = 0.005;   // nats per token (train.collapse_warning.min_gain)
  int windows = 5;           // log windows in a row; 0 turns the check off (train.collapse_warning.windows)
  int64_t warmup_steps = 0;  // windows ending at or before this step are not judged (optim.warmup_steps)
};

class CollapseCheck {
 public:
  // The streak so far: checkpoints carry it (state "collapse_streak"), so a run stopped and resumed every
  // few windows still warns, as the run without stops does.
  struct Streak {
    int windows = 0;         // judged windows in a row under min_gain
    int64_t start_step = 0;  // the last step of the streak's first window
    bool reported = false;   // this streak has warned
    bool operator==(const Streak&) const = default;
  };

  explicit CollapseCheck(const CollapseCheckOptions& options);

  // One log window ending at `step` (completed optimizer steps) with its gain. Returns true when this
  // window makes `windows` judged windows in a row under min_gain: once per such streak (a window at or
  // above min_gain ends the streak, and a new streak may fire again).
  bool observe(int64_t step, double gain);
  // The last step of the streak's first window (meaningful while streak_windows() > 0).
  int64_t streak_start_step() const { return streak_.start_step; }
  int streak_windows() const { return streak_.windows; }
  const Streak& streak() const { return streak_; }
  void restore(const Streak& streak) { streak_ = streak; }
  const CollapseCheckOptions& options() const { return options_; }

 private:
  CollapseCheckOptions options_;
  Streak streak_;
};

}  // namespace electra::train
