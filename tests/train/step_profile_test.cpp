// StepProfile (train.profile): phase sums, the per-window values and the log line computed from them.
#include "lib/train/step_profile.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lib/core/error.h"

namespace electra::train {
namespace {

constexpr size_t kPhases = static_cast<size_t>(TrainPhase::kCount);

std::string one_decimal(double value) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << value;
  return out.str();
}

TEST(StepProfile, WindowValuesHoldPhaseSumsStepsAndSlowestStep) {
  StepProfile profile;
  profile.add(TrainPhase::kLoader, 0.25);
  profile.add(TrainPhase::kLoader, 0.5);
  profile.add(TrainPhase::kOptimizer, 0.125);
  profile.count_step(0.3);
  profile.count_step(0.7);
  profile.count_step(0.2);
  const std::vector<double> values = profile.window_values();
  ASSERT_EQ(values.size(), StepProfile::kNumValues);
  EXPECT_EQ(values[static_cast<size_t>(TrainPhase::kLoader)], 0.75);
  EXPECT_EQ(values[static_cast<size_t>(TrainPhase::kOptimizer)], 0.125);
  EXPECT_EQ(values[static_cast<size_t>(TrainPhase::kForwardBackward)], 0.0);
  EXPECT_GE(values[kPhases], 0.0);      // wall
  EXPECT_EQ(values[kPhases + 1], 0.7);  // slowest step
  EXPECT_EQ(values[kPhases + 4], 3.0);  // steps
  EXPECT_EQ(profile.steps(), 3);

  profile.start_window();
  const std::vector<double> cleared = profile.window_values();
  for (size_t i = 0; i < kPhases; ++i) EXPECT_EQ(cleared[i], 0.0) << to_string(static_cast<TrainPhase>(i));
  EXPECT_EQ(cleared[kPhases + 4], 0.0);
  EXPECT_EQ(profile.steps(), 0);
}

TEST(StepProfile, ScopedPhaseAddsElapsedTimeAndNothingWithoutAProfile) {
  StepProfile profile;
  {
    ScopedPhase phase(&profile, TrainPhase::kCheckpoint);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  { ScopedPhase off(nullptr, TrainPhase::kCheckpoint); }  // must not crash or touch anything
  const double seconds = profile.window_values()[static_cast<size_t>(TrainPhase::kCheckpoint)];
  EXPECT_GE(seconds, 0.019);
  EXPECT_LT(seconds, 5.0);
}

TEST(StepProfile, CpuClocksAdvanceWithWork) {
  const double process_before = process_cpu_seconds();
  const double thread_before = thread_cpu_seconds();
  volatile double sink = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(50)) sink = sink + std::sqrt(sink + 1);
  EXPECT_GT(thread_cpu_seconds(), thread_before);
  EXPECT_GE(process_cpu_seconds(), process_before + (thread_cpu_seconds() - thread_before) * 0.5);
}

TEST(StepProfile, FormatGivesMeanMillisecondsPerStepOverRanks) {
  // Two ranks, 4 steps each: loader 0.02 + 0.06 s -> 10 ms per step and rank; wall 2 x 1.0 s -> 250 ms.
  std::vector<double> summed(StepProfile::kNumValues, 0.0);
  summed[static_cast<size_t>(TrainPhase::kLoader)] = 0.08;
  summed[static_cast<size_t>(TrainPhase::kForwardBackward)] = 1.6;  // 200 ms
  summed[static_cast<size_t>(TrainPhase::kStopCheck)] = 1e-5;       // 0.00125 ms: left out
  summed[kPhases] = 2.0;
  summed[kPhases + 1] = 0.6;  // slowest steps 0.25 + 0.35 s -> mean 300 ms
  summed[kPhases + 2] = 3.0;  // CPU seconds over both ranks -> 750 ms per step
  summed[kPhases + 3] = 2.4;  // main threads -> 600 ms per step
  summed[kPhases + 4] = 8.0;
  const std::string line = StepProfile::format(summed, 2, 11, 14);
  EXPECT_NE(line.find("profile steps 11-14"), std::string::npos) << line;
  EXPECT_NE(line.find("mean of 2 rank(s)"), std::string::npos) << line;
  EXPECT_NE(line.find("loader " + one_decimal(0.08 / 8 * 1e3) + " (" + one_decimal(100 * 10.0 / 250) + "%)"),
            std::string::npos)
      << line;
  EXPECT_NE(line.find("fwd+bwd " + one_decimal(1.6 / 8 * 1e3)), std::string::npos) << line;
  EXPECT_EQ(line.find("stop check"), std::string::npos) << line;
  EXPECT_NE(line.find("other " + one_decimal(250.0 - 10.0 - 200.0 - 0.00125)), std::string::npos) << line;
  EXPECT_NE(line.find("wall " + one_decimal(250.0)), std::string::npos) << line;
  EXPECT_NE(line.find("slowest step " + one_decimal(300.0)), std::string::npos) << line;
  EXPECT_NE(line.find("CPU " + one_decimal(750.0) + " ms per step over all ranks (main threads " + one_decimal(600.0)),
            std::string::npos)
      << line;
}

TEST(StepProfile, FormatRejectsAWrongValueCountNamingIt) {
  const std::vector<double> too_few(3, 0.0);
  try {
    StepProfile::format(too_few, 1, 1, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("StepProfile::format"), std::string::npos) << e.what();
  }
  const std::vector<double> right(StepProfile::kNumValues, 0.0);
  EXPECT_THROW(StepProfile::format(right, 0, 1, 1), Error);
}

TEST(StepProfile, EveryPhaseHasAName) {
  for (size_t i = 0; i < kPhases; ++i) EXPECT_STRNE(to_string(static_cast<TrainPhase>(i)), "?") << i;
}

}  // namespace
}  // namespace electra::train
