// electra-eval, electra-train's held-out evaluation and jobs/plot_metrics.py as users run them: a tiny
// model trained for a few seconds on a generated corpus, evaluated on held-out shards under mpirun.
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

#include "lib/core/h5.h"
#include "lib/eval/eval_metrics.h"
#include "lib/train/checkpoint.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

fs::path g_root;  // corpus, vocab, shards, runs

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

std::string train_command(int np, const fs::path& run_dir, const std::string& extra = "") {
  return electra::test::small_train_command(mpirun(np), g_root / "shards", run_dir,
                                            "--set train.steps=40 --set train.checkpoint_every=20 "
                                            "--set train.seed=5 " +
                                                extra);
}

// electra-eval --json on the held-out shards; the parsed object (the last line of stdout).
nlohmann::json evaluate(int np, const std::string& checkpoint, const std::string& extra = "") {
  const fs::path log = g_root / ("eval_np" + std::to_string(np) + ".log");
  const std::string command = mpirun(np) + bin("electra-eval") + " --checkpoint " + checkpoint + " --data " +
                              (g_root / "heldout").string() + " --batch-size 12 --json " + extra;
  const int code = run(command, log);
  EXPECT_EQ(code, 0) << command << log_of(log);
  const std::string text = read_text(log);
  const size_t start = text.rfind("{\"masked_lm_accuracy\"");
  if (code != 0 || start == std::string::npos) {
    ADD_FAILURE() << "no JSON from " << command << log_of(log);
    return nlohmann::json::object();
  }
  return nlohmann::json::parse(text.substr(start, text.find('\n', start) - start));
}

const std::vector<std::string> kMetrics = {"masked_lm_accuracy", "masked_lm_loss", "sampled_masked_lm_accuracy",
                                           "disc_loss",          "disc_auc",       "disc_accuracy",
                                           "disc_precision",     "disc_recall"};
const std::vector<std::string> kCounts = {"batches", "examples", "masked_positions", "tokens", "replaced_tokens"};

// Counts equal; metrics within `rel_tol` relative (ratios of equal counts are then equal exactly too).
void expect_same_metrics(const nlohmann::json& a, const nlohmann::json& b, double rel_tol, const std::string& what,
                         const std::string& prefix_b = "") {
  for (const std::string& key : kMetrics) {
    ASSERT_TRUE(a.contains(key) && b.contains(prefix_b + key)) << what << ": " << key;
    const double x = a[key].get<double>(), y = b[prefix_b + key].get<double>();
    if (rel_tol == 0) {
      EXPECT_EQ(x, y) << what << ": " << key;
    } else {
      EXPECT_NEAR(x, y, rel_tol * std::max(1e-12, std::abs(x))) << what << ": " << key;
    }
  }
}

class EvalE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_root = electra::test::fresh_temp_dir("electra_eval_e2e");
    // Pseudo-sentences over a small vocabulary: 4 training files and 1 held-out file (other documents).
    electra::test::write_generated_corpus(g_root / "corpus", 4, 40, 7);
    electra::test::write_generated_corpus(g_root / "heldout_text", 1, 40, 8);
    ASSERT_NO_FATAL_FAILURE(electra::test::prepare_shards(g_root, mpirun(2)));
    ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(g_root, "heldout_text", "heldout", mpirun(2)));
    // One run with held-out evaluation every 20 steps, one without (otherwise the same).
    const fs::path train_log = g_root / "train.log";
    ASSERT_EQ(
        run(train_command(2, g_root / "trained",
                          "--set train.eval_every=20 --set train.eval_batches=0 --set train.eval_unigram_auc=true "
                          "--set data.eval_dir=" +
                              (g_root / "heldout").string()),
            train_log),
        0)
        << log_of(train_log);
    ASSERT_EQ(run(train_command(2, g_root / "plain"), train_log), 0) << log_of(train_log);
  }
  static void TearDownTestSuite() { fs::remove_all(g_root); }

  static std::string checkpoint(int step) {
    char name[32];
    std::snprintf(name, sizeof(name), "ckpt-%08d.h5", step);
    return (g_root / "trained" / "checkpoints" / name).string();
  }
};

