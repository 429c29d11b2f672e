#include "lib/eval/eval_metrics.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

#include "lib/core/error.h"

namespace electra::eval {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Twice the Mann-Whitney numerator is an integer: sum over positives of 2 * (negatives below) +
// (negatives tied). 128-bit, so it is exact for any int64 counts, and the AUC is rounded once.
using Wide = unsigned __int128;

double ratio(Wide numerator, int64_t positives, int64_t negatives) {
  return static_cast<double>(numerator) / (2.0 * static_cast<double>(positives) * static_cast<double>(negatives));
}

double safe_ratio(int64_t numerator, int64_t denominator) {
  return denominator > 0 ? static_cast<double>(numerator) / static_cast<double>(denominator) : 0.0;
}

nlohmann::ordered_json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::ordered_json(value) : nlohmann::ordered_json(nullptr);
}

}  // namespace

ScoreHistogram::ScoreHistogram(int bins) : bins_(bins) {
  if (bins < 1) fail("ScoreHistogram: bins must be at least 1, got ", bins);
  counts_.assign(2 * static_cast<size_t>(bins) + 1, 0);
}

int ScoreHistogram::bin_of(double p) const {
  const double scaled = std::floor(p * bins_);
  if (!(scaled >= 0)) return 0;
  if (scaled >= bins_) return bins_ - 1;
  return static_cast<int>(scaled);
}

void ScoreHistogram::add(double score, bool positive) {
  if (!std::isfinite(score)) {
    ++counts_.back();
    return;
  }
  ++counts_[static_cast<size_t>(bin_of(score)) + (positive ? 0 : static_cast<size_t>(bins_))];
}

void ScoreHistogram::clear() { std::fill(counts_.begin(), counts_.end(), 0); }

int64_t ScoreHistogram::positives() const {
  const auto c = positive_counts();
  return std::accumulate(c.begin(), c.end(), int64_t{0});
}

int64_t ScoreHistogram::negatives() const {
  const auto c = negative_counts();
  return std::accumulate(c.begin(), c.end(), int64_t{0});
}

double auc_from_histogram(const ScoreHistogram& h) {
  const int64_t positives = h.positives(), negatives = h.negatives();
  if (positives == 0 || negatives == 0 || h.nonfinite() > 0) return kNaN;
  const auto pos = h.positive_counts(), neg = h.negative_counts();
  Wide twice = 0;
  Wide below = 0;  // negatives in lower bins
  for (int b = 0; b < h.bins(); ++b) {
    const Wide p = static_cast<Wide>(pos[b]), n = static_cast<Wide>(neg[b]);
    twice += 2 * p * below + p * n;
    below += n;
  }
  return ratio(twice, positives, negatives);
}

double auc_error_bound(const ScoreHistogram& h) {
  const int64_t positives = h.positives(), negatives = h.negatives();
  if (positives == 0 || negatives == 0 || h.nonfinite() > 0) return kNaN;
  const auto pos = h.positive_counts(), neg = h.negative_counts();
  Wide tied = 0;
  for (int b = 0; b < h.bins(); ++b) tied += static_cast<Wide>(pos[b]) * static_cast<Wide>(neg[b]);
  return ratio(tied, positives, negatives);  // 0.5 * tied / (P * N)
}

double auc_exact(std::span<const double> scores, std::span<const int32_t> labels) {
  if (scores.size() != labels.size()) fail("auc_exact: ", scores.size(), " scores but ", labels.size(), " labels");
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), size_t{0});
  for (double s : scores) {
    if (std::isnan(s)) return kNaN;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  Wide twice = 0, below = 0;
  int64_t positives = 0, negatives = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    int64_t p = 0, n = 0;
    for (; j < order.size() && scores[order[j]] == scores[order[i]]; ++j) (labels[order[j]] != 0 ? p : n) += 1;
    twice += 2 * static_cast<Wide>(p) * below + static_cast<Wide>(p) * static_cast<Wide>(n);
    below += static_cast<Wide>(n);
    positives += p;
    negatives += n;
    i = j;
  }
  if (positives == 0 || negatives == 0) return kNaN;
  return ratio(twice, positives, negatives);
}

std::vector<ScoreCount> compress_scores(std::span<const float> scores, std::span<const uint8_t> labels) {
  if (scores.size() != labels.size())
    fail("compress_scores: ", scores.size(), " scores but ", labels.size(), " labels");
  std::vector<std::pair<float, uint8_t>> pairs(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) fail("compress_scores: score ", i, " is NaN");
    pairs[i] = {scores[i], labels[i]};
  }
  std::sort(pairs.begin(), pairs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<ScoreCount> runs;
  for (const auto& [score, label] : pairs) {
    if (runs.empty() || runs.back().score != score) runs.push_back(ScoreCount{score, 0, 0});
    ++(label != 0 ? runs.back().positives : runs.back().negatives);
  }
  return runs;
}

