#include "lib/train/step_profile.h"

#include <sys/resource.h>

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "lib/core/error.h"

namespace electra::train {
namespace {

constexpr size_t kNumPhases = static_cast<size_t>(TrainPhase::kCount);
// Positions after the phases in window_values().
constexpr size_t kWall = kNumPhases;
constexpr size_t kSlowest = kNumPhases + 1;
constexpr size_t kProcessCpu = kNumPhases + 2;
constexpr size_t kThreadCpu = kNumPhases + 3;
constexpr size_t kSteps = kNumPhases + 4;

double cpu_seconds(int who) {
  rusage usage{};
  if (getrusage(who, &usage) != 0) return 0.0;
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec); };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

const char* to_string(TrainPhase phase) {
  switch (phase) {
    case TrainPhase::kLoader:
      return "loader";
    case TrainPhase::kCounts:
      return "counts allreduce";
    case TrainPhase::kForwardBackward:
      return "fwd+bwd";
    case TrainPhase::kGradientHook:
      return "gradient hook";
    case TrainPhase::kAllreduceWait:
      return "allreduce wait";
    case TrainPhase::kFiniteCheck:
      return "finite check";
    case TrainPhase::kOptimizer:
      return "optimizer";
    case TrainPhase::kStopCheck:
      return "stop check";
    case TrainPhase::kLogging:
      return "logging";
    case TrainPhase::kCheckpoint:
      return "checkpoint";
    case TrainPhase::kEval:
      return "eval";
    case TrainPhase::kCount:
      break;
  }
  return "?";
}

double process_cpu_seconds() { return cpu_seconds(RUSAGE_SELF); }
double thread_cpu_seconds() { return cpu_seconds(RUSAGE_THREAD); }

void StepProfile::start_window() {
  seconds_.fill(0.0);
  slowest_step_ = 0;
  steps_ = 0;
  window_start_ = Clock::now();
  process_cpu_start_ = process_cpu_seconds();
  thread_cpu_start_ = thread_cpu_seconds();
}

void StepProfile::count_step(double step_seconds) {
  ++steps_;
  slowest_step_ = std::max(slowest_step_, step_seconds);
}

std::vector<double> StepProfile::window_values() const {
  std::vector<double> values(kNumValues, 0.0);
  std::copy(seconds_.begin(), seconds_.end(), values.begin());
  values[kWall] = std::chrono::duration<double>(Clock::now() - window_start_).count();
  values[kSlowest] = slowest_step_;
  values[kProcessCpu] = process_cpu_seconds() - process_cpu_start_;
  values[kThreadCpu] = thread_cpu_seconds() - thread_cpu_start_;
  values[kSteps] = steps_;
  return values;
}

std::string StepProfile::format(std::span<const double> summed, int ranks, int64_t first_step, int64_t last_step) {
  ELECTRA_CHECK(summed.size() == kNumValues, "StepProfile::format: expected ", kNumValues, " values, got ",
                summed.size());
  ELECTRA_CHECK(ranks > 0, "StepProfile::format: ranks must be positive, got ", ranks);
  // Every rank counts the same steps: the sum over ranks divided by the ranks is the step count.
  const double steps = std::max(1.0, summed[kSteps] / ranks);
  const double per_step_ms = 1e3 / (steps * ranks);  // summed seconds -> mean ms per step and rank
  const double wall_ms = summed[kWall] * per_step_ms;
  std::ostringstream line;
  line << std::fixed << std::setprecision(1) << "profile steps " << first_step << "-" << last_step
       << ", ms per step (mean of " << ranks << " rank(s)):";
  double accounted_ms = 0;
  for (size_t i = 0; i < kNumPhases; ++i) {
    const double ms = summed[i] * per_step_ms;
    accounted_ms += ms;
    if (ms < 0.05) continue;
    line << " " << to_string(static_cast<TrainPhase>(i)) << " " << ms << " (" << 100.0 * ms / wall_ms << "%) |";
  }
  const double other_ms = wall_ms - accounted_ms;
  line << " other " << other_ms << " (" << 100.0 * other_ms / wall_ms << "%) | wall " << wall_ms << ", slowest step "
       << 1e3 * summed[kSlowest] / ranks << " | CPU " << 1e3 * summed[kProcessCpu] / steps
       << " ms per step over all ranks (main threads " << 1e3 * summed[kThreadCpu] / steps << ")";
  return line.str();
}

}  // namespace electra::train
