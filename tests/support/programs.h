// Helpers for tests that drive the programs as users do (build/bin/electra-*, under mpirun), shared by
// the end-to-end tests (tests/e2e, tests/eval, tests/train, tests/dist, tests/cuda). Binaries that include
// this define ELECTRA_MPIEXEC (the mpirun path).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
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
      "the",   "model", "learns",    "to",    "detect", "replaced", "tokens", "in",        "text",    "while",
      "a",     "small", "generator", "fills", "masked", "words",    "with",   "plausible", "guesses", "and",
      "every", "rank",  "reads",     "its",   "slice",  "of",       "batch",  "data"};
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

// An empty directory <gtest temp dir>/<name>_<pid>: the process id keeps concurrent ctest processes apart.
inline std::filesystem::path fresh_temp_dir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / (name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// `dir` after removing what an earlier run left there (a run directory the test writes afresh).
inline std::filesystem::path cleared(const std::filesystem::path& dir) {
  std::filesystem::remove_all(dir);
  return dir;
}

// electra-preprocess of ROOT/<text_dir> with ROOT/vocab.txt into ROOT/<shards_dir>, sequences of 32 tokens,
// started by `launcher` ("" or mpirun(n)); the log is ROOT/prepare.log. A failure is fatal: call it inside
// ASSERT_NO_FATAL_FAILURE.
inline void preprocess(const std::filesystem::path& root, const std::string& text_dir, const std::string& shards_dir,
                       const std::string& launcher, const std::string& extra_args = "") {
  const std::filesystem::path log = root / "prepare.log";
  ASSERT_EQ(run(launcher + bin("electra-preprocess") + " --input " + (root / text_dir).string() + " --vocab " +
                    (root / "vocab.txt").string() + " --output " + (root / shards_dir).string() +
                    " --max-seq-length 32 " + extra_args,
                log),
            0)
      << log_of(log);
}

// The training data of the end-to-end tests from the text in ROOT/corpus (see write_generated_corpus): a
// 120-word vocabulary ROOT/vocab.txt (electra-vocab), then the shards ROOT/shards (preprocess above, started
// by `launcher`). A failure is fatal: call it inside ASSERT_NO_FATAL_FAILURE.
inline void prepare_shards(const std::filesystem::path& root, const std::string& launcher) {
  const std::filesystem::path log = root / "prepare.log";
  ASSERT_EQ(run(bin("electra-vocab") + " --input " + (root / "corpus").string() + " --vocab-size 120 --output " +
                    (root / "vocab.txt").string(),
                log),
            0)
      << log_of(log);
  preprocess(root, "corpus", "shards", launcher);
}

// Base of a test suite whose tests train on one set of generated shards, made once for the suite:
//   class MySuite : public TrainingDataSuite<MySuite> {
//     static void SetUpTestSuite() { ASSERT_NO_FATAL_FAILURE(make_training_data("name", 2, 30, 17, mpirun(1))); }
//   };
// root() holds the corpus, vocab.txt, shards/ and the tests' run directories and logs; it is removed after
// the suite. Suite (the derived class) keeps each suite's root apart.
template <typename Suite>
class TrainingDataSuite : public ::testing::Test {
 protected:
  static std::filesystem::path& root() {
    static std::filesystem::path path;
    return path;
  }
  // root() = a fresh temp dir `name`; write_generated_corpus(files, docs_per_file, seed) into root()/corpus;
  // prepare_shards started by `launcher`. Fatal on failure: call it inside ASSERT_NO_FATAL_FAILURE.
  static void make_training_data(const std::string& name, int files, int docs_per_file, uint64_t seed,
                                 const std::string& launcher) {
    root() = fresh_temp_dir(name);
    write_generated_corpus(root() / "corpus", files, docs_per_file, seed);
    prepare_shards(root(), launcher);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(root()); }
  // An emptied root()/name for a run.
  static std::filesystem::path run_dir(const std::string& name) { return cleared(root() / name); }
};

// electra-train on the small model (kSmallModelFlags) reading `shards`, writing `run_dir`, started by
// `launcher` ("" or mpirun(n)); `settings` come last so that a test's own --set overrides an earlier one.
inline std::string small_train_command(const std::string& launcher, const std::filesystem::path& shards,
                                       const std::filesystem::path& run_dir, const std::string& settings) {
  return launcher + bin("electra-train") + kSmallModelFlags + " --data '" + shards.string() + "' --output '" +
         run_dir.string() + "' " + settings;
}

// The step metrics of two runs line up step by step; each of `keys` is equal (rel_tol 0) or within
// rel_tol relative (absolute rel_tol near 0).
inline void expect_same_trajectory(const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b,
                                   double rel_tol, const std::string& what,
                                   const std::vector<std::string>& keys = {
                                       "loss", "gen_loss", "disc_loss", "mlm_accuracy", "disc_accuracy", "grad_norm"}) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]["step"], b[i]["step"]) << what;
    for (const std::string& key : keys) {
      const double x = a[i][key].get<double>(), y = b[i][key].get<double>();
      if (rel_tol == 0) {
        EXPECT_EQ(x, y) << what << ": " << key << " at step " << a[i]["step"];
      } else {
        EXPECT_NEAR(x, y, rel_tol * std::max(1.0, std::abs(x))) << what << ": " << key << " at step " << a[i]["step"];
      }
    }
  }
}

}  // namespace electra::test
