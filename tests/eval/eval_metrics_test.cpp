// The metric functions behind electra-eval: ROC AUC (histogram and exact) against a brute-force
// pairwise count on random data with ties, and the ratios of finalize() against hand-computed values.
#include "lib/eval/eval_metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "lib/eval/evaluate.h"
#include "tests/model/model_test_util.h"

namespace {

using electra::eval::auc_error_bound;
using electra::eval::auc_exact;
using electra::eval::auc_from_histogram;
using electra::eval::auc_within_token;
using electra::eval::binary_entropy;
using electra::eval::compress_scores;
using electra::eval::compress_token_scores;
using electra::eval::discriminator_gain;
using electra::eval::EvalSums;
using electra::eval::finalize;
using electra::eval::ScoreCount;
using electra::eval::ScoreHistogram;
using electra::eval::TokenScoreCount;

// P(s+ > s-) + 0.5 P(s+ == s-) over all (positive, negative) pairs; sums of halves are exact in double.
double brute_force_auc(const std::vector<double>& scores, const std::vector<int32_t>& labels) {
  double wins = 0.0;
  double pairs = 0.0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (labels[i] == 0) continue;
    for (size_t j = 0; j < scores.size(); ++j) {
      if (labels[j] != 0) continue;
      pairs += 1.0;
      wins += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
    }
  }
  return wins / pairs;
}

// Labels with P(positive) = 0.3; positives score higher on average so the AUC is well above 0.5.
void random_data(uint64_t seed, size_t n, int levels, std::vector<double>& scores, std::vector<int32_t>& labels) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  scores.resize(n);
  labels.resize(n);
  for (size_t i = 0; i < n; ++i) {
    labels[i] = u(rng) < 0.3 ? 1 : 0;
    double s = std::min(1.0, std::max(0.0, 0.35 * u(rng) + (labels[i] ? 0.4 : 0.2) + 0.3 * u(rng)));
    // levels > 0: quantise onto bin centres of a `levels`-bin histogram (many exact ties).
    if (levels > 0) s = (std::floor(s * levels < levels ? s * levels : levels - 1) + 0.5) / levels;
    scores[i] = s;
  }
}

ScoreHistogram histogram_of(const std::vector<double>& scores, const std::vector<int32_t>& labels, int bins) {
  ScoreHistogram h(bins);
  for (size_t i = 0; i < scores.size(); ++i) h.add(scores[i], labels[i] != 0);
  return h;
}

TEST(EvalMetrics, HistogramBinsAreFloorOfScaledScoreClampedToTheRange) {
  ScoreHistogram h(10);
  EXPECT_EQ(h.bin_of(0.0), 0);
  EXPECT_EQ(h.bin_of(0.05), 0);
  EXPECT_EQ(h.bin_of(0.55), 5);
  EXPECT_EQ(h.bin_of(0.99), 9);
  EXPECT_EQ(h.bin_of(1.0), 9);
  EXPECT_EQ(h.bin_of(-0.5), 0);
  EXPECT_EQ(h.bin_of(7.0), 9);
  h.add(0.55, true);
  h.add(0.25, false);
  h.add(std::nan(""), false);
  EXPECT_EQ(h.positive_counts()[5], 1);
  EXPECT_EQ(h.negative_counts()[2], 1);
  EXPECT_EQ(h.positives(), 1);
  EXPECT_EQ(h.negatives(), 1);
  EXPECT_EQ(h.nonfinite(), 1);
  EXPECT_TRUE(std::isnan(auc_from_histogram(h))) << "a non-finite score makes the AUC undefined";
  EXPECT_THROW(ScoreHistogram(0), std::exception);
}