double auc_exact(std::vector<ScoreCount> runs) {
  std::sort(runs.begin(), runs.end(), [](const ScoreCount& a, const ScoreCount& b) { return a.score < b.score; });
  Wide twice = 0, below = 0;
  int64_t positives = 0, negatives = 0;
  for (size_t i = 0; i < runs.size();) {
    Wide p = 0, n = 0;
    size_t j = i;
    for (; j < runs.size() && runs[j].score == runs[i].score; ++j) {
      p += runs[j].positives;
      n += runs[j].negatives;
    }
    twice += 2 * p * below + p * n;
    below += n;
    positives += static_cast<int64_t>(p);
    negatives += static_cast<int64_t>(n);
    i = j;
  }
  if (positives == 0 || negatives == 0) return kNaN;
  return ratio(twice, positives, negatives);
}

namespace {

// Sorted by (token, score), equal pairs merged into one run.
std::vector<TokenScoreCount> merge_token_runs(std::vector<TokenScoreCount> runs) {
  std::sort(runs.begin(), runs.end(), [](const TokenScoreCount& a, const TokenScoreCount& b) {
    return a.token != b.token ? a.token < b.token : a.score < b.score;
  });
  std::vector<TokenScoreCount> merged;
  for (const TokenScoreCount& run : runs) {
    if (merged.empty() || merged.back().token != run.token || merged.back().score != run.score) {
      merged.push_back(TokenScoreCount{run.token, run.score, 0, 0});
    }
    merged.back().positives += run.positives;
    merged.back().negatives += run.negatives;
  }
  return merged;
}

template <typename Run>
std::string pack_runs(const std::vector<Run>& runs) {
  static_assert(std::is_trivially_copyable_v<Run>);
  std::string bytes(runs.size() * sizeof(Run), '\0');
  if (!runs.empty()) std::memcpy(bytes.data(), runs.data(), bytes.size());
  return bytes;
}

template <typename Run>
void unpack_runs(const std::string& bytes, std::vector<Run>& append_to) {
  if (bytes.size() % sizeof(Run) != 0) fail("unpack_scores: ", bytes.size(), " bytes is not a whole number of runs");
  const size_t old = append_to.size();
  append_to.resize(old + bytes.size() / sizeof(Run));
  if (!bytes.empty()) std::memcpy(append_to.data() + old, bytes.data(), bytes.size());
}

}  // namespace

std::string pack_scores(const std::vector<ScoreCount>& runs) {
  static_assert(sizeof(ScoreCount) == 12);
  return pack_runs(runs);
}
void unpack_scores(const std::string& bytes, std::vector<ScoreCount>& append_to) { unpack_runs(bytes, append_to); }

std::string pack_scores(const std::vector<TokenScoreCount>& runs) {
  static_assert(sizeof(TokenScoreCount) == 16);
  return pack_runs(runs);
}
void unpack_scores(const std::string& bytes, std::vector<TokenScoreCount>& append_to) { unpack_runs(bytes, append_to); }

std::vector<TokenScoreCount> compress_token_scores(std::span<const int32_t> tokens, std::span<const float> scores,
                                                   std::span<const uint8_t> labels) {
  if (tokens.size() != scores.size() || scores.size() != labels.size()) {
    fail("compress_token_scores: ", tokens.size(), " tokens, ", scores.size(), " scores and ", labels.size(),
         " labels");
  }
  std::vector<TokenScoreCount> runs(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) fail("compress_token_scores: score ", i, " is NaN");
    runs[i] = TokenScoreCount{tokens[i], scores[i], labels[i] != 0 ? 1u : 0u, labels[i] != 0 ? 0u : 1u};
  }
  return merge_token_runs(std::move(runs));
}

double auc_within_token(std::vector<TokenScoreCount> runs) {
  runs = merge_token_runs(std::move(runs));
  // Per token id, the AUC sums of auc_exact over its runs (sorted by score), pooled over the ids.
  Wide twice = 0, pairs = 0;
  for (size_t i = 0; i < runs.size();) {
    Wide below = 0, positives = 0, negatives = 0;
    size_t j = i;
    for (; j < runs.size() && runs[j].token == runs[i].token; ++j) {
      twice += 2 * static_cast<Wide>(runs[j].positives) * below +
               static_cast<Wide>(runs[j].positives) * static_cast<Wide>(runs[j].negatives);
      below += runs[j].negatives;
      positives += runs[j].positives;
      negatives += runs[j].negatives;
    }
    pairs += positives * negatives;
    i = j;
  }
  if (pairs == 0) return kNaN;
  return static_cast<double>(twice) / (2.0 * static_cast<double>(pairs));
}

