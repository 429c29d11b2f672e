// electra-train's body: one rank's view of a data-parallel ELECTRA pre-training run.
//
// Every rank holds the whole model. Each step, rank r takes its slice of the global batch from the
// loader, runs generator and discriminator forward/backward (optionally in micro-batches), the
// gradients are summed over ranks (losses are normalised by global counts, so the sum is exactly the
// gradient of the global batch), and every rank applies the same clipped update (AdamW, or LAMB with
// optim.name = lamb). Decisions that one rank could make alone (stop signal, time limit, non-finite
// loss) are agreed at step boundaries, so all ranks stop, skip and checkpoint at the same step. The step
// itself reads top to bottom in TrainStep::run (step.cpp), which electra-bench times as well.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/config.h"
#include "lib/dist/communicator.h"

namespace electra::train {

// Process exit codes of electra-train (documented in the README).
enum ExitCode : int {
  kExitDone = 0,          // trained to train.steps; final checkpoint written
  kExitFailure = 1,       // an unexpected error (the job was aborted on all ranks)
  kExitBadInput = 2,      // bad flags, config, data or checkpoint, reported before training started
  kExitStopped = 3,       // stopped by SIGTERM/SIGUSR1 (also during set-up, before the first step), --max-time
                          // or --stop-after; checkpoint written, `--resume auto` continues exactly
  kExitTooManySkips = 4,  // more than train.max_skipped_steps consecutive non-finite steps
  kExitWatchdog = 5,      // a rank made no progress for train.step_timeout: the watchdog aborted the job; the
                          // last complete checkpoint stands (`--resume auto` continues from it)
};

// The full run configuration schema with its defaults (ELECTRA-small). A config file and --set may only
// change keys that exist here.
nlohmann::json default_run_config();

struct TrainOptions {
  std::string config_path;               // a jobs/configs/*.json preset or any file; empty: defaults only
  std::vector<std::string> sets;         // "key=value" overrides, applied after the file
  std::string data_dir;                  // overrides data.dir when non-empty
  std::string output_dir;                // RUN_DIR
  std::string resume = "auto";           // "auto" (newest complete checkpoint, else fresh), "none", or a path
  DeviceKind device = DeviceKind::kCpu;  // --device
  std::optional<double> max_time_s;      // --max-time: stop (checkpoint, exit 3) before this much wall time has
                                         // passed; must be > 0 when given
  std::optional<int64_t> stop_after;     // --stop-after: stop (checkpoint, exit 3) after this many steps of this
                                         // run; must be > 0 when given
  std::string init_from;                 // Hugging Face DIR (discriminator/ + generator/, as electra-export writes):
                                         // initial weights of a fresh run (ignored when a checkpoint is resumed)
};

// Resolves the configuration: defaults <- file <- --data <- --set. Fails naming the file or key.
Config resolve_config(const TrainOptions& options);

// Runs training on this rank; collective over `comm`. Returns an ExitCode. Errors found before the first
// step are reported (by every rank that sees them, rank 0 at least) and return kExitBadInput on all
// ranks; errors during training throw (the caller aborts the job, see dist::run_rank_main).
int run_training(const dist::Communicator& comm, const TrainOptions& options);

}  // namespace electra::train