TEST(EvalMetrics, HistogramAucIsExactWhenTiesAreTheOnlySharedBins) {
  // Scores on bin centres: pairs in one bin are real ties, which the brute force also counts 1/2.
  for (uint64_t seed : {1, 2, 3}) {
    std::vector<double> scores;
    std::vector<int32_t> labels;
    random_data(seed, 1500, 40, scores, labels);
    const double expected = brute_force_auc(scores, labels);
    EXPECT_GT(expected, 0.6);
    const ScoreHistogram h = histogram_of(scores, labels, 40);
    EXPECT_DOUBLE_EQ(auc_from_histogram(h), expected) << "seed " << seed;
    EXPECT_DOUBLE_EQ(auc_exact(scores, labels), expected) << "seed " << seed;
    EXPECT_GT(auc_error_bound(h), 0.0) << "the bound does not know the shared bins hold true ties";
  }
}

TEST(EvalMetrics, HistogramAucIsWithinItsBoundOfTheExactAuc) {
  for (int bins : {5, 50, 10000}) {
    std::vector<double> scores;
    std::vector<int32_t> labels;
    random_data(11 + bins, 2000, 0, scores, labels);
    const double expected = brute_force_auc(scores, labels);
    const ScoreHistogram h = histogram_of(scores, labels, bins);
    const double bound = auc_error_bound(h);
    EXPECT_LE(std::abs(auc_from_histogram(h) - expected), bound + 1e-15) << bins << " bins";
    if (bins == 5) {
      EXPECT_GT(std::abs(auc_from_histogram(h) - expected), 1e-6) << "coarse bins do lose something";
    }
    if (bins == 10000) {
      EXPECT_LT(bound, 1e-2);
    }
    EXPECT_DOUBLE_EQ(auc_exact(scores, labels), expected);
  }
}

TEST(EvalMetrics, ExactAucFromRunsMergedOverRanksEqualsTheBruteForce) {
  std::vector<double> scores;
  std::vector<int32_t> labels;
  random_data(5, 1800, 0, scores, labels);
  // Float scores with ties (what the discriminator gives): round to a coarse float grid.
  std::vector<float> f(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    f[i] = static_cast<float>(std::round(scores[i] * 300.0) / 300.0);
    scores[i] = f[i];
  }
  const double expected = brute_force_auc(scores, labels);
  // Three "ranks" with uneven slices, packed and unpacked as electra-eval gathers them.
  std::vector<ScoreCount> merged;
  const size_t cuts[] = {0, 200, 1100, f.size()};
  for (int r = 0; r < 3; ++r) {
    std::vector<float> s(f.begin() + cuts[r], f.begin() + cuts[r + 1]);
    std::vector<uint8_t> l;
    for (size_t i = cuts[r]; i < cuts[r + 1]; ++i) l.push_back(static_cast<uint8_t>(labels[i]));
    const std::vector<ScoreCount> runs = compress_scores(s, l);
    for (size_t i = 1; i < runs.size(); ++i) ASSERT_LT(runs[i - 1].score, runs[i].score) << "sorted, merged";
    electra::eval::unpack_scores(electra::eval::pack_scores(runs), merged);
  }
  EXPECT_DOUBLE_EQ(auc_exact(merged), expected);
  std::vector<uint8_t> all(labels.begin(), labels.end());
  EXPECT_EQ(auc_exact(compress_scores(f, all)), auc_exact(merged)) << "bitwise the same however it is split";
}

// Brute force over pairs (replaced, original) of the same token id, pooled over the ids.
double brute_force_auc_within_token(const std::vector<int32_t>& tokens, const std::vector<float>& scores,
                                    const std::vector<uint8_t>& labels) {
  double wins = 0.0, pairs = 0.0;
  for (size_t i = 0; i < scores.size(); ++i) {
    for (size_t j = 0; j < scores.size(); ++j) {
      if (labels[i] == 0 || labels[j] != 0 || tokens[i] != tokens[j]) continue;
      pairs += 1.0;
      wins += scores[i] > scores[j] ? 1.0 : scores[i] == scores[j] ? 0.5 : 0.0;
    }
  }
  return wins / pairs;
}

