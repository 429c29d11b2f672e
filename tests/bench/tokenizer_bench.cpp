// Tokenization throughput on one core. Loads the corpus into memory (lines split at '\n'), then times
// BertTokenizer::encode_append over all lines (best of --repeat runs), the basic tokenizer alone, and word
// counting + vocab training. MB/s counts the input bytes including each line's '\n'.
//
//   tokenizer_bench --vocab vocab.txt [--input FILE_OR_DIR...] [--no-lower-case] [--repeat 5]
//                   [--max-mb 0] [--dump-ids ids.txt] [--json]
#include <sched.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/vocab_trainer.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Timing {
  double wall = 1e30;  // best of the runs
  double cpu = 1e30;   // best process CPU time (what other processes on a busy machine do not inflate as much)
};

template <typename F>
Timing best_of(int repeat, F&& f) {
  Timing best;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    f();
    best.cpu = std::min(best.cpu, cpu_seconds() - c0);
    best.wall = std::min(best.wall, seconds_since(t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Single-core BertTokenizer throughput."};
  std::string vocab_path, dump_ids;
  std::vector<std::string> inputs = {"/usr/share/doc/python3.11/html/_sources"};
  bool no_lower_case = false, json = false, no_pin = false;
  int repeat = 5;
  double max_mb = 0;
  app.add_option("--vocab", vocab_path, "vocab.txt")->required();
  app.add_option("--input", inputs, "text files or directories")->capture_default_str();
  app.add_flag("--no-lower-case", no_lower_case, "cased tokenization");
  app.add_option("--repeat", repeat, "timed runs (best is reported)")->capture_default_str();
  app.add_option("--max-mb", max_mb, "use only the first MB of the corpus (0: all)");
  app.add_option("--dump-ids", dump_ids, "write the ids, one line per input line");
  app.add_flag("--json", json, "print one JSON object");
  app.add_flag("--no-pin", no_pin, "do not pin the process to one CPU");
  CLI11_PARSE(app, argc, argv);
  electra::log::LogOptions log_options;
  log_options.console_level = boost::log::trivial::error;
  electra::log::init(log_options);

  try {
    if (!no_pin) {
      // One core, as the comparison promises; the CPU we are on now.
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(sched_getcpu(), &set);
      sched_setaffinity(0, sizeof(set), &set);
    }
    std::vector<std::string> lines;
    uint64_t bytes = 0;
    for (const std::string& file : electra::text::list_text_files(inputs)) {
      electra::text::LineReader reader(file);
      std::string_view line;
      while (reader.next(line) && (max_mb <= 0 || bytes < max_mb * 1e6)) {
        lines.emplace_back(line);
        bytes += line.size() + 1;
      }
    }
    const electra::text::Vocab vocab = electra::text::Vocab::load(vocab_path);
    electra::text::TokenizerOptions options;
    options.lower_case = !no_lower_case;
    const electra::text::BertTokenizer tokenizer(vocab, options);

    std::vector<int32_t> ids;
    ids.reserve(bytes / 2);
    uint64_t tokens = 0;
    const Timing encode = best_of(repeat, [&] {
      ids.clear();
      for (const std::string& line : lines) tokenizer.encode_append(line, ids);
      tokens = ids.size();
    });

    uint64_t words = 0;
    const Timing basic = best_of(repeat, [&] {
      words = 0;
      for (const std::string& line : lines) {
        tokenizer.basic().for_each_word(line, [&](std::string_view, uint32_t) { ++words; });
      }
    });

    const auto t_count = std::chrono::steady_clock::now();
    electra::text::WordCounter counter(options);
    for (const std::string& line : lines) counter.add_text(line);
    const double count_s = seconds_since(t_count);
    electra::text::VocabTrainerOptions trainer;
    trainer.tokenizer = options;
    trainer.vocab_size = vocab.size();
    const auto t_train = std::chrono::steady_clock::now();
    const electra::text::Vocab trained = electra::text::train_wordpiece_vocab(counter, trainer);
    const double train_s = seconds_since(t_train);

    if (!dump_ids.empty()) {
      std::ofstream out(dump_ids);
      std::vector<int32_t> line_ids;
      for (const std::string& line : lines) {
        line_ids.clear();
        tokenizer.encode_append(line, line_ids);
        for (size_t i = 0; i < line_ids.size(); ++i) out << (i ? " " : "") << line_ids[i];
        out << '\n';
      }
    }

    const double mb = bytes / 1e6;
    if (json) {
      std::printf(
          "{\"bytes\": %llu, \"lines\": %zu, \"tokens\": %llu, \"words\": %llu, \"encode_wall_s\": %.6f, "
          "\"encode_cpu_s\": %.6f, \"basic_cpu_s\": %.6f, \"count_s\": %.4f, \"train_s\": %.4f, "
          "\"trained_vocab\": %zu}\n",
          static_cast<unsigned long long>(bytes), lines.size(), static_cast<unsigned long long>(tokens),
          static_cast<unsigned long long>(words), encode.wall, encode.cpu, basic.cpu, count_s, train_s, trained.size());
    } else {
      std::printf("corpus: %.2f MB, %zu lines, %llu tokens, %llu words, vocab %zu (%s)\n", mb, lines.size(),
                  static_cast<unsigned long long>(tokens), static_cast<unsigned long long>(words), vocab.size(),
                  options.lower_case ? "lowercase" : "cased");
      std::printf("encode (BertTokenizer):   %8.2f MB/s CPU  %8.2f MB/s wall  %6.2f Mtokens/s CPU  (best of %d)\n",
                  mb / encode.cpu, mb / encode.wall, tokens / encode.cpu / 1e6, repeat);
      std::printf("basic tokenizer only:     %8.2f MB/s CPU\n", mb / basic.cpu);
      std::printf("word counting (trainer):  %8.2f MB/s\n", mb / count_s);
      std::printf("vocab training (%zu):   %8.3f s after counting\n", trained.size(), train_s);
    }
  } catch (const electra::Error& e) {
    std::cerr << "tokenizer_bench: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
