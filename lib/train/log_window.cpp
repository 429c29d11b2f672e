#include "lib/train/log_window.h"

#include <span>

namespace electra::train {

void LogWindow::add(const StepMetrics& metrics, const eval::ScoreHistogram& scores) {
  sums_ += metrics;
  const std::span<const int64_t> step_counts = scores.counts();
  const std::span<int64_t> window_counts = scores_.counts();
  for (size_t i = 0; i < window_counts.size(); ++i) window_counts[i] += step_counts[i];
  ++steps_;
}

LogWindow::Summary LogWindow::close(const dist::Communicator& comm) {
  comm.allreduce_sum(sums_.values());
  comm.allreduce_sum(scores_.counts());
  Summary summary;
  summary.average = sums_.window_average(steps_);
  summary.steps = steps_;
  summary.step_seconds = std::chrono::duration<double>(Clock::now() - start_).count() / steps_;
  summary.disc_auc = eval::auc_from_histogram(scores_);
  sums_ = StepMetrics{};
  scores_.clear();
  steps_ = 0;
  start_ = Clock::now();
  return summary;
}

}  // namespace electra::train
