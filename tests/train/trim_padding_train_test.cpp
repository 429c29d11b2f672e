// data.trim_padding in electra-train and electra-eval under mpirun, on shards of short documents (rows
// mostly padding): a run that trims each micro-batch to its longest row follows the untrimmed run's losses
// within float rounding (2 ranks, whole slices and micro-batches of 2), computes fewer slots and reports its
// MFU on them (mfu_slots keeps the padded figure); stopped and resumed it is bitwise the straight run, and
// both count the same real tokens (tokens_seen);
// electra-eval reports the same metrics with --trim-padding true and false. The same documents packed
// (electra-preprocess --pack true) fill most slots, and a run on them resumes bitwise too.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lib/core/philox.h"
#include "lib/train/checkpoint.h"
#include "tests/support/checkpoints.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

// Documents of one or two short sentences, a blank line after each (the BERT layout): each example is one
// document, 5 to 19 tokens of 32 slots (so a micro-batch trims to 8, 16 or 24).
void write_short_documents(const fs::path& dir, int files, int docs, uint64_t seed) {
  static const std::vector<std::string> words = {"the",    "model", "learns", "to",  "detect", "replaced",  "tokens",
                                                 "in",     "text",  "while",  "a",   "small",  "generator", "fills",
                                                 "masked", "words", "with",   "and", "every",  "rank",      "reads"};
  fs::create_directories(dir);
  electra::PhiloxSequence random(seed, electra::RandomPurpose::kTest, 0, 0);
  for (int file = 0; file < files; ++file) {
    std::ofstream out(dir / ("short" + std::to_string(file) + ".txt"));
    for (int doc = 0; doc < docs; ++doc) {
      const int sentences = 1 + static_cast<int>(random.next_below(2));
      for (int s = 0; s < sentences; ++s) {
        const int length = 2 + static_cast<int>(random.next_below(6));
        for (int w = 0; w < length; ++w) {
          out << (w ? " " : "") << words[random.next_below(static_cast<uint32_t>(words.size()))];
        }
        out << ".\n";
      }
      out << "\n";
    }
  }
}

class TrainTrimPadding : public electra::test::TrainingDataSuite<TrainTrimPadding> {
 protected:
  static void SetUpTestSuite() {
    root() = electra::test::fresh_temp_dir("electra_train_trim");
    write_short_documents(root() / "corpus", 3, 120, 23);
    ASSERT_NO_FATAL_FAILURE(electra::test::prepare_shards(root(), mpirun(1)));
    ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(root(), "corpus", "packed_shards", mpirun(1), "--pack true"));
  }
  static std::string train_command(const fs::path& run_dir, const std::string& extra,
                                   const std::string& shards = "shards") {
    return electra::test::small_train_command(mpirun(2), root() / shards, run_dir,
                                              "--set train.steps=8 --set train.checkpoint_every=4 " + extra);
  }
};

TEST_F(TrainTrimPadding, TrimmedRunsFollowTheUntrimmedLosses) {
  for (const std::string micro : {"0", "2"}) {
    const std::string what = "micro_batch_size " + micro;
    const fs::path full = run_dir("full" + micro), trimmed = run_dir("trimmed" + micro);
    const fs::path full_log = root() / ("full" + micro + ".log"), trimmed_log = root() / ("trimmed" + micro + ".log");
    const std::string micro_setting = "--set train.micro_batch_size=" + micro + " ";
    ASSERT_EQ(run(train_command(full, micro_setting + "--set data.trim_padding=false"), full_log), 0)
        << log_of(full_log);
    ASSERT_EQ(run(train_command(trimmed, micro_setting + "--set data.trim_padding=true"), trimmed_log), 0)
        << log_of(trimmed_log);
    const std::vector<nlohmann::json> a = read_metrics(full), b = read_metrics(trimmed);
    ASSERT_EQ(a.size(), 8u) << log_of(full_log);
    // The same global batches, dropout bits and samples: only the float rounding of shorter sums differs.
    expect_same_trajectory(a, b, 1e-4, what + ": untrimmed vs trimmed");
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["computed_slot_fraction"].get<double>(), 1.0) << what << " step " << i + 1;
      EXPECT_EQ(a[i]["mfu"].get<double>(), a[i]["mfu_slots"].get<double>()) << what << " step " << i + 1;
      const double computed = b[i]["computed_slot_fraction"].get<double>();
      EXPECT_LT(computed, 0.9) << what << " step " << i + 1;  // short documents: most slots are padding
      EXPECT_GE(computed, b[i]["real_token_fraction"].get<double>()) << what << " step " << i + 1;
      EXPECT_LT(b[i]["mfu"].get<double>(), b[i]["mfu_slots"].get<double>()) << what << " step " << i + 1;
    }
    EXPECT_NE(read_text(trimmed / "logs" / "rank_0.log").find("% computed) | MFU"), std::string::npos)
        << log_of(trimmed_log);
  }
}