TEST(EvalMetrics, WithinTokenAucPoolsPairsOfOneTokenAndMergesOverRanks) {
  // 12 token ids; replaced tokens lean to the low ids and score higher within an id, with ties.
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> tokens(1500);
  std::vector<float> scores(tokens.size());
  std::vector<uint8_t> labels(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    labels[i] = u(rng) < 0.25 ? 1 : 0;
    tokens[i] = static_cast<int32_t>(u(rng) * (labels[i] ? 6 : 12));
    scores[i] = static_cast<float>(std::round((0.5 * u(rng) + (labels[i] ? 0.3 : 0.1)) * 40.0) / 40.0);
  }
  const double expected = brute_force_auc_within_token(tokens, scores, labels);
  EXPECT_GT(expected, 0.6);
  // Three "ranks" with uneven slices, packed and unpacked as electra-eval gathers them.
  std::vector<TokenScoreCount> merged;
  const size_t cuts[] = {0, 300, 1000, tokens.size()};
  for (int r = 0; r < 3; ++r) {
    const auto slice = [&](const auto& v) { return std::vector(v.begin() + cuts[r], v.begin() + cuts[r + 1]); };
    const std::vector<TokenScoreCount> runs = compress_token_scores(slice(tokens), slice(scores), slice(labels));
    for (size_t i = 1; i < runs.size(); ++i) {
      ASSERT_TRUE(runs[i - 1].token < runs[i].token ||
                  (runs[i - 1].token == runs[i].token && runs[i - 1].score < runs[i].score))
          << "sorted by (token, score), merged";
    }
    electra::eval::unpack_scores(electra::eval::pack_scores(runs), merged);
  }
  EXPECT_DOUBLE_EQ(auc_within_token(merged), expected);
  EXPECT_EQ(auc_within_token(compress_token_scores(tokens, scores, labels)), auc_within_token(merged))
      << "bitwise the same however it is split";

  // Scores that are a function of the token id alone: the plain AUC is high (replaced tokens lean to the low
  // ids, which score high), the within-token AUC exactly 0.5.
  std::vector<float> by_token(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) by_token[i] = static_cast<float>(12 - tokens[i]);
  EXPECT_GT(auc_exact(compress_scores(by_token, labels)), 0.65);
  EXPECT_EQ(auc_within_token(compress_token_scores(tokens, by_token, labels)), 0.5);
}

// The within-token AUC groups scores by the token the discriminator read: rebuilt from the batch and the
// samples, it must be the model's own corrupted ids (copied back with copy_outputs), padding included.
TEST(EvalMetrics, DiscriminatorInputIdsAreTheModelsCorruptedIds) {
  auto backend = electra::make_cpu_backend<float>();
  const electra::PretrainerConfig config = electra::test::tiny_config();
  electra::ElectraPretrainer<float> model(config, *backend);
  model.init_parameters(3);
  const electra::Batch batch = electra::test::random_batch(12, 10, 3, config.vocab_size, 5);
  electra::StepContext context;
  context.seed = 7;
  const auto& out = model.forward(batch, context);
  std::vector<int32_t> ids;
  electra::eval::ids_with_predictions(batch, out.sampled_ids, ids);
  EXPECT_EQ(ids, out.corrupted_ids);
  int replaced = 0;
  for (size_t i = 0; i < ids.size(); ++i) replaced += ids[i] != batch.input_word_ids[i];
  EXPECT_GT(replaced, 12) << "the samples are in";
}

