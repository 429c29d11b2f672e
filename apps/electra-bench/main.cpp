// electra-bench: times full ELECTRA pre-training steps on synthetic batches (docs/performance.md).
//   electra-bench --config small --batch 32 --seq 128 --steps 10 --breakdown
//   mpirun -np 2 electra-bench --config small --batch 32      (reports the gradient allreduce per step)
//   mpirun -np 2 electra-bench --device cuda --precision bf16   (one GPU per rank: gradients summed with NCCL)
//   electra-bench --config tiny --lengths-from data/default/shards   (rows as long as that corpus's examples)
#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <limits>

#include "apps/cli_checks.h"
#include "apps/electra-bench/step_bench.h"
#include "lib/core/config.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/dist/communicator.h"
#include "lib/dist/rank_main.h"
#include "lib/train/device.h"
#include "lib/train/train_settings.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  electra::bench::StepBenchOptions o;
  bool json = false, no_overlap = false, no_trim = false;
  std::string device = "cpu", precision = "fp32", storage = "auto";
  CLI::App app{"electra-bench: ELECTRA pre-training step throughput on synthetic batches (CPU or CUDA backend)"};
  app.add_option("--config", o.config, "tiny|small|base|large or a JSON file (run config or model section)")
      ->capture_default_str()
      ->check(electra::cli::checked_path());
  app.add_option("--batch", o.batch, "global batch (split over MPI ranks)")->capture_default_str();
  app.add_option("--seq", o.seq, "sequence length (default: the file's data.seq_length, 128; 512 for base/large)");
  app.add_option("--steps", o.steps, "timed steps")->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  CLI::Option* threads_option =
      app.add_option("--threads", o.threads, "OpenMP threads per rank (default: cores / ranks on the node)")
          ->check(CLI::Range(0, electra::train::kMaxThreadsPerRank));
  CLI::Option* chunks_option =
      app.add_option("--chunks", o.chunks,
                     "batch slices run concurrently, one per thread (ElectraPretrainer::set_parallel_chunks); "
                     "default: the thread count; 1: every op multi-threaded instead");
  app.add_option("--vocab", o.vocab, "vocabulary size (default: the config's, 30522 for the presets)");
  app.add_option("--device", device, "cpu | cuda")->capture_default_str();
  float dropout = 0;
  CLI::Option* dropout_option =
      app.add_option("--dropout", dropout, "hidden and attention dropout, in [0, 1) (default: the config's, 0.1)");
  app.add_option("--seed", o.seed, "seed of parameters, data, dropout and sampling")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));  // not -1 read as 2^64 - 1
  app.add_option("--peak-gemm", o.peak_gemm_size, "n of the n^3 sgemm that measures the peak (at most 16384)")
      ->capture_default_str()
      ->check(CLI::Range(1, electra::bench::kMaxPeakGemmSize));
  app.add_flag("--breakdown", o.breakdown, "time each phase of the step");
  app.add_flag("--recompute-ffn", o.recompute_ffn,
               "recompute each layer's FFN activation in backward instead of keeping it (less memory)");
  CLI::Option* attention_option =
      app.add_option("--attention", o.attention,
                     "auto | materialized | fused (fused keeps [B,H,S] per layer instead of [B,H,S,S]; auto: fused "
                     "except on the CPU)")
          ->check(CLI::IsMember({"auto", "materialized", "fused"}))
          ->capture_default_str();
  CLI::Option* precision_option =
      app.add_option(
             "--precision", precision,
             "GEMM/attention arithmetic: fp32 | tf32 | bf16 | fp16 (the CPU: fp32 | bf16, bf16 being bf16 storage; "
             "the peak GEMM runs in the same mode; fp16 uses dynamic loss scaling)")
          ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}))
          ->capture_default_str();
  CLI::Option* storage_option =
      app.add_option("--storage", storage,
                     "activations and weight copies: fp32 | bf16 | auto (bf16 with --precision bf16; bf16 mixed "
                     "precision keeps fp32 master weights, gradients and statistics)")
          ->check(CLI::IsMember({"auto", "fp32", "bf16"}))
          ->capture_default_str();
  CLI::Option* transport_option =
      app.add_option(
             "--transport", o.transport,
             "gradient allreduce, as electra-train's dist.gradient_transport: auto (nccl on --device cuda when "
             "every rank has its own GPU, else host) | host (MPI on host memory; device gradients are copied) | "
             "nccl | cuda_aware_mpi; with one rank auto runs none, a named transport runs anyway")
          ->check(CLI::IsMember({"auto", "host", "nccl", "cuda_aware_mpi"}))
          ->capture_default_str();
  app.add_option("--lengths-from", o.lengths_from,
                 "shards directory (electra-preprocess output) whose examples' lengths the rows take: a sample drawn "
                 "with --seed, real tokens then padding (input_mask 0); tokens/s counts real tokens, slot tokens/s "
                 "all rows x seq (computed on each rank's longest row unless --no-trim-padding). Default: full rows")
      ->check(electra::cli::checked_path());
  CLI::Option* optimizer_option =
      app.add_option("--optimizer", o.optimizer, "adamw | lamb, as electra-train's optim.name")
          ->check(CLI::IsMember({"adamw", "lamb"}))
          ->capture_default_str();
  app.add_flag("--no-overlap", no_overlap, "allreduce after backward instead of overlapping it with backward");
  CLI::Option* trim_option =
      app.add_flag("--no-trim-padding", no_trim,
                   "compute every slot; by default each rank's batch computes on its longest row (rounded up to 8), as "
                   "electra-train's data.trim_padding (matters only with --lengths-from)");
  app.add_flag("--json", json, "print one JSON line instead of text");
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // bad flags are exit 2, as in every program (CLI11's own codes are 100+)
  }
  if (dropout_option->count() > 0) o.dropout = dropout;
  std::string precision_named = "--precision", storage_named = "--storage";  // where each value came from
  try {  // a run config's settings of the step, for the flags not given: the bench measures the run it describes
    const nlohmann::json run_config = electra::bench::resolve_model(o.config, o.vocab).run_config;
    const auto take = [&](const char* key, CLI::Option* flag) -> const nlohmann::json* {
      const nlohmann::json::json_pointer pointer = electra::dotted_to_pointer(key);
      return flag->count() == 0 && run_config.contains(pointer) ? &run_config.at(pointer) : nullptr;
    };
    const auto name_in = [&](const char* key, const nlohmann::json& value,
                             std::initializer_list<const char*> names) -> std::string {
      for (const char* name : names) {
        if (value.is_string() && value.get<std::string>() == name) return name;
      }
      std::string expected;
      for (const char* name : names) expected += (expected.empty() ? "" : " | ") + std::string(name);
      electra::fail("--config ", o.config, ": config key '", key, "' is ", value.dump(), "; expected ", expected);
    };
    const auto count_of = [&](const char* key, const nlohmann::json& value, int64_t most) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > most) {
        electra::fail("--config ", o.config, ": config key '", key, "' must be an integer in [0, ", most, "], got ",
                      value.dump());
      }
      return value.get<int>();
    };
    if (const auto* v = take("train.precision", precision_option)) {
      precision = name_in("train.precision", *v, {"fp32", "tf32", "bf16", "fp16"});
      precision_named = "config key 'train.precision'";
    }
    if (const auto* v = take("train.storage", storage_option)) {
      storage = name_in("train.storage", *v, {"auto", "fp32", "bf16"});
      storage_named = "config key 'train.storage'";
    }
    if (const auto* v = take("train.attention", attention_option))
      o.attention = name_in("train.attention", *v, {"auto", "materialized", "fused"});
    if (const auto* v = take("optim.name", optimizer_option))
      o.optimizer = name_in("optim.name", *v, {"adamw", "lamb"});
    if (const auto* v = take("dist.gradient_transport", transport_option))
      o.transport = name_in("dist.gradient_transport", *v, {"auto", "host", "nccl", "cuda_aware_mpi"});
    if (const auto* v = take("train.parallel_chunks", chunks_option))
      o.chunks = count_of("train.parallel_chunks", *v, std::numeric_limits<int>::max());
    if (const auto* v = take("train.threads", threads_option))
      o.threads = count_of("train.threads", *v, electra::train::kMaxThreadsPerRank);
    if (const auto* v = take("data.trim_padding", trim_option)) {
      if (!v->is_boolean()) electra::fail("--config ", o.config, ": config key 'data.trim_padding' must be a boolean");
      no_trim = !v->get<bool>();
    }
  } catch (const electra::Error& e) {
    std::cerr << "electra-bench: " << e.what() << "\n";
    return 2;
  }
  o.overlap = !no_overlap;
  o.trim_padding = !no_trim;
  try {  // before MPI starts, as the other flag errors
    o.device = electra::parse_device_kind(device, "--device");
    o.precision = electra::parse_cuda_precision(precision, precision_named);
    o.storage = electra::parse_storage_type(storage, storage_named);
    electra::check_precision(o.precision, o.device, precision_named);
    electra::resolve_storage(o.storage, o.device, o.precision, storage_named);  // a storage contradicting precision
  } catch (const electra::Error& e) {
    std::cerr << "electra-bench: " << e.what() << "\n";
    return 2;
  }
  if (o.device == electra::DeviceKind::kCuda) {
    const std::string why = electra::bench::cuda_unavailable_reason();
    if (!why.empty()) {
      std::cerr << "electra-bench: --device cuda: " << why << "\n";
      return 2;
    }
  }
  try {
    electra::bench::resolve_transport(o.transport, o.device);  // nccl or cuda_aware_mpi on the CPU
  } catch (const electra::Error& e) {
    std::cerr << "electra-bench: " << e.what() << "\n";
    return 2;
  }

  if (!o.lengths_from.empty()) {     // before MPI: a bad directory is a usage error (exit 2), on every rank
    electra::log::LogOptions quiet;  // the loader's "opened" line would go to stdout, before the JSON
    quiet.console_level = boost::log::trivial::warning;
    electra::log::init(quiet);
    try {
      electra::bench::load_row_lengths(o, electra::bench::resolve_seq(o), electra::bench::row_length_sample_size(o));
    } catch (const electra::Error& e) {
      std::cerr << "electra-bench: " << e.what() << "\n";
      return 2;
    }
  }

  electra::dist::Communicator comm = electra::dist::Communicator::init(argc, argv);
  electra::log::LogOptions log_options;
  log_options.rank = comm.rank();
  log_options.world_size = comm.world_size();
  electra::log::init(log_options);
  try {  // the same options on every rank: all ranks refuse together, without an MPI abort
    electra::bench::checked_bench_model(o, comm.world_size());
  } catch (const electra::Error& e) {
    if (comm.is_root()) std::cerr << "electra-bench: " << e.what() << "\n";
    electra::log::shutdown();
    return 2;
  }
  const int code = electra::dist::run_rank_main(comm, [&] {
    const electra::bench::StepBenchResult result = electra::bench::run_step_bench(o, comm);
    if (comm.is_root()) {
      if (json) {
        std::cout << electra::bench::to_json(result).dump() << std::endl;
      } else {
        std::cout << electra::bench::format_text(result) << std::flush;
      }
      if (!std::cout) {  // a full disk: the figures were not written
        std::cerr << "electra-bench: stdout: write failed\n";
        return 1;
      }
    }
    return 0;
  });
  electra::log::shutdown();
  return code;
}