std::vector<int64_t> EvalSums::counts() const {
  return {batches, examples,      masked,         mlm_correct,    sampled_correct,
          tokens,  true_positive, false_positive, false_negative, true_negative};
}

void EvalSums::set_counts(std::span<const int64_t> c) {
  if (c.size() != static_cast<size_t>(kNumCounts)) fail("EvalSums::set_counts: ", c.size(), " values");
  batches = c[0];
  examples = c[1];
  masked = c[2];
  mlm_correct = c[3];
  sampled_correct = c[4];
  tokens = c[5];
  true_positive = c[6];
  false_positive = c[7];
  false_negative = c[8];
  true_negative = c[9];
}

void EvalSums::add(const EvalSums& o) {
  std::vector<int64_t> c = counts();
  const std::vector<int64_t> d = o.counts();
  for (size_t i = 0; i < c.size(); ++i) c[i] += d[i];
  set_counts(c);
  mlm_loss_sum += o.mlm_loss_sum;
  disc_loss_sum += o.disc_loss_sum;
}

EvalMetrics finalize(const EvalSums& s, const ScoreHistogram& histogram) {
  EvalMetrics m;
  m.sums = s;
  m.auc_bins = histogram.bins();
  m.masked_lm_accuracy = safe_ratio(s.mlm_correct, s.masked);
  m.masked_lm_loss = s.masked > 0 ? s.mlm_loss_sum / static_cast<double>(s.masked) : 0.0;
  m.sampled_masked_lm_accuracy = safe_ratio(s.sampled_correct, s.masked);
  m.disc_loss = s.tokens > 0 ? s.disc_loss_sum / static_cast<double>(s.tokens) : 0.0;
  m.disc_auc = auc_from_histogram(histogram);
  m.disc_auc_error_bound = auc_error_bound(histogram);
  m.auc_method = "histogram";
  m.disc_accuracy = safe_ratio(s.true_positive + s.true_negative, s.tokens);
  m.disc_precision = safe_ratio(s.true_positive, s.true_positive + s.false_positive);
  m.disc_recall = safe_ratio(s.true_positive, s.true_positive + s.false_negative);
  m.replaced_fraction = safe_ratio(s.true_positive + s.false_negative, s.tokens);
  m.disc_gain = s.tokens > 0 ? discriminator_gain(m.disc_loss, m.replaced_fraction) : 0.0;
  return m;
}

std::vector<std::pair<std::string, double>> EvalMetrics::scalars(const std::string& prefix) const {
  std::vector<std::pair<std::string, double>> values = {
      {prefix + "masked_lm_accuracy", masked_lm_accuracy},
      {prefix + "masked_lm_loss", masked_lm_loss},
      {prefix + "sampled_masked_lm_accuracy", sampled_masked_lm_accuracy},
      {prefix + "disc_loss", disc_loss},
      {prefix + "disc_gain", disc_gain},
      {prefix + "disc_auc", disc_auc},
      {prefix + "disc_accuracy", disc_accuracy},
      {prefix + "disc_precision", disc_precision},
      {prefix + "disc_recall", disc_recall},
      {prefix + "replaced_fraction", replaced_fraction}};
  if (unigram_auc_computed) values.emplace_back(prefix + "disc_auc_unigram", disc_auc_unigram);
  if (auc_method == "exact") values.emplace_back(prefix + "disc_auc_within_token", disc_auc_within_token);
  return values;
}

nlohmann::ordered_json EvalMetrics::to_json() const {
  nlohmann::ordered_json j;
  for (const auto& [name, value] : scalars()) j[name] = number_or_null(value);
  j["disc_auc_error_bound"] = number_or_null(disc_auc_error_bound);
  j["disc_auc_method"] = auc_method;
  j["batches"] = sums.batches;
  j["examples"] = sums.examples;
  j["masked_positions"] = sums.masked;
  j["tokens"] = sums.tokens;
  j["replaced_tokens"] = sums.true_positive + sums.false_negative;
  j["auc_bins"] = auc_bins;
  j["seconds"] = seconds;
  j["tokens_per_s"] = seconds > 0 ? static_cast<double>(sums.tokens) / seconds : 0.0;  // real (non-pad) tokens
  return j;
}

double binary_entropy(double p) {
  auto term = [](double q) { return q > 0.0 ? -q * std::log(q) : 0.0; };
  return term(p) + term(1.0 - p);
}

double discriminator_gain(double disc_loss, double replaced_fraction) {
  return binary_entropy(replaced_fraction) - disc_loss;
}

double sigmoid(double logit) { return 1.0 / (1.0 + std::exp(-logit)); }

}  // namespace electra::eval
