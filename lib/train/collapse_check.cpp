#include "lib/train/collapse_check.h"

#include <cmath>

#include "lib/core/error.h"

namespace electra::train {

CollapseCheck::CollapseCheck(const CollapseCheckOptions& options) : options_(options) {
  ELECTRA_CHECK(options.windows >= 0, "CollapseCheck: windows must be >= 0");
}

bool CollapseCheck::observe(int64_t step, double gain) {
  if (options_.windows == 0 || step <= options_.warmup_steps) return false;
  // A non-finite gain (a skipped window has none) is not evidence either way.
  if (!std::isfinite(gain)) return false;
  if (gain >= options_.min_gain) {
    streak_ = 0;
    reported_ = false;
    return false;
  }
  if (streak_++ == 0) streak_start_ = step;
  if (streak_ >= options_.windows && !reported_) {
    reported_ = true;
    return true;
  }
  return false;
}

}  // namespace electra::train