TEST_F(EvalE2E, TrainedModelGivesFiniteMetricsAndBeatsChance) {
  const nlohmann::json m = evaluate(1, (g_root / "trained").string());
  ASSERT_FALSE(m.empty());
  for (const std::string& key : kMetrics) {
    ASSERT_TRUE(m[key].is_number()) << key << ": " << m.dump();
    EXPECT_TRUE(std::isfinite(m[key].get<double>())) << key;
  }
  for (const char* key : {"masked_lm_accuracy", "sampled_masked_lm_accuracy", "disc_accuracy", "disc_precision",
                          "disc_recall", "disc_auc"}) {
    EXPECT_GE(m[key].get<double>(), 0.0) << key;
    EXPECT_LE(m[key].get<double>(), 1.0) << key;
  }
  // No AUC threshold here: the generated corpus draws its words independently and uniformly, so a replaced
  // word is as likely as the one it replaced and no discriminator can beat chance on it (AUC ~0.5, gain ~0;
  // "> 0.5" would pass on float noise). That a model learns is tested on real text: tests/jobs/default_test.sh
  // (held-out AUC and gain of the bundled default) and the collapse warning's test there.
  ASSERT_TRUE(m["disc_gain"].is_number()) << m.dump();
  const double prior_entropy = electra::eval::binary_entropy(m["replaced_fraction"].get<double>());
  EXPECT_NEAR(m["disc_gain"].get<double>(), prior_entropy - m["disc_loss"].get<double>(), 1e-12);
  EXPECT_GT(m["masked_lm_loss"].get<double>(), 0.0);
  EXPECT_GT(m["disc_loss"].get<double>(), 0.0);
  EXPECT_EQ(m["disc_auc_method"], "exact");
  EXPECT_EQ(m["disc_auc_error_bound"].get<double>(), 0.0);
  ASSERT_TRUE(m["disc_auc_within_token"].is_number()) << m.dump();
  EXPECT_GE(m["disc_auc_within_token"].get<double>(), 0.0);
  EXPECT_LE(m["disc_auc_within_token"].get<double>(), 1.0);
  // One pass over every held-out example in global batches of 12, the last one completed by empty rows that
  // count nowhere; ~15% of tokens masked.
  const int64_t examples = m["examples"].get<int64_t>();
  const int64_t rows = nlohmann::json::parse(read_text(g_root / "heldout" / "manifest.json"))["total_rows"];
  EXPECT_EQ(examples, rows);
  EXPECT_EQ(m["batches"].get<int64_t>(), (rows + 11) / 12);
  // A batch size that leaves a partial last batch: its rows are read too, the empty ones count nowhere.
  int batch = 10;
  while (rows % batch == 0) ++batch;
  const fs::path partial_log = g_root / "partial.log";
  ASSERT_EQ(run(bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " + (g_root / "heldout").string() +
                    " --json --batch-size " + std::to_string(batch),
                partial_log),
            0)
      << log_of(partial_log);
  const std::string partial_text = read_text(partial_log);
  const size_t json_start = partial_text.rfind("{\"masked_lm_accuracy\"");
  ASSERT_NE(json_start, std::string::npos) << log_of(partial_log);
  const nlohmann::json partial =
      nlohmann::json::parse(partial_text.substr(json_start, partial_text.find('\n', json_start) - json_start));
  EXPECT_EQ(partial["examples"].get<int64_t>(), rows) << "batch " << batch;
  EXPECT_EQ(partial["batches"].get<int64_t>(), (rows + batch - 1) / batch) << "batch " << batch;
  EXPECT_EQ(partial["tokens"], m["tokens"]) << "the same tokens, whatever the batch";
  // The same masks and generator samples too (keyed by each example's position, not by batch and row): the
  // same counts, and the same metrics to float rounding (trimming and summation follow the batches).
  for (const char* key : {"masked_positions", "replaced_tokens"}) EXPECT_EQ(partial[key], m[key]) << key;
  for (const std::string& key : kMetrics) {
    EXPECT_NEAR(partial[key].get<double>(), m[key].get<double>(), 1e-5) << key << " at batch " << batch;
  }
  EXPECT_NEAR(partial["disc_auc_unigram"].get<double>(), m["disc_auc_unigram"].get<double>(), 1e-5);
  EXPECT_GT(m["batches"].get<int64_t>(), 3);
  const double tokens = m["tokens"].get<double>();
  EXPECT_GT(tokens, examples * 5.0);
  EXPECT_LE(tokens, examples * 32.0);
  EXPECT_NEAR(m["masked_positions"].get<double>() / tokens, 0.15, 0.05);
  EXPECT_GT(m["replaced_tokens"].get<int64_t>(), 0);
  EXPECT_LE(m["replaced_tokens"].get<int64_t>(), m["masked_positions"].get<int64_t>());
  EXPECT_NE(m["model"].get<std::string>().find("ckpt-00000040.h5"), std::string::npos) << "newest checkpoint";

  // The table names every metric.
  const fs::path log = g_root / "table.log";
  ASSERT_EQ(run(bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " + (g_root / "heldout").string() +
                    " --batch-size 12 --max-batches 2",
                log),
            0)
      << log_of(log);
  const std::string table = read_text(log);
  for (const std::string& key : kMetrics) EXPECT_NE(table.find(key), std::string::npos) << key << log_of(log);
  EXPECT_NE(table.find("2 batches x 12 examples"), std::string::npos) << log_of(log);
}