TEST(EvalMetrics, WithinTokenAucEdgeCases) {
  // Token 1: replaced 0.9 against originals 0.2 and 0.95; token 2 only original, token 3 only replaced.
  const std::vector<int32_t> tokens = {1, 1, 1, 2, 3};
  const std::vector<float> scores = {0.9f, 0.2f, 0.95f, 0.1f, 0.99f};
  const std::vector<uint8_t> labels = {1, 0, 0, 0, 1};
  EXPECT_EQ(auc_within_token(compress_token_scores(tokens, scores, labels)), 0.5);  // 1 of 2 pairs
  EXPECT_DOUBLE_EQ(auc_exact(compress_scores(scores, labels)), 5.0 / 6.0);
  EXPECT_TRUE(std::isnan(auc_within_token(
      compress_token_scores(std::vector<int32_t>{2, 3}, std::vector<float>{0.1f, 0.9f}, std::vector<uint8_t>{0, 1}))))
      << "no token id both replaced and original";
  EXPECT_TRUE(std::isnan(auc_within_token({})));
  const std::vector<float> nan_score = {std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(compress_token_scores(std::vector<int32_t>{1}, nan_score, std::vector<uint8_t>{1}), std::exception);
  EXPECT_THROW(compress_token_scores(std::vector<int32_t>{1, 2}, std::vector<float>{0.5f}, std::vector<uint8_t>{1}),
               std::exception);
}

TEST(EvalMetrics, AucEdgeCases) {
  const std::vector<int32_t> labels = {0, 0, 1, 1};
  EXPECT_EQ(auc_exact(std::vector<double>{0.1, 0.2, 0.3, 0.4}, labels), 1.0);
  EXPECT_EQ(auc_exact(std::vector<double>{0.4, 0.3, 0.2, 0.1}, labels), 0.0);
  EXPECT_EQ(auc_exact(std::vector<double>{0.5, 0.5, 0.5, 0.5}, labels), 0.5);
  EXPECT_EQ(auc_exact(std::vector<double>{0.1, 0.3, 0.2, 0.4}, labels), 0.75);
  EXPECT_TRUE(std::isnan(auc_exact(std::vector<double>{0.1, 0.2}, std::vector<int32_t>{1, 1})));
  EXPECT_TRUE(std::isnan(auc_exact(std::vector<ScoreCount>{})));
  ScoreHistogram h(4);
  for (double s : {0.1, 0.3}) h.add(s, false);
  for (double s : {0.6, 0.9}) h.add(s, true);
  EXPECT_EQ(auc_from_histogram(h), 1.0);
  EXPECT_EQ(auc_error_bound(h), 0.0);
  // A negative in the top bin: 0.6 now loses to it, 0.9 shares its bin (a half); 2 x 3 pairs.
  h.add(0.95, false);
  EXPECT_DOUBLE_EQ(auc_from_histogram(h), (2.0 + 2.5) / 6.0);
  EXPECT_DOUBLE_EQ(auc_error_bound(h), 0.5 / 6.0);
}

TEST(EvalMetrics, BinaryEntropyInNats) {
  EXPECT_EQ(binary_entropy(0.0), 0.0);
  EXPECT_EQ(binary_entropy(1.0), 0.0);
  EXPECT_DOUBLE_EQ(binary_entropy(0.5), std::log(2.0));
  // Symmetric in p and 1 - p.
  EXPECT_NEAR(binary_entropy(0.111), -(0.111 * std::log(0.111) + 0.889 * std::log(0.889)), 1e-15);
  EXPECT_DOUBLE_EQ(binary_entropy(0.2), binary_entropy(0.8));
}

TEST(EvalMetrics, DiscriminatorGainIsZeroForThePriorAndPositiveOnlyBeyondIt) {
  // A discriminator that predicts the base rate p for every token has loss H(p): gain 0.
  for (double p : {0.05, 0.111, 0.15, 0.5}) {
    const double prior_loss = -(p * std::log(p) + (1 - p) * std::log(1 - p));
    EXPECT_NEAR(discriminator_gain(prior_loss, p), 0.0, 1e-15) << p;
  }
  EXPECT_NEAR(discriminator_gain(0.33, 0.141), binary_entropy(0.141) - 0.33, 1e-15);
  EXPECT_GT(discriminator_gain(0.33, 0.141), 0.07);
  // Worse than the prior (an untrained discriminator: ln 2 per token): negative.
  EXPECT_LT(discriminator_gain(std::log(2.0), 0.141), -0.2);
}

TEST(EvalMetrics, FinalizeComputesTheRatiosOfGoogleElectrasMetricFn) {
  EvalSums s;
  s.batches = 2;
  s.examples = 4;
  s.masked = 8;
  s.mlm_correct = 2;
  s.sampled_correct = 1;
  s.tokens = 10;
  s.true_positive = 3;
  s.false_positive = 1;
  s.false_negative = 2;
  s.true_negative = 4;
  s.mlm_loss_sum = 4.0;
  s.disc_loss_sum = 5.0;
  ScoreHistogram h(10);
  for (double p : {0.9, 0.8, 0.7, 0.3, 0.2}) h.add(p, true);
  for (double p : {0.6, 0.1, 0.15, 0.05, 0.25}) h.add(p, false);
  const auto m = finalize(s, h);
  EXPECT_DOUBLE_EQ(m.masked_lm_accuracy, 0.25);
  EXPECT_DOUBLE_EQ(m.masked_lm_loss, 0.5);
  EXPECT_DOUBLE_EQ(m.sampled_masked_lm_accuracy, 0.125);
  EXPECT_DOUBLE_EQ(m.disc_loss, 0.5);
  EXPECT_DOUBLE_EQ(m.disc_accuracy, 0.7);    // (3 + 4) / 10
  EXPECT_DOUBLE_EQ(m.disc_precision, 0.75);  // 3 / (3 + 1)
  EXPECT_DOUBLE_EQ(m.disc_recall, 0.6);      // 3 / (3 + 2)
  EXPECT_DOUBLE_EQ(m.replaced_fraction, 0.5);
  EXPECT_DOUBLE_EQ(m.disc_gain, std::log(2.0) - 0.5);  // H(0.5) = ln 2 nats, minus the mean loss
  // Positives 0.9 0.8 0.7 0.3 0.2 vs negatives 0.6 0.25 0.15 0.1 0.05: 3 x 5 + 4 + 3 (0.25 shares bin 2
  // with 0.2: a half) -> (15 + 4 + 3 + 0.5) / 25; exact would be 22 / 25.
  EXPECT_DOUBLE_EQ(m.disc_auc, 22.5 / 25.0);
  EXPECT_DOUBLE_EQ(m.disc_auc_error_bound, 0.5 / 25.0);
  EXPECT_EQ(m.auc_method, "histogram");
  const auto j = m.to_json();
  EXPECT_EQ(j.at("batches"), 2);
  EXPECT_EQ(j.at("replaced_tokens"), 5);
  EXPECT_DOUBLE_EQ(j.at("disc_precision").get<double>(), 0.75);

  // Nothing predicted replaced, nothing masked: ratios are 0 (as tf.metrics.accuracy with no weight),
  // the AUC without negatives is undefined and becomes null in JSON.
  EvalSums empty;
  empty.tokens = 3;
  empty.true_negative = 3;
  ScoreHistogram h2(10);
  for (int i = 0; i < 3; ++i) h2.add(0.1, false);
  const auto e = finalize(empty, h2);
  EXPECT_EQ(e.masked_lm_accuracy, 0.0);
  EXPECT_EQ(e.disc_precision, 0.0);
  EXPECT_EQ(e.disc_recall, 0.0);
  EXPECT_EQ(e.disc_accuracy, 1.0);
  EXPECT_TRUE(std::isnan(e.disc_auc));
  EXPECT_TRUE(e.to_json().at("disc_auc").is_null());
}

TEST(EvalMetrics, SumsRoundTripThroughTheirReductionLayout) {
  EvalSums a;
  a.set_counts(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  EXPECT_EQ(a.counts(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(a.true_negative, 10);
  a.mlm_loss_sum = 1.5;
  EvalSums b = a;
  b.add(a);
  EXPECT_EQ(b.counts(), (std::vector<int64_t>{2, 4, 6, 8, 10, 12, 14, 16, 18, 20}));
  EXPECT_EQ(b.mlm_loss_sum, 3.0);
  EXPECT_THROW(a.set_counts(std::vector<int64_t>{1, 2}), std::exception);
}

}  // namespace
