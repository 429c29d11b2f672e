// electra-eval: held-out pre-training metrics of a checkpoint (google-research/electra's metric_fn)
// under mpirun or alone: ranks split every global batch; counts are reduced exactly.
// Exit codes: 0 done, 1 unexpected error (the job was aborted on all ranks), 2 bad flags or input.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "apps/cli_checks.h"
#include "data_pipeline/loader/masking.h"
#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "lib/core/fnv1a.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/dist/communicator.h"
#include "lib/dist/rank_main.h"
#include "lib/eval/evaluate.h"
#include "lib/interop/model_source.h"
#include "lib/model/pretrainer.h"
#include "lib/train/device.h"

namespace {

namespace fs = std::filesystem;

struct Flags {
  std::string checkpoint, data_dir, vocab;
  int64_t max_batches = 0;
  int batch_size = 128;
  bool batch_given = false;  // --batch-size on the command line (else the default, which may be rounded up)
  int seq_length = 0;
  float mask_prob = 0.15f;
  uint64_t seed = electra::eval::kEvalSeed;
  int auc_bins = 10000;
  int64_t exact_auc_max_tokens = int64_t{1} << 24;
  int threads = 0;
  bool json = false;
  bool trim_padding = true;  // data.trim_padding
  bool unigram_auc = true;   // EvalOptions::unigram_auc
  electra::DeviceKind device = electra::DeviceKind::kCpu;
  std::optional<electra::StorageType> storage;  // nullopt: auto
  electra::DeviceOptions device_options;
};

// What every rank holds once the inputs are known to be good.
struct Setup {
  std::string source;
  std::unique_ptr<electra::Backend<float>> backend;
  std::unique_ptr<electra::PretrainerModel<float>> model;
  std::unique_ptr<electra::data::Loader> loader;
  nlohmann::json identity;  // what this rank evaluates, compared across ranks (compare_with_rank0)
};

void setup(const Flags& flags, const electra::dist::Communicator& comm, Setup& s) {
  if (const int ranks = comm.world_size(); flags.batch_size % ranks != 0) {
    const int64_t multiple = (int64_t{flags.batch_size} + ranks - 1) / ranks * ranks;
    electra::fail("--batch-size ", flags.batch_size, " is not a multiple of the ", ranks,
                  " ranks, which split each global batch evenly (", multiple, " is",
                  flags.batch_given ? ")"
                                    : "; with --max-batches the default 128 is not rounded up, since the batch "
                                      "decides which examples are read: give --batch-size)");
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(flags.threads > 0 ? flags.threads : std::max(1, cores / std::max(1, comm.local_size())));
  // The device first: a missing GPU is reported before anything is read.
  const electra::StorageType storage =
      electra::resolve_storage(flags.storage, flags.device, flags.device_options.precision, "--storage");
  s.backend = electra::make_rank_backend(flags.device, comm, flags.device_options);

  // The vocabulary the data was made with (its copy in the shards directory) unless --vocab is given;
  // the model's loader checks it against the checkpoint's model.vocab_size and training manifest.
  std::string vocab = flags.vocab;
  if (vocab.empty() && fs::exists(fs::path(flags.data_dir) / "vocab.txt")) {
    vocab = (fs::path(flags.data_dir) / "vocab.txt").string();
  }
  electra::interop::PretrainerBundle bundle = electra::interop::load_pretrainer_bundle(flags.checkpoint, vocab);
  s.source = bundle.source;
  s.loader = electra::eval::make_eval_loader(flags.data_dir, flags.batch_size, flags.seq_length, flags.mask_prob,
                                             bundle.config.num_token_predictions, flags.seed, comm, flags.vocab);
  if (s.loader->vocab().hash() != bundle.vocab.hash()) {
    electra::fail("the data's vocabulary ", s.loader->vocab().origin(), " is not the model's (", bundle.vocab.origin(),
                  "): token ids would mean different words");
  }
  // Rows longer than the model's positions would fail mid-evaluation (exit 1); refused here, as training does.
  const int positions =
      std::min(bundle.config.discriminator.max_position_embeddings, bundle.config.generator.max_position_embeddings);
  if (s.loader->dataset().seq_length() > positions) {
    electra::fail("the held-out shards ", flags.data_dir, " have rows of ", s.loader->dataset().seq_length(),
                  " tokens, more than the model's max_position_embeddings (", positions, ", ", bundle.source, ")");
  }
  // Masking as in training: at most the model's num_token_predictions per row (google-research/electra's
  // max_predictions_per_seq), so a larger --mask-prob masks fewer than it says on long rows. A full row has
  // seq - 2 maskable tokens ([CLS] and a [SEP] never are).
  if (const int seq = s.loader->dataset().seq_length();
      comm.is_root() && electra::data::masked_count(seq - 2, flags.mask_prob, bundle.config.num_token_predictions) <
                            electra::data::masked_count(seq - 2, flags.mask_prob, seq)) {
    ELECTRA_LOG(warning) << "--mask-prob " << flags.mask_prob << " of " << seq << " tokens is more than the model's "
                         << bundle.config.num_token_predictions
                         << " predictions per row (model.num_token_predictions): longer rows get "
                         << bundle.config.num_token_predictions << " masked positions";
  }
  // The held-out text must be tokenized as the training text was: cased shards scored by an uncased model
  // (or the reverse) give wrong metrics with nothing to show it. A model that does not record its casing
  // (checkpoints of older versions whose training data has moved) is taken to match, and the log says so.
  if (const std::optional<bool> data_lower = s.loader->dataset().lower_case()) {
    if (!bundle.tokenizer_recorded) {
      if (comm.is_root())
        ELECTRA_LOG(warning) << bundle.source << " does not record its tokenizer's lower_case: assuming the "
                             << flags.data_dir << " shards' (" << (*data_lower ? "true" : "false") << ")";
    } else if (*data_lower != bundle.tokenizer.lower_case) {
      electra::fail("the held-out shards ", flags.data_dir, " were tokenized with lower_case ",
                    *data_lower ? "true" : "false", " (their manifest.json), but the model was trained on lower_case ",
                    bundle.tokenizer.lower_case ? "true" : "false", " text (", bundle.source, ")");
    }
  }
  s.model = electra::make_rank_model(bundle.config, *s.backend, storage);
  s.model->parameters_from_host(bundle.params);
  // Paths may differ per node (node-local copies); what they hold may not.
  s.identity = {
      {"model", electra::to_json(bundle.config)},
      {"parameters_hash", electra::Fnv1a().add(bundle.params.data(), bundle.params.size() * sizeof(float)).hex()},
      {"data", s.loader->dataset().identity()},
      {"flags",
       {{"batch_size", flags.batch_size},
        {"max_batches", flags.max_batches},
        {"mask_prob", flags.mask_prob},
        {"seed", flags.seed},
        {"trim_padding", flags.trim_padding},
        {"unigram_auc", flags.unigram_auc},
        {"auc_bins", flags.auc_bins},
        {"exact_auc_max_tokens", flags.exact_auc_max_tokens}}}};
}

std::string fixed(double value, int precision) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(precision) << value;
  return out.str();
}

void print_table(const electra::eval::EvalMetrics& m, const Flags& flags, const Setup& s, int ranks) {
  std::cout << "electra-eval: " << s.source << "\n"
            << "data: " << flags.data_dir << ": " << m.sums.batches << " batches x " << s.loader->global_batch_size()
            << " examples, " << m.sums.masked << " masked positions, " << m.sums.tokens << " tokens; " << ranks
            << " rank(s), seed " << flags.seed << ", " << fixed(m.seconds, 1) << " s ("
            << fixed(m.seconds > 0 ? static_cast<double>(m.sums.tokens) / m.seconds : 0.0, 0) << " real tokens/s)\n\n";
  std::cout << std::left << std::setw(30) << "metric"
            << "value\n";
  for (const auto& [name, value] : m.scalars()) {
    std::cout << std::left << std::setw(30) << name << fixed(value, 6);
    if (name == "disc_auc" && m.auc_method == "exact") std::cout << "  (exact)";
    if (name == "disc_gain") {
      std::cout << "  (nats per token over the prior's " << fixed(electra::eval::binary_entropy(m.replaced_fraction), 4)
                << (value < 0.005 ? "; under 0.005: it learned next to nothing beyond the base rate)" : ")");
    }
    if (name == "disc_auc_unigram") std::cout << "  (against unigram replacements: does not move with the generator)";
    if (name == "disc_auc_within_token")
      std::cout << "  (among tokens of one id: 0.5 = it reads nothing from the context)";
    if (name == "disc_auc" && m.auc_method != "exact") {
      char bound[80];
      std::snprintf(bound, sizeof(bound), "  (histogram of %d bins: within %.1e of exact)", m.auc_bins,
                    m.disc_auc_error_bound);
      std::cout << bound;
    }
    std::cout << "\n";
  }
  std::cout.flush();
}

}  // namespace

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  Flags flags;
  std::string device = "cpu", precision = "fp32", storage = "auto";  // parsed into flags after the flags
  CLI::App app{
      "electra-eval: held-out masked-LM and replaced-token-detection metrics of an ELECTRA checkpoint "
      "(run under mpirun to split the batches over ranks)"};
  app.add_option("--checkpoint", flags.checkpoint, "RUN_DIR (newest complete checkpoint), CHECKPOINT.h5 or export DIR")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--data", flags.data_dir, "held-out shards directory (manifest.json) or NVIDIA BERT HDF5 directory")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--max-batches", flags.max_batches, "global batches to evaluate (0: all, one pass)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  CLI::Option* batch_option =
      app.add_option("--batch-size", flags.batch_size,
                     "global batch, a multiple of the number of ranks (the default is rounded up to one)")
          ->capture_default_str()
          ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  // A signed range: CLI11 would read -1 into the uint64_t as 2^64 - 1.
  app.add_option("--seed", flags.seed, "keys masking and the generator's sampling")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  app.add_option("--seq-length", flags.seq_length, "the shards' sequence length (0: from manifest.json)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--mask-prob", flags.mask_prob, "masked fraction of tokens")->capture_default_str();
  app.add_option("--vocab", flags.vocab, "vocab.txt (default: the data's copy, else the model's)")
      ->check(electra::cli::checked_path());
  app.add_option("--auc-bins", flags.auc_bins, "histogram bins of disc_auc")
      ->capture_default_str()
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  app.add_option("--exact-auc-max-tokens", flags.exact_auc_max_tokens,
                 "exact disc_auc (scores gathered to rank 0) up to this many tokens, histograms beyond (0: always)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  app.add_option("--threads", flags.threads, "CPU threads per rank (0: cores / ranks on the node)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_flag("--json", flags.json, "print one JSON object instead of the table");
  app.add_option("--unigram-auc", flags.unigram_auc,
                 "also disc_auc_unigram: the AUC against replacements drawn from the data's unigram distribution, "
                 "which does not fall as the generator learns (a second pass: twice the time)")
      ->capture_default_str();
  app.add_option("--trim-padding", flags.trim_padding,
                 "compute each batch on its longest row (rounded up to 8), as electra-train's data.trim_padding: the "
                 "same metrics to float rounding")
      ->capture_default_str();
  app.add_option("--device", device, "cpu | cuda (GPU local rank % visible GPUs)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--precision", precision,
                 "GEMM/attention arithmetic: fp32 | tf32 | bf16 | fp16 (the CPU: fp32 | bf16, bf16 being bf16 storage)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}));
  app.add_option("--storage", storage, "activations and weight copies: fp32 | bf16 | auto (bf16 with --precision bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  app.add_option("--memory-fraction", flags.device_options.memory_fraction,
                 "cuda: device-memory arena as a fraction of the free GPU memory, in (0, 1]")
      ->capture_default_str();
  app.add_option("--arena-bytes", flags.device_options.arena_bytes,
                 "cuda: device-memory arena size (0: use the fraction)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));  // not -1 read as 2^64 - 1
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  // The names were checked by CLI::IsMember above.
  flags.device = electra::parse_device_kind(device, "--device");
  flags.device_options.precision = electra::parse_cuda_precision(precision, "--precision");
  flags.storage = electra::parse_storage_type(storage, "--storage");

  electra::dist::Communicator comm = electra::dist::Communicator::init(argc, argv);
  // The ranks split each global batch evenly: reading every example, the default is rounded up for any rank
  // count (the numbers do not depend on the batch size). With --max-batches the batch decides which examples
  // are read, so it stays 128 on every rank count; setup() refuses one the ranks do not divide.
  const int ranks = comm.world_size();
  flags.batch_given = batch_option->count() > 0;
  if (!flags.batch_given && flags.max_batches == 0) flags.batch_size = (flags.batch_size + ranks - 1) / ranks * ranks;
  electra::log::LogOptions log_options;
  log_options.rank = comm.rank();
  log_options.world_size = comm.world_size();
  log_options.console_level = boost::log::trivial::warning;  // stdout carries the table / JSON only
  electra::log::init(log_options);
  // Rank 0 picks a run directory's newest checkpoint for every rank: a run still training saves and prunes
  // checkpoints between the ranks' own looks, and they would evaluate different ones. It sends the file's
  // name; a rank given a run directory (its own copy: node-local paths may differ) takes that file of it, any
  // other rank keeps its argument. Every rank takes part in the broadcast; "" leaves each to its own look.
  std::string chosen;
  const auto is_run_dir = [](const std::string& path) { return fs::is_directory(fs::path(path) / "checkpoints"); };
  if (comm.is_root() && is_run_dir(flags.checkpoint)) {
    try {
      chosen = electra::interop::resolve_checkpoint(flags.checkpoint).filename().string();
    } catch (const std::exception&) {
      chosen.clear();  // each rank reports it in setup()
    }
  }
  comm.broadcast(chosen);
  if (!chosen.empty() && is_run_dir(flags.checkpoint))
    flags.checkpoint = (fs::path(flags.checkpoint) / "checkpoints" / chosen).string();

  // Bad input is reported before any collective of the evaluation, and every rank exits with 2.
  Setup s;
  std::optional<std::string> error;
  try {
    setup(flags, comm, s);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!comm.agree_all(!error.has_value())) {
    if (error) std::cerr << "electra-eval: " << *error << "\n";
    electra::log::shutdown();
    return 2;
  }
  if (const auto agreement = electra::dist::compare_with_rank0(comm, s.identity); !agreement.agree) {
    if (comm.is_root()) {
      std::cerr << "electra-eval: the ranks would not evaluate the same model on the same data (node-local copies "
                   "must be equal). Differences from rank 0:\n"
                << agreement.differences << "\n";
    }
    electra::log::shutdown();
    return 2;
  }

  electra::eval::EvalOptions options;
  options.max_batches = flags.max_batches;
  options.seed = flags.seed;
  options.auc_bins = flags.auc_bins;
  options.exact_auc_max_tokens = flags.exact_auc_max_tokens;
  options.trim_padding = flags.trim_padding;
  options.unigram_auc = flags.unigram_auc;
  const int code = electra::dist::run_rank_main(comm, [&] {
    const electra::eval::EvalMetrics metrics = electra::eval::evaluate(*s.model, *s.loader, comm, options);
    if (comm.is_root()) {
      if (flags.json) {
        nlohmann::ordered_json j = metrics.to_json();
        j["model"] = s.source;
        j["data"] = flags.data_dir;
        j["batch_size"] = s.loader->global_batch_size();
        j["seed"] = flags.seed;
        j["ranks"] = comm.world_size();
        std::cout << j.dump() << std::endl;
      } else {
        print_table(metrics, flags, s, comm.world_size());
      }
      if (!std::cout.flush()) {  // a full disk: the numbers were not written
        std::cerr << "electra-eval: stdout: write failed\n";
        return 1;
      }
    }
    return 0;
  });
  s.loader.reset();
  s.model.reset();
  s.backend.reset();
  electra::log::shutdown();
  return code;
}
