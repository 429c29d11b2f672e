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
    streak_ = Streak{};
    return false;
  }
  if (streak_.windows++ == 0) streak_.start_step = step;
  if (streak_.windows >= options_.windows && !streak_.reported) {
    streak_.reported = true;
    return true;
  }
  return false;
}

}  // namespace electra::train
