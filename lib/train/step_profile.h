// Where electra-train's wall time goes between two log lines (config key train.profile): the trainer times
// each phase of its loop (loader, the per-step collectives, forward + backward, the gradient-ready hook,
// the allreduce wait, the optimizer, logging, checkpoints) and logs one line per log window with the mean
// milliseconds per step, what no phase accounts for, and the process CPU time per step (robust against
// other jobs on the same cores, unlike wall time). Off, it costs one branch per phase.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace electra::train {

enum class TrainPhase {
  kLoader,           // Loader::next (waits only when the prefetch thread is behind)
  kCounts,           // allreduce of the global loss denominators
  kForwardBackward,  // the model's forward and backward, without the gradient-ready hook
  kGradientHook,     // in backward: NaN/Inf check of each finished range, host copy, starting its allreduce
  kAllreduceWait,    // waiting for the gradient allreduce after backward
  kFiniteCheck,      // agree_all on finite losses and gradients
  kOptimizer,        // gradient norm and AdamW
  kStopCheck,        // agree_any on stopping at the step boundary
  kLogging,          // metrics allreduce, log line, metrics.jsonl, TensorBoard
  kCheckpoint,       // checkpoint writes (and their barrier)
  kEval,             // held-out evaluation
  kCount
};

// Short name used in the log line ("fwd+bwd", "allreduce wait", ...).
const char* to_string(TrainPhase phase);

// Seconds of CPU time used so far by the whole process (all threads) and by the calling thread.
double process_cpu_seconds();
double thread_cpu_seconds();

// Wall seconds since `start` (steady clock).
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class StepProfile {
 public:
  using Clock = std::chrono::steady_clock;

  // Values of one window as summed over ranks by one allreduce: per phase seconds, then the window's
  // wall seconds, the slowest step, process CPU and main-thread CPU seconds, and the step count.
  static constexpr size_t kNumValues = static_cast<size_t>(TrainPhase::kCount) + 5;

  StepProfile() { start_window(); }

  // Starts a new window now (clears the sums).
  void start_window();
  void add(TrainPhase phase, double seconds) { seconds_[static_cast<size_t>(phase)] += seconds; }
  // One more step in the window, which took `step_seconds` of wall time.
  void count_step(double step_seconds);
  int steps() const { return steps_; }

  // This rank's window: kNumValues numbers, laid out as described above (wall and CPU up to now).
  std::vector<double> window_values() const;

  // One log line from window_values() summed over `ranks` ranks: mean ms per step per phase (phases
  // under 0.05 ms left out), their share of the wall time, what no phase accounts for, the slowest
  // step, and CPU ms per step summed over the ranks. `first_step`/`last_step` label the window.
  static std::string format(std::span<const double> summed, int ranks, int64_t first_step, int64_t last_step);

 private:
  std::array<double, static_cast<size_t>(TrainPhase::kCount)> seconds_{};
  Clock::time_point window_start_;
  double process_cpu_start_ = 0;
  double thread_cpu_start_ = 0;
  double slowest_step_ = 0;
  int steps_ = 0;
};

// Adds the wall time from construction to destruction to `phase` of `profile`; with a null profile it
// reads no clock at all.
class ScopedPhase {
 public:
  ScopedPhase(StepProfile* profile, TrainPhase phase) : profile_(profile), phase_(phase) {
    if (profile_) start_ = StepProfile::Clock::now();
  }
  ~ScopedPhase() {
    if (profile_) profile_->add(phase_, std::chrono::duration<double>(StepProfile::Clock::now() - start_).count());
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  StepProfile* profile_;
  TrainPhase phase_;
  StepProfile::Clock::time_point start_;
};

}  // namespace electra::train
