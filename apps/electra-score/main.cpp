// electra-score: one JSON line per input line with the discriminator's replaced-token probabilities
// (and, with --fill-mask, the generator's top-k tokens for each [MASK]).
// Exit codes: 0 done, 1 error while scoring (message on stderr), 2 bad flags or input, found while setting up
// (a model or vocabulary that cannot be read, no GPU for --device cuda), as electra-eval.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "apps/cli_checks.h"
#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/interop/model_source.h"
#include "lib/interop/scorer.h"
#include "lib/train/device.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  std::string model_path, vocab;
  bool no_lower_case = false;
  electra::interop::ScoreOptions options;
  std::string device = "cpu", precision = "fp32", storage = "auto";
  electra::DeviceOptions device_options;
  device_options.arena_size_hint = "--memory-fraction";
  CLI::App app{
      "electra-score: score lines of stdin with an ELECTRA discriminator (and fill [MASK]s with the "
      "generator)"};
  app.add_option("--model", model_path,
                 "export DIR (discriminator/ + generator/, or either half), RUN_DIR, CHECKPOINT.h5, or a Hugging Face "
                 "discriminator DIR alone (no --fill-mask)")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--vocab", vocab, "vocab.txt (default: the model's)")->check(electra::cli::checked_path());
  app.add_flag("--no-lower-case", no_lower_case, "keep case (default: as the model's tokenizer settings say)");
  app.add_flag("--fill-mask", options.fill_mask, "also print the generator's top-k tokens for each [MASK]");
  app.add_option("--top-k", options.top_k, "candidates per [MASK]")
      ->capture_default_str()
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  app.add_option("--device", device, "cpu | cuda (GPU 0, or the local rank's under mpirun)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--precision", precision,
                 "GEMM/attention arithmetic: fp32 | tf32 | bf16 | fp16 (the CPU: fp32 | bf16, bf16 being bf16 storage)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}));
  app.add_option("--storage", storage, "activations and weight copies: fp32 | bf16 | auto (bf16 with --precision bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  app.add_option("--memory-fraction", device_options.memory_fraction,
                 "cuda: device-memory arena as a fraction of the free GPU memory, in (0, 1]")
      ->capture_default_str();
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  electra::log::LogOptions log_options;
  log_options.console_level = boost::log::trivial::warning;  // stdout carries the JSON lines only
  electra::log::init(log_options);
  std::optional<electra::interop::Scorer> scorer;
  try {
    // The names were checked by CLI::IsMember above.
    const electra::DeviceKind device_kind = electra::parse_device_kind(device, "--device");
    device_options.precision = electra::parse_cuda_precision(precision, "--precision");
    // The device first: a missing GPU is reported before the model is read.
    const electra::StorageType resolved = electra::resolve_storage(electra::parse_storage_type(storage, "--storage"),
                                                                   device_kind, device_options.precision, "--storage");
    std::unique_ptr<electra::Backend<float>> backend =
        electra::make_rank_backend(device_kind, electra::local_rank_from_environment(), device_options);
    electra::interop::PretrainerBundle model = electra::interop::load_scoring_bundle(model_path, vocab);
    if (options.fill_mask && !model.has_generator) {
      electra::fail("--fill-mask needs the generator: ", model_path,
                    " is a Hugging Face discriminator alone; give the electra-export directory (discriminator/ and "
                    "generator/), a run directory or a checkpoint");
    }
    if (no_lower_case) {
      model.tokenizer.lower_case = false;
      model.tokenizer.strip_accents.reset();  // cased: accents kept, as BERT does
    }
    scorer.emplace(std::move(model), std::move(backend),
                   [&](const electra::PretrainerConfig& config, electra::Backend<float>& be) {
                     return electra::make_rank_model(config, be, resolved);
                   });
  } catch (const std::exception& e) {
    std::cerr << "electra-score: " << e.what() << "\n";
    return 2;
  }
  // A directory as stdin reads as an empty input (the stream takes EISDIR for the end): refused instead.
  if (struct stat st{}; fstat(STDIN_FILENO, &st) == 0 && S_ISDIR(st.st_mode)) {
    std::cerr << "electra-score: stdin is a directory; give the text lines on stdin\n";
    return 2;
  }
  try {
    std::string line;
    uint64_t line_number = 0, truncated_lines = 0, invalid_utf8_lines = 0;
    constexpr uint64_t kMaxWarnings = 20;
    while (std::getline(std::cin, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const auto scored = scorer->score(line, options);
      if (scored.dropped_pieces > 0 && ++truncated_lines <= kMaxWarnings) {
        std::cerr << "electra-score: warning: line " << line_number << ": " << scored.dropped_pieces
                  << " word pieces past the model's " << scored.ids.size() - 2
                  << " were not scored (\"dropped_pieces\" in its output)\n";
      }
      // BERT replaces invalid UTF-8 by U+FFFD and drops it: the line is scored without those bytes.
      if (scored.invalid_utf8 > 0 && ++invalid_utf8_lines <= kMaxWarnings) {
        std::cerr << "electra-score: warning: line " << line_number << ": " << scored.invalid_utf8
                  << " invalid UTF-8 sequence(s) replaced and dropped\n";
      }
      std::cout << electra::interop::to_json(scored, options.fill_mask)
                       .dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                << "\n";
    }
    if (truncated_lines > kMaxWarnings) {
      std::cerr << "electra-score: warning: " << truncated_lines << " lines were truncated; only the first "
                << kMaxWarnings << " were named\n";
    }
    if (invalid_utf8_lines > kMaxWarnings) {
      std::cerr << "electra-score: warning: " << invalid_utf8_lines << " lines had invalid UTF-8; only the first "
                << kMaxWarnings << " were named\n";
    }
    std::cout.flush();
    if (!std::cout) electra::fail("stdout: write failed");  // a full disk shows only here
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "electra-score: " << e.what() << "\n";
    return 1;
  }
}
