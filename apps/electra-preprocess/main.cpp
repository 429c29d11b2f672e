// electra-preprocess: text files -> HDF5 shards + manifest.json (see data_pipeline/preprocess/preprocess.h).
// Runs plain (one rank) or under mpirun/srun; every rank writes its own shards, rank 0 the manifest.
// Exit codes: 0 written, 1 error while processing (message on stderr), 2 bad flags, inputs or output
// directory (a non-empty one without --force), refused before anything was written.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>

#include "apps/cli_checks.h"
#include "data_pipeline/preprocess/preprocess.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/dist/launch_env.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  CLI::App app{
      "Packs BERT-layout text (one sentence per line, blank line between documents) into "
      "ELECTRA pre-training shards."};
  electra::data::PreprocessOptions options;
  bool no_lower_case = false;
  app.add_option("--input", options.inputs, "text files or directories (recursed)")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--vocab", options.vocab_path, "vocab.txt")->required()->check(electra::cli::checked_path());
  app.add_option("--output", options.output_dir,
                 "output directory (shards, manifest.json, vocab.txt); must be empty or missing unless --force")
      ->check(electra::cli::checked_path())
      ->required();
  app.add_flag("--force", options.force,
               "replace what electra-preprocess wrote in a non-empty --output (manifest.json, the shards it lists, "
               "vocab.txt); other files are left alone");
  app.add_option("--max-seq-length", options.max_seq_length, "tokens per example, [CLS]/[SEP] included")
      ->capture_default_str();
  app.add_flag("--no-lower-case", no_lower_case, "keep case and accents (cased vocabulary)");
  app.add_option("--blanks-separate-docs", options.blanks_separate_docs,
                 "true: a blank line ends a document (BERT layout); false: a document is a file, blank lines "
                 "are skipped (text whose blank lines separate paragraphs: reStructuredText, Markdown)")
      ->capture_default_str();
  app.add_option("--pack", options.pack,
                 "true: pack several short examples into each row (example_ids in the shards, format 2; "
                 "attention and positions stay within an example); false: one example per row")
      ->capture_default_str();
  // Unsigned options take a range check: CLI11 would read -1 as 2^64 - 1.
  app.add_option("--seed", options.seed, "seed of the example builder's randomness, 0 to 2^64 - 1")
      ->check(CLI::Validator(
          [](std::string& text) {
            // Digits only, within uint64: CLI11 read 2^64 and 1e23 as 2^64 - 1, so other seeds gave equal shards.
            uint64_t value = 0;
            const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
            return !text.empty() && error == std::errc() && end == text.data() + text.size()
                       ? std::string()
                       : std::string("must be an integer from 0 to 18446744073709551615, got ") + text;
          },
          "UINT64", "uint64"))
      ->capture_default_str();
  app.add_option("--rows-per-shard", options.rows_per_shard, "examples per shard file")
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  app.add_option("--chunk-rows", options.chunk_rows, "rows per HDF5 chunk")->capture_default_str();
  app.add_option("--deflate-level", options.deflate_level, "zlib level 0..9")->capture_default_str();
  app.add_option("--progress-interval", options.progress_interval_s, "seconds between progress lines (0: none)")
      ->check(
          [](const std::string& text) {
            // CLI11's ranges let NaN through (every comparison with it is false).
            double seconds = std::nan("");
            try {
              seconds = std::stod(text);
            } catch (const std::exception&) {
            }
            return std::isfinite(seconds) && seconds >= 0 ? std::string() : "must be a number of seconds >= 0";
          },
          "SECONDS >= 0")
      ->capture_default_str();
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  options.lower_case = !no_lower_case;
  for (int i = 0; i < argc; ++i) options.command_line += (i ? " " : "") + std::string(argv[i]);

  MPI_Init(&argc, &argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  electra::log::LogOptions log_options;
  log_options.rank = rank;
  log_options.world_size = world;
  electra::log::init(log_options);

  int status = 0;
  try {
    // Under Slurm without PMIx every task would be a world of 1 writing the same shards over each other.
    electra::dist::check_slurm_world_size(world, electra::dist::read_launch_env());
    // Collective: every rank either returns the manifest or throws the same error.
    electra::data::run_preprocess(options, MPI_COMM_WORLD);
  } catch (const electra::data::BadInputError& e) {
    if (rank == 0) std::cerr << "electra-preprocess: error: " << e.what() << "\n";
    status = 2;
  } catch (const std::exception& e) {
    if (rank == 0) std::cerr << "electra-preprocess: error: " << e.what() << "\n";
    status = 1;
  }
  electra::log::shutdown();
  MPI_Finalize();
  return status;
}