TEST_F(EvalE2E, OneTwoAndThreeRanksGiveTheSameNumbers) {
  const nlohmann::json one = evaluate(1, checkpoint(40));
  for (int np : {2, 3}) {
    const nlohmann::json many = evaluate(np, checkpoint(40));
    ASSERT_FALSE(many.empty());
    EXPECT_EQ(many["ranks"], np);
    for (const std::string& key : kCounts) EXPECT_EQ(one[key], many[key]) << key << " with " << np << " ranks";
    // Counts and the exact AUC are reduced exactly; the loss sums within summation order.
    expect_same_metrics(one, many, 1e-6, "1 vs " + std::to_string(np) + " ranks");
    EXPECT_EQ(one["disc_auc"], many["disc_auc"]);
    EXPECT_EQ(one["disc_accuracy"], many["disc_accuracy"]);
    EXPECT_EQ(one["masked_lm_accuracy"], many["masked_lm_accuracy"]);
    EXPECT_EQ(one["disc_auc_unigram"], many["disc_auc_unigram"]);  // draws keyed by global row, exact AUC
    EXPECT_EQ(one["disc_auc_within_token"], many["disc_auc_within_token"]);
  }
  // The histogram AUC: the same on 1 and 2 ranks, and within its stated bound of the exact one.
  const nlohmann::json h1 = evaluate(1, checkpoint(40), "--exact-auc-max-tokens 0");
  const nlohmann::json h2 = evaluate(2, checkpoint(40), "--exact-auc-max-tokens 0");
  EXPECT_EQ(h1["disc_auc_method"], "histogram");
  EXPECT_FALSE(h1.contains("disc_auc_within_token")) << "computed with the exact AUC only";
  EXPECT_EQ(h1["disc_auc"], h2["disc_auc"]);
  EXPECT_EQ(h1["disc_auc_error_bound"], h2["disc_auc_error_bound"]);
  EXPECT_LE(std::abs(h1["disc_auc"].get<double>() - one["disc_auc"].get<double>()),
            h1["disc_auc_error_bound"].get<double>() + 1e-15);
  // Coarse bins: a visible error, still within the bound.
  const nlohmann::json coarse = evaluate(2, checkpoint(40), "--exact-auc-max-tokens 0 --auc-bins 3");
  EXPECT_GT(coarse["disc_auc_error_bound"].get<double>(), 1e-3);
  EXPECT_LE(std::abs(coarse["disc_auc"].get<double>() - one["disc_auc"].get<double>()),
            coarse["disc_auc_error_bound"].get<double>() + 1e-15);
}

// disc_auc_unigram scores the discriminator alone: step 40's checkpoint with step 20's generator keeps step
// 40's disc_auc_unigram bitwise, while what depends on the generator changes. --unigram-auc false leaves it out.
TEST_F(EvalE2E, UnigramAucDependsOnTheDiscriminatorOnly) {
  const electra::train::CheckpointFile late = electra::train::CheckpointFile::open(checkpoint(40));
  const electra::train::CheckpointFile early = electra::train::CheckpointFile::open(checkpoint(20));
  std::vector<electra::TensorSlice> layout;
  size_t total = 0;
  for (const electra::train::StoredTensor& tensor : late.tensors(electra::train::Section::kParams)) {
    size_t size = 1;
    for (int64_t d : tensor.shape) size *= static_cast<size_t>(d);
    layout.push_back({tensor.name, tensor.shape, total, size});
    total += size;
  }
  std::vector<float> params(total), early_params(total);
  late.read_into(electra::train::Section::kParams, layout, params);
  early.read_into(electra::train::Section::kParams, layout, early_params);
  int swapped = 0;
  for (const electra::TensorSlice& slice : layout) {
    if (slice.name.rfind("generator", 0) != 0) continue;  // generator.*, generator_predictions.*, generator_lm_head.*
    std::copy_n(early_params.begin() + static_cast<std::ptrdiff_t>(slice.offset), slice.size,
                params.begin() + static_cast<std::ptrdiff_t>(slice.offset));
    ++swapped;
  }
  ASSERT_GT(swapped, 0);
  electra::train::CheckpointContent content;
  content.layout = layout;
  content.params = params;
  content.state = late.state();
  content.loader = late.loader();
  content.config = late.config();
  const fs::path mixed = g_root / "mixed" / "ckpt-00000040.h5";
  fs::create_directories(mixed.parent_path());
  electra::train::write_checkpoint(mixed, content);

  const nlohmann::json a = evaluate(2, checkpoint(40)), b = evaluate(2, mixed.string());
  ASSERT_TRUE(a["disc_auc_unigram"].is_number()) << a.dump();
  EXPECT_GE(a["disc_auc_unigram"].get<double>(), 0.0);
  EXPECT_LE(a["disc_auc_unigram"].get<double>(), 1.0);
  EXPECT_EQ(a["disc_auc_unigram"], b["disc_auc_unigram"]);
  EXPECT_NE(a["masked_lm_loss"], b["masked_lm_loss"]) << "the generators differ";
  EXPECT_FALSE(evaluate(1, checkpoint(40), "--unigram-auc false").contains("disc_auc_unigram"));
}

