// electra-train: data-parallel ELECTRA pre-training under mpirun or srun (see README: exit codes).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "apps/cli_checks.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/dist/communicator.h"
#include "lib/dist/rank_main.h"
#include "lib/dist/signals.h"
#include "lib/train/trainer.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  // First of all: a stop signal (SIGUSR1/SIGTERM/Ctrl-C) that arrives while the ranks set up must not kill them
  // (the default action); the trainer sees it at its first step boundary and stops with a checkpoint.
  electra::dist::install_stop_signals();
  electra::train::TrainOptions options;
  bool list_keys = false;
  double max_time_s = 0;
  int64_t stop_after = 0;
  std::string device = "cpu";
  CLI::App app{"electra-train: pre-train an ELECTRA generator + discriminator on HDF5 shards (MPI data parallel)"};
  app.add_option("--config", options.config_path, "run config JSON (e.g. jobs/configs/small.json)")
      ->check(electra::cli::checked_path());
  app.add_option("--data", options.data_dir, "shards directory (manifest.json) or NVIDIA BERT HDF5 directory")
      ->check(electra::cli::checked_path());
  app.add_option("--output", options.output_dir, "run directory: checkpoints, logs, metrics.jsonl, tensorboard/")
      ->check(electra::cli::checked_path());
  app.add_option("--set", options.sets, "override a config key: --set train.steps=1000 (repeatable)");
  app.add_option("--resume", options.resume, "auto (newest complete checkpoint, else fresh) | none | PATH")
      ->capture_default_str()
      ->check(electra::cli::checked_path());
  app.add_option("--device", device, "cpu | cuda")->capture_default_str();
  CLI::Option* max_time_option = app.add_option(
      "--max-time", max_time_s, "seconds of wall time (> 0) after which the run checkpoints and exits with code 3");
  CLI::Option* stop_after_option = app.add_option(
      "--stop-after", stop_after, "steps of this run (> 0) after which it checkpoints and exits with code 3");
  app.add_option("--init-from", options.init_from,
                 "start a fresh run from Hugging Face weights: DIR with discriminator/ and generator/ "
                 "(electra-export's layout); the model config must match")
      ->check(electra::cli::checked_path());
  app.add_flag("--print-config", list_keys, "print the resolved config and exit");
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : electra::train::kExitBadInput;
  }
  // Given or not matters: a value <= 0 is an error (checked in set-up), not "no limit".
  if (*max_time_option) options.max_time_s = max_time_s;
  if (*stop_after_option) options.stop_after = stop_after;
  if (list_keys) {
    try {
      std::cout << electra::train::resolve_config(options).dump(2) << "\n";
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "electra-train: " << e.what() << "\n";
      return electra::train::kExitBadInput;
    }
  }
  try {  // a flag error: reported before MPI starts, exit 2 on every rank
    options.device = electra::parse_device_kind(device, "--device");
  } catch (const std::exception& e) {
    std::cerr << "electra-train: " << e.what() << "\n";
    return electra::train::kExitBadInput;
  }

  electra::dist::Communicator comm = electra::dist::Communicator::init(argc, argv);
  electra::log::LogOptions log_options;
  log_options.rank = comm.rank();
  log_options.world_size = comm.world_size();
  if (!options.output_dir.empty()) {
    // Created once the set-up has succeeded (run_training): a run refused with exit 2 writes nothing.
    log_options.defer_file = true;
    log_options.file =
        (std::filesystem::path(options.output_dir) / "logs" / ("rank_" + std::to_string(comm.rank()) + ".log"))
            .string();
  }
  electra::log::init(log_options);
  ELECTRA_LOG(info) << "rank " << comm.rank() << " of " << comm.world_size() << " (local " << comm.local_rank()
                    << ") on " << electra::host_name() << ", pid " << getpid();
  const int code = electra::dist::run_rank_main(comm, [&] { return electra::train::run_training(comm, options); });
  electra::log::shutdown();
  return code;
}
