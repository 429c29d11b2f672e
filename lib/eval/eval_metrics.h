// The held-out metrics of google-research/electra's evaluation (run_pretraining.py, metric_fn), from
// sums that add exactly over batches and ranks.
//
// Everything except the two loss sums is an integer count (int64), so reducing over ranks is exact:
// 1, 2 or 3 ranks give bitwise the same counts for the same global batches. The loss sums are doubles
// (reduced with a double allreduce; the order of additions depends on the rank count, so they agree to
// ~1e-15 relative).
//
// ROC AUC (disc_auc) of the discriminator's scores sigmoid(disc_logit) against disc_label (1 = replaced)
// over real tokens (input_mask != 0), ties counted 1/2 (the Mann-Whitney statistic), two ways:
//  - exact: every rank compresses its float logits into sorted (score, positives, negatives) runs
//    (compress_scores), rank 0 gathers and merges them and computes the AUC with 128-bit integer
//    counts (auc_exact), so the result is the same bitwise for any number of ranks. Sigmoid is strictly
//    increasing, so ranking the logits is ranking sigmoid(logit) computed exactly. Used while the
//    evaluation has at most EvalOptions::exact_auc_max_tokens real tokens (12 bytes per distinct score
//    per rank travel to rank 0).
//  - histogram (beyond that): sigmoid(logit) counted in `bins` equal-width bins over [0, 1]
//    (bin floor(p * bins)) per class, reduced with an int64 allreduce. Pairs in different bins are
//    ordered exactly, pairs in the same bin count 1/2, hence
//        |auc_histogram - auc_exact| <= 0.5 * sum_b pos_b * neg_b / (P * N)
//    which auc_error_bound() returns (reported as disc_auc_error_bound; 0 for the exact method).
// google-research/electra uses tf.metrics.auc (200 thresholds, trapezoids) over all positions with
// padding counted as negatives of score 0; this counts real tokens only.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace electra::eval {

// Per-class histograms of scores in [0, 1].
class ScoreHistogram {
 public:
  explicit ScoreHistogram(int bins = 10000);

  int bins() const { return bins_; }
  // Bin of a score: floor(p * bins) clamped to [0, bins - 1]; p must be finite (scores outside [0, 1]
  // land in the end bins).
  int bin_of(double p) const;
  // Counts a score with its label (true = positive, i.e. a replaced token). A non-finite score is
  // counted in nonfinite() and not binned.
  void add(double score, bool positive);
  void clear();

  int64_t positives() const;
  int64_t negatives() const;
  int64_t nonfinite() const { return counts_.back(); }

  // Layout for reductions: [positives per bin (bins), negatives per bin (bins), non-finite count].
  std::span<int64_t> counts() { return counts_; }
  std::span<const int64_t> counts() const { return counts_; }
  std::span<const int64_t> positive_counts() const { return std::span<const int64_t>(counts_).subspan(0, bins_); }
  std::span<const int64_t> negative_counts() const {
    return std::span<const int64_t>(counts_).subspan(static_cast<size_t>(bins_), static_cast<size_t>(bins_));
  }

 private:
  int bins_;
  std::vector<int64_t> counts_;
};

// ROC AUC from the histogram (ties within a bin count 1/2); NaN without positives, without negatives
// or with non-finite scores.
double auc_from_histogram(const ScoreHistogram& histogram);
// The bound on |auc_from_histogram - exact AUC| above (NaN where the AUC is).
double auc_error_bound(const ScoreHistogram& histogram);
// Exact ROC AUC of (score, label) pairs by sorting: P(s+ > s-) + 0.5 * P(s+ == s-). NaN without both
// classes or with a NaN score. O(n log n).
double auc_exact(std::span<const double> scores, std::span<const int32_t> labels);

// One distinct score and how many positives / negatives have it (12 bytes, trivially copyable: the
// unit the exact AUC gathers).
struct ScoreCount {
  float score = 0.0f;
  uint32_t positives = 0;
  uint32_t negatives = 0;
};
// Sorted by score, equal scores merged. Scores must not be NaN.
std::vector<ScoreCount> compress_scores(std::span<const float> scores, std::span<const uint8_t> labels);
// Exact AUC of the union of any lists of runs (e.g. every rank's, concatenated, in any order).
double auc_exact(std::vector<ScoreCount> runs);
// Raw bytes of runs (for Communicator::gather_strings) and back.
std::string pack_scores(const std::vector<ScoreCount>& runs);
void unpack_scores(const std::string& bytes, std::vector<ScoreCount>& append_to);

// One distinct (token id, score) and how many replaced / original tokens have it (16 bytes, trivially
// copyable: the unit the within-token AUC gathers).
struct TokenScoreCount {
  int32_t token = 0;
  float score = 0.0f;
  uint32_t positives = 0;
  uint32_t negatives = 0;
};
// Sorted by (token, score), equal pairs merged. Scores must not be NaN.
std::vector<TokenScoreCount> compress_token_scores(std::span<const int32_t> tokens, std::span<const float> scores,
                                                   std::span<const uint8_t> labels);