TEST_F(EvalE2E, SeedKeysMaskingAndSamplingReproducibly) {
  const nlohmann::json a = evaluate(2, checkpoint(40), "--seed 5");
  const nlohmann::json b = evaluate(2, checkpoint(40), "--seed 5");
  expect_same_metrics(a, b, 0.0, "the same seed twice");
  const nlohmann::json c = evaluate(2, checkpoint(40), "--seed 6");
  EXPECT_NE(a["masked_lm_loss"], c["masked_lm_loss"]) << "another seed masks other tokens";
}

TEST_F(EvalE2E, TrainerEvaluationEqualsElectraEvalAndLeavesTrainingAlone) {
  std::vector<nlohmann::json> train_lines, eval_lines;
  for (const nlohmann::json& line : read_metrics(g_root / "trained")) {
    (line.contains("eval/disc_auc") ? eval_lines : train_lines).push_back(line);
  }
  ASSERT_EQ(eval_lines.size(), 2u);
  EXPECT_EQ(eval_lines[0]["step"], 20);
  EXPECT_EQ(eval_lines[1]["step"], 40);
  // electra-train evaluated its in-memory weights with electra-eval's default seed (not train.seed, 5 here) on
  // batches of train.batch_size: electra-eval on the checkpoints of those steps gives the same numbers.
  for (const nlohmann::json& line : eval_lines) {
    const int step = line["step"].get<int>();
    const nlohmann::json m = evaluate(1, checkpoint(step));
    expect_same_metrics(m, line, 1e-9, "electra-train vs electra-eval at step " + std::to_string(step), "eval/");
    ASSERT_TRUE(line.contains("eval/disc_auc_unigram")) << line.dump();  // train.eval_unigram_auc=true
    EXPECT_NEAR(line["eval/disc_auc_unigram"].get<double>(), m["disc_auc_unigram"].get<double>(), 1e-9);
    EXPECT_EQ(line["eval/examples"], m["examples"]);
  }
  // Evaluating changes nothing about training: the same losses, bitwise, as the run without it.
  const std::vector<nlohmann::json> plain = read_metrics(g_root / "plain");
  ASSERT_EQ(plain.size(), train_lines.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    for (const char* key : {"loss", "gen_loss", "disc_loss", "mlm_accuracy", "disc_accuracy", "grad_norm"}) {
      EXPECT_EQ(plain[i][key], train_lines[i][key]) << key << " at step " << plain[i]["step"];
    }
  }
  // Every training line carries the discriminator's gain over its prior (entropy of the replaced fraction).
  for (const nlohmann::json& line : train_lines) {
    ASSERT_TRUE(line.contains("disc_gain") && line.contains("disc_prior_entropy")) << line.dump();
    const double prior = electra::eval::binary_entropy(line["replaced_fraction"].get<double>());
    EXPECT_NEAR(line["disc_prior_entropy"].get<double>(), prior, 1e-12);
    EXPECT_NEAR(line["disc_gain"].get<double>(), prior - line["disc_loss"].get<double>(), 1e-12);
    // The window's running AUC (histogram of the training scores): a probability, or null without both classes.
    ASSERT_TRUE(line.contains("disc_auc")) << line.dump();
    if (!line["disc_auc"].is_null()) {
      EXPECT_GE(line["disc_auc"].get<double>(), 0.0);
      EXPECT_LE(line["disc_auc"].get<double>(), 1.0);
    }
  }
  // TensorBoard got the eval/ scalars and the gains too.
  bool found = false, gain_found = false;
  for (const auto& entry : fs::directory_iterator(g_root / "trained" / "tensorboard")) {
    const std::string events = read_text(entry.path());
    if (events.find("eval/disc_auc") != std::string::npos) found = true;
    if (events.find("eval/disc_gain") != std::string::npos && events.find("disc_prior_entropy") != std::string::npos)
      gain_found = true;
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(gain_found);
}

TEST_F(EvalE2E, ExportDirectoryEvaluatesLikeItsCheckpoint) {
  const fs::path log = g_root / "export.log";
  ASSERT_EQ(
      run(bin("electra-export") + " --checkpoint " + checkpoint(40) + " --output " + (g_root / "export").string(), log),
      0)
      << log_of(log);
  const nlohmann::json from_export = evaluate(1, (g_root / "export").string());
  ASSERT_FALSE(from_export.empty());
  EXPECT_NE(from_export["model"].get<std::string>().find("Hugging Face export"), std::string::npos);
  // The same float32 weights (the export drops only the unused sentence head): the same numbers.
  const nlohmann::json from_checkpoint = evaluate(1, checkpoint(40));
  expect_same_metrics(from_checkpoint, from_export, 0.0, "export vs checkpoint");
  for (const std::string& key : kCounts) EXPECT_EQ(from_checkpoint[key], from_export[key]) << key;
}

TEST_F(EvalE2E, BadInputExitsWithTwoNamingTheProblem) {
  const fs::path log = g_root / "bad.log";
  const std::string base = bin("electra-eval") + " --checkpoint " + checkpoint(40);
  EXPECT_EQ(run(base + " --data " + (g_root / "missing").string(), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("missing"), std::string::npos) << log_of(log);
  // A file, a directory without shards, and shards without manifest.json (NVIDIA's: no recorded length).
  const fs::path no_shards = g_root / "no_shards", unlisted = g_root / "unlisted";
  fs::create_directories(no_shards);
  fs::create_directories(unlisted);
  fs::copy_file(checkpoint(40), unlisted / "shard.h5", fs::copy_options::overwrite_existing);
  for (const auto& [data, says] : {std::pair{fs::path(checkpoint(40)), "not a directory"},
                                   std::pair{no_shards, "no shards"}, std::pair{unlisted, "--seq-length"}}) {
    EXPECT_EQ(run(base + " --data " + data.string(), log), 2) << data << log_of(log);
    EXPECT_NE(read_text(log).find(says), std::string::npos) << says << log_of(log);
  }
  // Ranks that see other data (node-local copies that differ) or take other flags: refused, naming both.
  const std::string heldout = " --batch-size 16 --data " + (g_root / "heldout").string();
  EXPECT_EQ(
      run(mpirun(1) + base + heldout + " : -np 1 " + base + " --batch-size 16 --data " + (g_root / "shards").string(),
          log),
      2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("the ranks would not evaluate the same model on the same data"), std::string::npos)
      << log_of(log);
  EXPECT_NE(read_text(log).find("data.examples: rank 0 "), std::string::npos) << log_of(log);
  EXPECT_EQ(run(mpirun(1) + base + heldout + " : -np 1 " + base + heldout + " --seed 2", log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("flags.seed: rank 0 1, rank 1 2"), std::string::npos) << log_of(log);
  // Copies of one run directory at other paths (node-local copies): rank 0 picks the checkpoint by name, each
  // rank reads it from its own copy (rank 0's whole path reached every rank, and was not there).
  for (const char* node : {"node_a/run_a", "node_b/run_b"}) {
    fs::remove_all(g_root / node);
    fs::create_directories(g_root / node);
    fs::copy(g_root / "trained", g_root / node, fs::copy_options::recursive);
  }
  const std::string own = bin("electra-eval") + heldout + " --max-batches 1 --json --checkpoint ";
  EXPECT_EQ(run(mpirun(1) + "-wdir " + (g_root / "node_a").string() + " " + own + "run_a : -np 1 -wdir " +
                    (g_root / "node_b").string() + " " + own + "run_b",
                log),
            0)
      << log_of(log);
  EXPECT_EQ(run(mpirun(2) + base + " --data " + (g_root / "heldout").string() + " --batch-size 5", log), 2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("--batch-size 5 is not a multiple of the 2 ranks"), std::string::npos) << log_of(log);
  // The default batch (128) is rounded up to a multiple of the ranks rather than refused on 3 (here more than
  // the 108 held-out examples: one batch of them).
  EXPECT_EQ(run(mpirun(3) + base + " --data " + (g_root / "heldout").string() + " --json", log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("fewer than a batch of 129: one batch of 108"), std::string::npos) << log_of(log);
  // With --max-batches the batch decides which examples are read: not rounded (1 and 3 ranks would read others).
  EXPECT_EQ(run(mpirun(3) + base + " --data " + (g_root / "heldout").string() + " --max-batches 1", log), 2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("with --max-batches the default 128 is not rounded up"), std::string::npos)
      << log_of(log);
  EXPECT_EQ(run(bin("electra-eval") + " --checkpoint " + (g_root / "nowhere").string() + " --data " +
                    (g_root / "heldout").string(),
                log),
            2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("nowhere"), std::string::npos) << log_of(log);
  // Less data than a batch is one batch of the data (it was refused), whole rows per rank.
  EXPECT_EQ(run(mpirun(2) + base + " --data " + (g_root / "heldout").string() + " --batch-size 100000 --json", log), 0)
      << log_of(log);
  EXPECT_NE(read_text(log).find("fewer than a batch of 100000: one batch of"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("\"batches\":1,"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(base, log), 2) << "--data is required" << log_of(log);
  // Out-of-range flags name themselves (--seed is unsigned: -1 would read as 2^64 - 1).
  for (const std::string flag : {"--seed -1", "--max-batches -1", "--batch-size 0", "--auc-bins 0",
                                 "--exact-auc-max-tokens -1", "--threads -1", "--seq-length -1", "--arena-bytes -1"}) {
    EXPECT_EQ(run(base + " --data " + (g_root / "heldout").string() + " " + flag, log), 2) << flag << log_of(log);
    EXPECT_NE(read_text(log).find(flag.substr(0, flag.find(' ')) + ": Value"), std::string::npos)
        << flag << log_of(log);
  }
  // A device-memory fraction outside (0, 1] is refused on the CPU too, where it is unused (NaN among them).
  for (const std::string fraction : {"nan", "2", "0"}) {
    EXPECT_EQ(run(base + " --data " + (g_root / "heldout").string() + " --memory-fraction " + fraction, log), 2)
        << fraction << log_of(log);
    EXPECT_NE(read_text(log).find("memory fraction " + fraction + " outside (0, 1]"), std::string::npos)
        << fraction << log_of(log);
  }
  // Numbers that cannot be written (a full disk) are an error, not a success: exit 1.
  if (fs::exists("/dev/full")) {
    // The braces keep stdout on /dev/full inside run()'s own redirection to the log.
    EXPECT_EQ(run("{ " + base + " --data " + (g_root / "heldout").string() +
                      " --batch-size 8 --max-batches 1 --json >/dev/full; }",
                  log),
              1)
        << log_of(log);
    EXPECT_NE(read_text(log).find("stdout: write failed"), std::string::npos) << log_of(log);
  }
}

// Held-out shards tokenized with other casing than the training text (--no-lower-case) would be scored as
// if they read the same: electra-eval and electra-train's data.eval_dir refuse them (exit 2), naming both.
TEST_F(EvalE2E, HeldOutShardsOfOtherCasingAreRefused) {
  ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(g_root, "heldout_text", "heldout_cased", "", "--no-lower-case"));
  const fs::path log = g_root / "cased.log";
  const std::string cased = (g_root / "heldout_cased").string();
  EXPECT_EQ(run(bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " + cased + " --batch-size 12", log),
            2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("tokenized with lower_case false"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("trained on lower_case true text"), std::string::npos) << log_of(log);
  EXPECT_EQ(
      run(train_command(1, cleared(g_root / "cased_run"), "--set train.eval_every=20 --set data.eval_dir=" + cased),
          log),
      2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("config key 'data.eval_dir': " + cased + " was tokenized with lower_case false"),
            std::string::npos)
      << log_of(log);
  EXPECT_FALSE(fs::exists(g_root / "cased_run" / "checkpoints")) << "refused before training";
}

// A bad row in data.eval_dir (here the last one, far from the first batches) fails electra-train's set-up
// (exit 2, naming the file), not the first evaluation after training for train.eval_every steps (exit 1).
TEST_F(EvalE2E, ABadHeldOutRowFailsTrainingAtSetUp) {
  const fs::path bad = g_root / "heldout_bad", log = g_root / "bad_row.log";
  fs::remove_all(bad);
  fs::copy(g_root / "heldout", bad, fs::copy_options::recursive);
  fs::path shard;
  for (const auto& entry : fs::directory_iterator(bad))
    if (entry.path().extension() == ".h5") shard = entry.path();
  ASSERT_FALSE(shard.empty());
  {
    electra::h5::Handle file(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    electra::h5::Handle ds(H5Dopen2(file, "input_ids", H5P_DEFAULT));
    ASSERT_TRUE(ds.valid());
    electra::h5::Handle space(H5Dget_space(ds));
    const hsize_t start[2] = {electra::h5::dims(ds)[0] - 1, 0}, count[2] = {1, 1};
    ASSERT_GE(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr), 0);
    electra::h5::Handle one(H5Screate_simple(2, count, nullptr));
    const uint16_t not_cls = 7;
    ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_UINT16, one, space, H5P_DEFAULT, &not_cls), 0);
  }
  EXPECT_EQ(run(train_command(2, cleared(g_root / "bad_row_run"),
                              "--set train.eval_every=20 --set data.eval_dir=" + bad.string()),
                log),
            2)
      << log_of(log);
  EXPECT_NE(read_text(log).find(shard.string() + ": dataset 'input_ids': row "), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("not [CLS]"), std::string::npos) << log_of(log);
  EXPECT_FALSE(fs::exists(g_root / "bad_row_run" / "checkpoints")) << "refused before training";
}

// Held-out text of words the vocabulary lacks (all [UNK]) leaves nothing to draw unigram replacements from:
// disc_auc_unigram is null with a warning, and the evaluation (and a training run's) goes on. It aborted them.
TEST_F(EvalE2E, HeldOutTextWithoutOrdinaryTokensGivesANullUnigramAuc) {
  const fs::path text = g_root / "unknown_text", log = g_root / "unknown.log";
  fs::create_directories(cleared(text));
  {
    std::ofstream out(text / "thai.txt");
    for (int doc = 0; doc < 12; ++doc)
      out << "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 "
             "\u0e04\u0e23\u0e31\u0e1a\n\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\n\n";
  }
  cleared(g_root / "unknown_shards");
  ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(g_root, "unknown_text", "unknown_shards", ""));
  const std::string eval = bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " +
                           (g_root / "unknown_shards").string() + " --batch-size 12 --json";
  ASSERT_EQ(run(eval, log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("no ordinary tokens"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("\"disc_auc_unigram\":null"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("\"disc_auc_within_token\":null"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(train_command(1, cleared(g_root / "unknown_run"),
                              "--set train.steps=2 --set train.eval_every=1 --set train.eval_unigram_auc=true "
                              "--set data.eval_dir=" +
                                  (g_root / "unknown_shards").string()),
                log),
            0)
      << log_of(log);
  const std::vector<nlohmann::json> lines = read_metrics(g_root / "unknown_run");
  ASSERT_FALSE(lines.empty());
  EXPECT_TRUE(lines.back().contains("eval/disc_auc_unigram") && lines.back()["eval/disc_auc_unigram"].is_null())
      << lines.back().dump();
}

// --mask-prob beyond what the model's 5 predictions per row allow (rows of 32: 30 maskable tokens) is said;
// the default 0.15 (round(4.5) = 4 tokens) is not capped and says nothing.
TEST_F(EvalE2E, AMaskProbThePredictionsCapIsSaidOnlyWhenItBinds) {
  const fs::path log = g_root / "mask_prob.log";
  const std::string base = bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " +
                           (g_root / "heldout").string() + " --batch-size 12 --max-batches 1";
  ASSERT_EQ(run(base, log), 0) << log_of(log);
  EXPECT_EQ(read_text(log).find("predictions per row"), std::string::npos) << log_of(log);
  ASSERT_EQ(run(base + " --mask-prob 0.5", log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("--mask-prob 0.5 of 32 tokens is more than the model's 5 predictions per row"),
            std::string::npos)
      << log_of(log);
}

// Rows longer than the model's 512 positions: refused at set-up (exit 2) like training does, not an MPI abort
// (exit 1) at the first batch.
TEST_F(EvalE2E, RowsLongerThanTheModelsPositionsAreRefusedAtSetUp) {
  const fs::path log = g_root / "long.log", shards = g_root / "heldout_600";
  ASSERT_EQ(run(bin("electra-preprocess") + " --input " + (g_root / "heldout_text").string() + " --vocab " +
                    (g_root / "vocab.txt").string() + " --output " + cleared(shards).string() + " --max-seq-length 600",
                log),
            0)
      << log_of(log);
  EXPECT_EQ(run(mpirun(2) + bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " + shards.string() +
                    " --batch-size 2",
                log),
            2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("have rows of 600 tokens, more than the model's max_position_embeddings (512"),
            std::string::npos)
      << log_of(log);
}

// electra-train's device.* keys fail naming the key; --device cuda without a usable GPU fails before
// training, naming what is missing (exit 2 like every set-up error).
TEST_F(EvalE2E, TrainerDeviceKeysAreCheckedAndCudaNamesWhatIsMissing) {
  const fs::path log = g_root / "device_keys.log";
  const fs::path dir = g_root / "device_keys";
  EXPECT_EQ(run(train_command(1, dir, "--set device.memory_fraction=1.5"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("config key 'device.memory_fraction' must be in (0, 1], got 1.5"), std::string::npos)
      << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set device.arena_bytes=-1"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("config key 'device.arena_bytes' must be >= 0"), std::string::npos) << log_of(log);
  const int code = run(train_command(1, dir, "--device cuda --set train.steps=1"), log);
  if (read_text(log).find("--device cuda: ") != std::string::npos) {
    EXPECT_EQ(code, 2) << log_of(log);
    EXPECT_FALSE(fs::exists(dir / "checkpoints" / "ckpt-00000001.h5"));
  } else {
    EXPECT_EQ(code, 0) << "a GPU is visible, so the run should train" << log_of(log);
  }
}

// electra-eval --device cuda gives the CPU's metrics to float rounding (the same random numbers on both
// backends; a Gumbel sample may flip on a near tie, hence a tolerance). Skips where no GPU can be used.
// bf16 storage (the CPU reference backend) rounds activations and weight copies: the same counts, metrics
// to bf16 tolerance (sampled replacements may differ at a few positions).
TEST_F(EvalE2E, Bf16StorageEvaluatesCloseToFp32) {
  const nlohmann::json fp32 = evaluate(1, checkpoint(40), "--storage fp32");
  const nlohmann::json bf16 = evaluate(1, checkpoint(40), "--storage bf16");
  ASSERT_FALSE(fp32.empty() || bf16.empty());
  for (const char* key : {"batches", "examples", "masked_positions", "tokens"}) EXPECT_EQ(fp32[key], bf16[key]) << key;
  for (const char* key : {"masked_lm_loss", "disc_loss", "disc_auc", "disc_accuracy"}) {
    const double x = fp32[key].get<double>(), y = bf16[key].get<double>();
    EXPECT_NEAR(x, y, 5e-2 * std::abs(x)) << key;
  }
  EXPECT_NE(fp32["masked_lm_loss"], bf16["masked_lm_loss"]) << "--storage bf16 was not used";
  // A bad value is a flag error (exit 2).
  const fs::path log = g_root / "eval_storage.log";
  EXPECT_EQ(run(bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " + (g_root / "heldout").string() +
                    " --storage fp16",
                log),
            2)
      << log_of(log);
}

TEST_F(EvalE2E, CudaEvaluationMatchesCpu) {
  const fs::path log = g_root / "eval_cuda.log";
  const std::string base = bin("electra-eval") + " --checkpoint " + checkpoint(40) + " --data " +
                           (g_root / "heldout").string() + " --batch-size 12 --json";
  if (run(base + " --device cuda", log) != 0) {
    const std::string text = read_text(log);
    if (text.find("--device cuda: ") != std::string::npos) GTEST_SKIP() << text;
    FAIL() << log_of(log);
  }
  const std::string text = read_text(log);
  const size_t start = text.rfind("{\"masked_lm_accuracy\"");
  ASSERT_NE(start, std::string::npos) << log_of(log);
  const nlohmann::json gpu = nlohmann::json::parse(text.substr(start, text.find('\n', start) - start));
  const nlohmann::json cpu = evaluate(1, checkpoint(40));
  for (const char* key : {"batches", "examples", "masked_positions", "tokens"}) EXPECT_EQ(gpu[key], cpu[key]) << key;
  expect_same_metrics(cpu, gpu, 2e-2, "cpu vs cuda");
  // bf16 mixed precision on the GPU (storage auto = bf16) against the CPU's bf16 reference.
  ASSERT_EQ(run(base + " --device cuda --precision bf16", log), 0) << log_of(log);
  const std::string text16 = read_text(log);
  const size_t start16 = text16.rfind("{\"masked_lm_accuracy\"");
  ASSERT_NE(start16, std::string::npos) << log_of(log);
  const nlohmann::json gpu16 = nlohmann::json::parse(text16.substr(start16, text16.find('\n', start16) - start16));
  const nlohmann::json cpu16 = evaluate(1, checkpoint(40), "--storage bf16");
  for (const char* key : {"batches", "examples", "masked_positions", "tokens"}) {
    EXPECT_EQ(gpu16[key], cpu16[key]) << key;
  }
  for (const char* key : {"masked_lm_loss", "disc_loss", "disc_auc"}) {
    EXPECT_NEAR(gpu16[key].get<double>(), cpu16[key].get<double>(), 5e-2 * std::abs(cpu16[key].get<double>())) << key;
  }
}

TEST_F(EvalE2E, PlotScriptDrawsAPngOfTwoRuns) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  const std::string py = python && *python && fs::exists(python) ? python : "python3";
  const fs::path log = g_root / "plot.log";
  if (run(py + " -c 'import matplotlib'", log) != 0) GTEST_SKIP() << "matplotlib is missing for " << py;
  // A third run directory whose metrics.jsonl ends in a torn line (a killed run): skipped with a warning.
  fs::create_directories(g_root / "torn");
  fs::copy_file(g_root / "plain" / "metrics.jsonl", g_root / "torn" / "metrics.jsonl");
  // Lines that used to end it in a traceback: invalid UTF-8, a step beyond float, a value beyond float.
  std::ofstream(g_root / "torn" / "metrics.jsonl", std::ios::app)
      << "{\"step\": 38, \"loss\": \"\xff\"}\n{\"step\": 1e400}\n{\"step\": 39, \"loss\": 1" << std::string(400, '0')
      << "}\n{\"step\": 41, \"loss\": 1";
  const fs::path png = g_root / "plots" / "curves.png";
  ASSERT_EQ(run(py + " jobs/plot_metrics.py " + (g_root / "trained").string() + " " + (g_root / "plain").string() +
                    " " + (g_root / "torn").string() + " --output " + png.string(),
                log),
            0)
      << log_of(log);
  ASSERT_TRUE(fs::exists(png)) << log_of(log);
  EXPECT_GT(fs::file_size(png), 20000u);
  EXPECT_EQ(read_text(png).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_NE(read_text(log).find("skipping"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(py + " jobs/plot_metrics.py " + (g_root / "missing").string() + " --output " + png.string(), log), 2)
      << log_of(log);
  // A format matplotlib does not write: exit 2 naming the file, not a traceback.
  const fs::path txt = g_root / "plots" / "curves.txt";
  EXPECT_EQ(run(py + " jobs/plot_metrics.py " + (g_root / "plain").string() + " --output " + txt.string(), log), 2)
      << log_of(log);
  EXPECT_NE(read_text(log).find("cannot write " + txt.string()), std::string::npos) << log_of(log);
}

}  // namespace
