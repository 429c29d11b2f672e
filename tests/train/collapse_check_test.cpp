// CollapseCheck: the streak of log windows whose discriminator gain stays under the threshold after warm-up.
#include "lib/train/collapse_check.h"

#include <gtest/gtest.h>

#include <limits>

namespace {

using electra::train::CollapseCheck;
using electra::train::CollapseCheckOptions;

CollapseCheckOptions options(int windows = 3, int64_t warmup = 20) {
  return CollapseCheckOptions{.min_gain = 0.01, .windows = windows, .warmup_steps = warmup};
}

TEST(CollapseCheck, FiresOnceAfterTheStreakOfFlatWindowsPastWarmup) {
  CollapseCheck check(options());
  // Windows up to the end of warm-up are not judged, however flat.
  EXPECT_FALSE(check.observe(10, 0.0));
  EXPECT_FALSE(check.observe(20, 0.0));
  EXPECT_FALSE(check.observe(30, 0.0001));
  EXPECT_FALSE(check.observe(40, -0.0003));
  EXPECT_TRUE(check.observe(50, 0.0002));
  EXPECT_EQ(check.streak_start_step(), 30);
  EXPECT_EQ(check.streak_windows(), 3);
  // Once per streak.
  EXPECT_FALSE(check.observe(60, 0.0));
  EXPECT_FALSE(check.observe(70, 0.0));
}

TEST(CollapseCheck, StaysSilentWhileTheDiscriminatorLearns) {
  CollapseCheck check(options());
  // A healthy tiny run: negative while the discriminator is below its prior early on, then well above.
  const double gains[] = {-0.28, -0.13, -0.002, 0.107, 0.119, 0.12, 0.098, 0.085, 0.073, 0.055, 0.051, 0.052};
  int64_t step = 0;
  for (double gain : gains) EXPECT_FALSE(check.observe(step += 10, gain)) << step;
}

TEST(CollapseCheck, AGoodWindowEndsTheStreakAndALaterStreakFiresAgain) {
  CollapseCheck check(options());
  EXPECT_FALSE(check.observe(30, 0.0));
  EXPECT_FALSE(check.observe(40, 0.0));
  EXPECT_FALSE(check.observe(50, 0.02));  // learning: the streak is over
  EXPECT_FALSE(check.observe(60, 0.0));
  EXPECT_FALSE(check.observe(70, 0.0));
  EXPECT_TRUE(check.observe(80, 0.0));
  EXPECT_EQ(check.streak_start_step(), 60);
  EXPECT_FALSE(check.observe(90, 0.5));
  EXPECT_FALSE(check.observe(100, -0.1));
  EXPECT_FALSE(check.observe(110, -0.1));
  EXPECT_TRUE(check.observe(120, -0.1));  // worse than the prior counts as not learning
}

TEST(CollapseCheck, NonFiniteGainsAreNoEvidenceAndZeroWindowsIsOff) {
  CollapseCheck check(options());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_FALSE(check.observe(30, 0.0));
  EXPECT_FALSE(check.observe(40, nan));
  EXPECT_FALSE(check.observe(50, 0.0));
  EXPECT_TRUE(check.observe(60, 0.0));

  CollapseCheck off(options(0));
  for (int64_t step = 30; step < 300; step += 10) EXPECT_FALSE(off.observe(step, 0.0));
}

TEST(CollapseCheck, ThresholdIsStrict) {
  CollapseCheck check(options(1, 0));
  EXPECT_FALSE(check.observe(1, 0.01));  // exactly min_gain is learning
  EXPECT_TRUE(check.observe(2, 0.0099));
}

}  // namespace