// The AUC within token ids: over all pairs (replaced, original) of tokens with the same id, pooled over the
// ids, P(s+ > s-) + 0.5 * P(s+ == s-). Scores that depend on the token id alone give exactly 0.5, whatever
// their disc_auc: it measures what the discriminator reads from the context. NaN when no id occurs both
// replaced and original. Takes the union of any lists of runs (e.g. every rank's, in any order).
double auc_within_token(std::vector<TokenScoreCount> runs);
std::string pack_scores(const std::vector<TokenScoreCount>& runs);
void unpack_scores(const std::string& bytes, std::vector<TokenScoreCount>& append_to);

// Integer counts and loss sums over evaluated batches; add() them, reduce them over ranks, then
// finalize(). The counts are over real tokens (input_mask != 0) and real predictions (weight 1).
struct EvalSums {
  int64_t batches = 0;          // global batches
  int64_t examples = 0;         // rows
  int64_t masked = 0;           // masked positions with weight 1
  int64_t mlm_correct = 0;      // argmax of the generator's logits == original token
  int64_t sampled_correct = 0;  // the generator's sample == original token
  int64_t tokens = 0;           // real tokens seen by the discriminator
  int64_t true_positive = 0;    // predicted replaced (logit > 0), replaced
  int64_t false_positive = 0;   // predicted replaced, original
  int64_t false_negative = 0;   // predicted original, replaced
  int64_t true_negative = 0;    // predicted original, original
  double mlm_loss_sum = 0.0;    // sum over masked positions of the generator's cross-entropy
  double disc_loss_sum = 0.0;   // sum over real tokens of the discriminator's sigmoid cross-entropy

  static constexpr int kNumCounts = 10;
  // The integer fields in declaration order (batches .. true_negative), for a reduction.
  std::vector<int64_t> counts() const;
  void set_counts(std::span<const int64_t> counts);
  void add(const EvalSums& other);
};

struct EvalMetrics {
  // google-research/electra's metric_fn keys.
  double masked_lm_accuracy = 0.0;          // mlm_correct / masked
  double masked_lm_loss = 0.0;              // mlm_loss_sum / masked (mean over masked positions)
  double sampled_masked_lm_accuracy = 0.0;  // sampled_correct / masked
  double disc_loss = 0.0;                   // disc_loss_sum / tokens (mean over real tokens, as training's)
  double disc_gain = 0.0;                   // discriminator_gain(disc_loss, replaced_fraction): > 0 = learned
  double disc_auc = 0.0;                    // see above
  double disc_accuracy = 0.0;               // (TP + TN) / tokens
  double disc_precision = 0.0;              // TP / (TP + FP); 0 when nothing is predicted replaced
  double disc_recall = 0.0;                 // TP / (TP + FN); 0 when nothing was replaced
  // ROC AUC against replacements drawn from the held-out tokens' unigram distribution instead of the
  // generator's samples (EvalOptions::unigram_auc; left out of scalars() and to_json() when not computed;
  // NaN, JSON null, when computed without both classes or without ordinary tokens to draw). It does not
  // fall as the generator learns, so it tracks the discriminator alone.
  double disc_auc_unigram = std::numeric_limits<double>::quiet_NaN();
  bool unigram_auc_computed = false;
  // auc_within_token of the discriminator's scores against the generator's samples (computed with the
  // exact AUC only, and left out of scalars() otherwise; NaN, JSON null, without a token id seen both
  // replaced and not). 0.5 for a discriminator that learned only which tokens the generator tends to put in,
  // however high its disc_auc.
  double disc_auc_within_token = std::numeric_limits<double>::quiet_NaN();
  // Context.
  double disc_auc_error_bound = 0.0;     // |disc_auc - exact AUC| <= this (0 for the exact method)
  std::string auc_method = "histogram";  // "exact" | "histogram"
  double replaced_fraction = 0.0;        // (TP + FN) / tokens
  int auc_bins = 0;
  EvalSums sums;
  double seconds = 0.0;  // wall time of the evaluation (rank 0's view)

  // One flat object: the metrics above (non-finite values as null), then disc_auc_error_bound,
  // disc_auc_method, batches, examples, masked_positions, tokens, replaced_tokens, auc_bins, seconds, tokens_per_s
  // (real tokens: tokens / seconds).
  nlohmann::ordered_json to_json() const;
  // (prefix + name, value) of the metrics and replaced_fraction, for logs and TensorBoard.
  std::vector<std::pair<std::string, double>> scalars(const std::string& prefix = "") const;
};

// Metrics from reduced sums and histogram (the AUC by the histogram method; set disc_auc, auc_method and
// disc_auc_error_bound afterwards for the exact one). Ratios with a zero denominator are 0, except the
// AUC (NaN).
EvalMetrics finalize(const EvalSums& sums, const ScoreHistogram& histogram);

// The binary entropy -p ln p - (1 - p) ln(1 - p) in nats (0 at p = 0 and p = 1).
double binary_entropy(double p);
// The discriminator's gain over its prior, in nats per token: binary_entropy(replaced_fraction) - disc_loss.
// A discriminator that learned only the base rate (every token replaced with probability replaced_fraction,
// whatever the input) has a loss equal to that entropy, so a gain of 0, while its accuracy equals
// 1 - replaced_fraction and looks high. Separating replaced tokens from originals is what makes it
// positive; it is the measure of a collapsed or dead discriminator (electra-train's training line, its
// collapse warning, electra-eval).
double discriminator_gain(double disc_loss, double replaced_fraction);

// 1 / (1 + exp(-x)) in double (the score of a discriminator logit).
double sigmoid(double logit);

}  // namespace electra::eval
