// electra-vocab: trains a WordPiece vocabulary (BPE-style merges, as Hugging Face's WordPieceTrainer;
// see data_pipeline/tokenizer/vocab_trainer.h) from raw text files or directories, streaming line by line.
#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>

#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/vocab_trainer.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

int main(int argc, char** argv) {
  CLI::App app{"Trains a BERT WordPiece vocabulary from raw text."};
  std::vector<std::string> inputs;
  std::string output;
  electra::text::VocabTrainerOptions options;
  bool no_lower_case = false;
  app.add_option("--input", inputs, "text files or directories (recursed)")->required();
  app.add_option("--vocab-size", options.vocab_size, "number of tokens, special tokens included")->required();
  app.add_option("--output", output, "vocab.txt to write (atomically)")->required();
  app.add_flag("--no-lower-case", no_lower_case, "keep case and accents (cased vocabulary)");
  app.add_option("--min-frequency", options.min_frequency, "never merge pairs seen fewer times")->capture_default_str();
  app.add_option("--limit-alphabet", options.limit_alphabet, "keep only the A most frequent characters (0: all)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  electra::log::init({});
  try {
    options.tokenizer.lower_case = !no_lower_case;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<std::string> files = electra::text::list_text_files(inputs);
    electra::text::WordCounter counter(options.tokenizer);
    for (const std::string& file : files) counter.add_file(file);
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
    vocab.save(output);
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ELECTRA_LOG(info) << "wrote " << output << ": " << vocab.size() << " tokens (alphabet " << report.alphabet << ", "
                      << report.merges << " merges, " << report.dropped_chars << " rare characters left out), hash "
                      << std::hex << vocab.hash() << std::dec << ", " << total_s << " s";
  } catch (const electra::Error& e) {
    std::cerr << "electra-vocab: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
