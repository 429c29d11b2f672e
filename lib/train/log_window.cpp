#include "lib/train/log_window.h"

#include <span>
#include <utility>
#include <vector>

#include "lib/core/error.h"

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

nlohmann::json LogWindow::state() const {
  nlohmann::json sums = nlohmann::json::array();
  for (double v : sums_.values()) sums.push_back(v);  // finite: only applied steps are added
  // The score counts are sparse (a few hundred of 2,001 bins): [index, count] pairs.
  nlohmann::json counts = nlohmann::json::array();
  const std::span<const int64_t> c = scores_.counts();
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i] != 0) counts.push_back({i, c[i]});
  }
  return {{"steps", steps_}, {"sums", sums}, {"score_bins", scores_.bins()}, {"score_counts", counts}};
}

void LogWindow::restore(const nlohmann::json& state) {
  const std::span<int64_t> counts = scores_.counts();
  try {
    const nlohmann::json& saved_sums = state.at("sums");
    if (!saved_sums.is_array() || saved_sums.size() != StepMetrics::kNumValues ||
        state.at("score_bins") != scores_.bins()) {
      fail("the log window's layout differs from this build's (", StepMetrics::kNumValues, " sums, ", scores_.bins(),
           " bins)");
    }
    // Every rank applies the same steps: the windows of several ranks merge into one of as many steps.
    const int steps = state.at("steps").get<int>();
    if (steps < 0 || (steps_ != 0 && steps != steps_)) {
      fail("the log window holds ", steps, " steps where another rank's holds ", steps_);
    }
    StepMetrics saved;
    const std::span<double> values = saved.values();
    for (size_t i = 0; i < values.size(); ++i) values[i] = saved_sums[i].get<double>();
    std::vector<std::pair<size_t, int64_t>> bins;  // all read before any is added
    for (const nlohmann::json& pair : state.at("score_counts")) {
      const size_t index = pair.at(0).get<size_t>();
      if (index >= counts.size()) fail("the log window's score bin ", index, " is out of range");
      bins.emplace_back(index, pair.at(1).get<int64_t>());
    }
    for (const auto& [index, count] : bins) counts[index] += count;
    sums_ += saved;
    steps_ = steps;
  } catch (const nlohmann::json::exception& e) {
    fail("the checkpoint's log window is malformed: ", e.what());
  }
}

}  // namespace electra::train