TEST_F(TrainTrimPadding, ResumeIsBitwiseExactWithTrimming) {
  const fs::path straight = run_dir("straight"), resumed = run_dir("resumed");
  const fs::path log = root() / "straight.log", log1 = root() / "resumed1.log", log2 = root() / "resumed2.log";
  const std::string settings = "--set data.trim_padding=true --set train.micro_batch_size=3";
  ASSERT_EQ(run(train_command(straight, settings), log), 0) << log_of(log);
  ASSERT_EQ(run(train_command(resumed, settings + " --stop-after 3"), log1), 3) << log_of(log1);
  ASSERT_EQ(run(train_command(resumed, settings + " --resume auto"), log2), 0) << log_of(log2);
  expect_same_trajectory(read_metrics(straight), read_metrics(resumed), 0.0, "straight vs stopped+resumed");
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000008.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));

  // tokens_seen counts real tokens, not slots: the per-step real fractions times the slots of a step, and
  // the resumed run carries the count over.
  const auto tokens_seen = [&](const fs::path& run) {
    return electra::train::CheckpointFile::open(run / final_name).state().at("tokens_seen").get<int64_t>();
  };
  const nlohmann::json config = nlohmann::json::parse(read_text(straight / "config.json"));
  const double slots_per_step =
      config["train"]["batch_size"].get<double>() * config["data"]["seq_length"].get<double>();
  double real_tokens = 0;
  for (const nlohmann::json& step : read_metrics(straight)) {
    real_tokens += step["real_token_fraction"].get<double>() * slots_per_step;
  }
  EXPECT_EQ(tokens_seen(straight), tokens_seen(resumed));
  EXPECT_NEAR(static_cast<double>(tokens_seen(straight)), real_tokens, 1e-6 * real_tokens);
  EXPECT_LT(static_cast<double>(tokens_seen(straight)), 0.9 * 8 * slots_per_step);  // short documents
}

// Packed rows under mpirun, with micro-batches: most slots hold real tokens (against under half unpacked), and
// a stopped run resumes bitwise.
TEST_F(TrainTrimPadding, PackedShardsFillTheRowsAndResumeBitwise) {
  const fs::path straight = run_dir("packed_straight"), resumed = run_dir("packed_resumed");
  const fs::path log = root() / "packed.log", log1 = root() / "packed1.log", log2 = root() / "packed2.log";
  const std::string settings = "--set data.trim_padding=true --set train.micro_batch_size=3";
  ASSERT_EQ(run(train_command(straight, settings, "packed_shards"), log), 0) << log_of(log);
  ASSERT_EQ(run(train_command(resumed, settings + " --stop-after 3", "packed_shards"), log1), 3) << log_of(log1);
  ASSERT_EQ(run(train_command(resumed, settings + " --resume auto", "packed_shards"), log2), 0) << log_of(log2);
  const std::vector<nlohmann::json> packed = read_metrics(straight);
  expect_same_trajectory(packed, read_metrics(resumed), 0.0, "packed: straight vs stopped+resumed");
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000008.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));
  ASSERT_EQ(packed.size(), 8u);
  for (const nlohmann::json& step : packed) EXPECT_GT(step["real_token_fraction"].get<double>(), 0.75);

  // The unpacked shards' rows are mostly padding.
  const fs::path unpacked = run_dir("unpacked_for_fill");
  ASSERT_EQ(run(train_command(unpacked, settings), root() / "unpacked.log"), 0) << log_of(root() / "unpacked.log");
  for (const nlohmann::json& step : read_metrics(unpacked)) EXPECT_LT(step["real_token_fraction"].get<double>(), 0.5);
}

TEST_F(TrainTrimPadding, EvalMetricsDoNotDependOnTrimming) {
  const fs::path trained = run_dir("for_eval");
  const fs::path log = root() / "for_eval.log";
  ASSERT_EQ(run(train_command(trained, "--set train.steps=4"), log), 0) << log_of(log);
  std::vector<nlohmann::json> results;
  for (const char* trim : {"true", "false"}) {
    const fs::path eval_log = root() / (std::string("eval_") + trim + ".log");
    const std::string command = mpirun(2) + bin("electra-eval") + " --checkpoint " + trained.string() + " --data " +
                                (root() / "shards").string() +
                                " --batch-size 12 --max-batches 6 --json --trim-padding " + trim;
    ASSERT_EQ(run(command, eval_log), 0) << command << log_of(eval_log);
    const std::string text = read_text(eval_log);
    const size_t start = text.rfind("{\"masked_lm_accuracy\"");
    ASSERT_NE(start, std::string::npos) << log_of(eval_log);
    results.push_back(nlohmann::json::parse(text.substr(start, text.find('\n', start) - start)));
  }
  for (const char* count : {"batches", "examples", "masked_positions", "tokens", "replaced_tokens"}) {
    EXPECT_EQ(results[0][count], results[1][count]) << count;
  }
  for (const char* key : {"masked_lm_accuracy", "masked_lm_loss", "sampled_masked_lm_accuracy", "disc_loss", "disc_auc",
                          "disc_accuracy"}) {
    const double x = results[0][key].get<double>(), y = results[1][key].get<double>();
    EXPECT_NEAR(x, y, 1e-5 * std::max(1.0, std::abs(y))) << key;
  }
  EXPECT_NE(run(bin("electra-eval") + " --checkpoint " + trained.string() + " --data " + (root() / "shards").string() +
                    " --trim-padding maybe",
                root() / "eval_bad.log"),
            0);
}

TEST_F(TrainTrimPadding, TheKeyIsABoolean) {
  const fs::path dir = run_dir("bad_key");
  const fs::path log = root() / "bad_key.log";
  EXPECT_EQ(run(train_command(dir, "--set data.trim_padding=sometimes"), log), 2) << log_of(log);
}

}  // namespace
