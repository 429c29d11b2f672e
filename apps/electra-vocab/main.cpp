// electra-vocab: trains a WordPiece vocabulary (BPE-style merges, as Hugging Face's WordPieceTrainer;
// see data_pipeline/tokenizer/vocab_trainer.h) from raw text files or directories, streaming line by line.
// Exit codes: 0 written, 1 error while reading or writing (message on stderr), 2 bad flags, a missing
// input, an input without words, or an existing --output without --force (nothing written).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <limits>

#include "apps/cli_checks.h"
#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/vocab_trainer.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  CLI::App app{"Trains a BERT WordPiece vocabulary from raw text."};
  std::vector<std::string> inputs;
  std::string output;
  electra::text::VocabTrainerOptions options;
  bool no_lower_case = false;
  bool force = false;
  app.add_option("--input", inputs, "text files or directories (recursed)")
      ->required()
      ->check(electra::cli::checked_path());
  // Ranges checked as signed numbers: CLI11 would read -5 into a size_t as 2^64 - 5. Token ids are int32.
  app.add_option("--vocab-size", options.vocab_size, "number of tokens, special tokens included")
      ->required()
      ->check(CLI::Range(int64_t{6}, int64_t{std::numeric_limits<int32_t>::max()}));
  app.add_option("--output", output, "vocab.txt to write (atomically); must not exist unless --force")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_flag("--force", force, "replace an existing --output");
  app.add_flag("--no-lower-case", no_lower_case, "keep case and accents (cased vocabulary)");
  app.add_option("--min-frequency", options.min_frequency, "never merge pairs seen fewer times")
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  app.add_option("--limit-alphabet", options.limit_alphabet, "keep only the A most frequent characters (0: all)")
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  electra::log::init({});
  std::string inputs_named;  // for messages: the --input paths as given
  for (const std::string& input : inputs) inputs_named += (inputs_named.empty() ? "" : ", ") + input;
  // Bad input: refused before anything is read or written.
  std::vector<std::string> files;
  try {
    std::error_code ec;
    if (output.empty()) electra::fail("--output is empty: name the vocab.txt to write");
    if (std::filesystem::is_directory(output, ec)) electra::fail(output, ": --output is a directory");
    if (std::filesystem::exists(output, ec) && !force) {
      electra::fail(output, ": --output already exists; pass --force to replace it");
    }
    files = electra::text::list_text_files(inputs);
  } catch (const electra::Error& e) {
    std::cerr << "electra-vocab: error: " << e.what() << "\n";
    return 2;
  }

  try {
    options.tokenizer.lower_case = !no_lower_case;
    const auto t0 = std::chrono::steady_clock::now();
    electra::text::WordCounter counter(options.tokenizer);
    for (const std::string& file : files) counter.add_file(file);
    if (counter.total_words() == 0) {
      std::cerr << "electra-vocab: error: --input " << inputs_named << ": no words in " << files.size() << " files ("
                << counter.bytes() << " bytes); a vocabulary needs text to train on\n";
      return 2;
    }
    const double count_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ELECTRA_LOG(info) << "counted " << files.size() << " files, " << counter.bytes() / 1e6 << " MB, "
                      << counter.total_words() << " words (" << counter.table().size() << " distinct) in " << count_s
                      << " s (" << (count_s > 0 ? counter.bytes() / 1e6 / count_s : 0.0) << " MB/s)";
    if (counter.skipped_long_words() > 0) {
      ELECTRA_LOG(info) << counter.skipped_long_words() << " words longer than "
                        << options.tokenizer.max_input_chars_per_word << " characters were not counted";
    }

    electra::text::VocabTrainerReport report;
    const electra::text::Vocab vocab = electra::text::train_wordpiece_vocab(counter, options, &report, output);
    if (report.alphabet == 0) {  // every word would be [UNK]
      std::cerr << "electra-vocab: error: --vocab-size " << options.vocab_size
                << " leaves no room beyond the special tokens for the input's characters (the most frequent "
                   "needs itself and its ## form); nothing was written\n";
      return 2;
    }
    vocab.save(output);
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ELECTRA_LOG(info) << "wrote " << output << ": " << vocab.size() << " tokens (alphabet " << report.alphabet << ", "
                      << report.merges << " merges, " << report.dropped_chars
                      << " rare characters left out), vocab_hash " << vocab.hash()  // decimal, as manifests print it
                      << ", " << total_s << " s";
  } catch (const std::exception& e) {
    std::cerr << "electra-vocab: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
