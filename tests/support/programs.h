// Helpers for tests that drive the programs as users do (build/bin/electra-*, under mpirun), shared by
// tests/e2e and tests/eval. Binaries that include this define ELECTRA_MPIEXEC (the mpirun path).
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lib/core/philox.h"

namespace electra::test {

// build/bin/<program> of this build (ELECTRA_BUILD_DIR, set by tests/support/test_main.cpp).
inline std::string bin(const std::string& program) {
  const char* build = std::getenv("ELECTRA_BUILD_DIR");
  return (std::filesystem::path(build ? build : "build") / "bin" / program).string();
}

// "mpirun -np N ... " with one thread per rank.
inline std::string mpirun(int np) {
  return std::string(ELECTRA_MPIEXEC) + " -np " + std::to_string(np) +
         " --oversubscribe --allow-run-as-root -x OMP_NUM_THREADS=1 ";
}

// Runs a shell command with stdout and stderr to `log`; returns the exit code (or 128 + signal).
inline int run(const std::string& command, const std::filesystem::path& log) {
  const std::string full = command + " > '" + log.string() + "' 2>&1";
  const int status = std::system(full.c_str());
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A log's contents for a failure message.
inline std::string log_of(const std::filesystem::path& log) {
  return "\n--- " + log.string() + " ---\n" + read_text(log);
}

// RUN_DIR/metrics.jsonl, one object per line.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

// electra-train flags for a very small model (seconds per run): the tiny preset shrunk, 12-example
// global batches of 32 tokens, 5 predictions, one metrics line per step.
inline constexpr const char* kSmallModelFlags =
    " --config jobs/configs/tiny.json --set model.embedding_size=16 --set model.hidden_size=32"
    " --set model.num_layers=2 --set model.num_heads=2 --set model.intermediate_size=64"
    " --set model.generator.hidden_size=16 --set model.generator.num_layers=2 --set model.generator.num_heads=1"
    " --set model.generator.intermediate_size=32 --set model.num_token_predictions=5 --set data.seq_length=32"
    " --set train.batch_size=12 --set train.log_every=1 --set optim.warmup_steps=2 --set train.peak_gflops=50"
    " --set data.prefetch_batches=2 ";

// Writes `files` text files of pseudo-sentences over a small word list into `dir`, in the BERT layout
// (one sentence per line, a blank line between documents); deterministic for a given seed.
inline void write_generated_corpus(const std::filesystem::path& dir, int files, int docs_per_file, uint64_t seed) {
  static const std::vector<std::string> words = {
      "the",    "model", "learns", "to",        "detect",  "replaced", "tokens", "in",    "text",  "while",
      "a",      "small", "generator", "fills",  "masked",  "words",    "with",   "plausible", "guesses", "and",
      "every",  "rank",  "reads",  "its",       "slice",   "of",       "batch",  "data"};
  std::filesystem::create_directories(dir);
  PhiloxSequence random(seed, RandomPurpose::kTest, 0, 0);
  for (int file = 0; file < files; ++file) {
    std::ofstream out(dir / ("part" + std::to_string(file) + ".txt"));
    for (int doc = 0; doc < docs_per_file; ++doc) {
      for (int sentence = 0; sentence < 6; ++sentence) {
        const int length = 4 + static_cast<int>(random.next_below(10));
        for (int w = 0; w < length; ++w) {
          out << (w ? " " : "") << words[random.next_below(static_cast<uint32_t>(words.size()))];
        }
        out << ".\n";
      }
      out << "\n";
    }
  }
}

}  // namespace electra::test
