#include "lib/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <optional>
#include <span>
#include <vector>

#include "data_pipeline/loader/shard_dataset.h"
#include "data_pipeline/preprocess/manifest.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/core/philox.h"

namespace electra::eval {

namespace fs = std::filesystem;

int manifest_seq_length(const std::string& data_dir) {
  if (data::check_data_directory(data_dir) == data::ShardFormat::kNvidia) return 0;
  return data::Manifest::load((fs::path(data_dir) / data::kManifestName).string()).max_seq_length;
}

std::unique_ptr<data::Loader> make_eval_loader(const std::string& data_dir, int global_batch_size, int seq_length,
                                               float mask_prob, int max_predictions, uint64_t seed,
                                               const dist::Communicator& comm, const std::string& vocab_path) {
  if (seq_length <= 0) {
    seq_length = manifest_seq_length(data_dir);
    if (seq_length <= 0)
      fail(data_dir,
           ": NVIDIA BERT shards (no manifest.json) do not record their sequence length; give it "
           "(electra-eval --seq-length)");
  }
  data::LoaderOptions o;
  o.data_dir = data_dir;
  o.vocab_path = vocab_path;
  o.global_batch_size = global_batch_size;
  o.seq_length = seq_length;
  o.mask_prob = mask_prob;
  o.max_predictions = max_predictions;
  o.seed = seed;
  o.rank = comm.rank();
  o.world_size = comm.world_size();
  o.shuffle = false;
  o.prefetch_batches = 2;
  o.pad_last_batch = true;  // every held-out example, the tail in a last batch completed by empty rows
  o.cache_bytes = uint64_t{256} << 20;
  return std::make_unique<data::Loader>(o);
}

void ids_with_predictions(const Batch& batch, std::span<const int32_t> values, std::vector<int32_t>& out) {
  const size_t M = static_cast<size_t>(batch.rows) * static_cast<size_t>(batch.num_predictions);
  if (values.size() != M) fail("ids_with_predictions: ", values.size(), " values for ", M, " predictions");
  out.assign(batch.input_word_ids.begin(), batch.input_word_ids.end());
  for (size_t i = 0; i < M; ++i) {
    if (batch.masked_lm_weights[i] == 0.0f) continue;
    const size_t row = i / static_cast<size_t>(batch.num_predictions);
    out[row * static_cast<size_t>(batch.seq_length) + static_cast<size_t>(batch.masked_lm_positions[i])] = values[i];
  }
}

namespace {

// This rank's discriminator scores, kept for the exact AUC while there are at most `limit` (none when
// limit <= 0: the AUC then always comes from histograms); with_tokens also keeps the token id the
// discriminator read at each, for the within-token AUC.
struct ScoreStore {
  ScoreStore(int64_t max_tokens, bool with_tokens)
      : limit(max_tokens), keep_tokens(with_tokens), overflow(max_tokens <= 0) {}
  int64_t limit = 0;
  bool keep_tokens = false;
  bool overflow = false;
  std::vector<float> logits;
  std::vector<uint8_t> labels;
  std::vector<int32_t> tokens;
  void add(int32_t token, float logit, bool replaced) {
    if (overflow) return;
    if (static_cast<int64_t>(logits.size()) >= limit) {
      overflow = true;
      logits = {};
      labels = {};
      tokens = {};
      return;
    }
    logits.push_back(logit);
    labels.push_back(replaced ? 1 : 0);
    if (keep_tokens) tokens.push_back(token);
  }
};

// Adds one forward pass of this rank's slice to the sums and the histogram.
void accumulate(const Batch& batch, const PretrainerOutputs<float>& out, EvalSums& sums, ScoreHistogram& histogram,
                ScoreStore& store, std::vector<int32_t>& disc_tokens) {
  const size_t M = static_cast<size_t>(batch.rows) * batch.num_predictions;
  const size_t N = static_cast<size_t>(batch.rows) * batch.seq_length;
  if (out.sampled_ids.size() != M || out.disc_logits.size() != N || out.disc_label.size() != N) {
    fail("evaluate: the pretrainer returned ", out.sampled_ids.size(), " sampled ids, ", out.disc_logits.size(),
         " discriminator logits and ", out.disc_label.size(), " labels for a batch of ", batch.rows, " x ",
         batch.seq_length, " with ", batch.num_predictions, " predictions");
  }
  for (int row = 0; row < batch.rows; ++row) {  // an empty row (pad_last_batch) has no [CLS]
    if (batch.input_mask[static_cast<size_t>(row) * batch.seq_length] != 0) ++sums.examples;
  }
  for (size_t i = 0; i < M; ++i) {
    const float w = batch.masked_lm_weights[i];
    if (w == 0.0f) continue;
    if (w != 1.0f) fail("evaluate: masked_lm_weights must be 0 or 1, got ", w, " at [", i, "]");
    ++sums.masked;
    if (out.sampled_ids[i] == batch.masked_lm_ids[i]) ++sums.sampled_correct;
  }
  // The token the discriminator read at each position (the corrupted ids are not copied back).
  ids_with_predictions(batch, out.sampled_ids, disc_tokens);
  // With 0/1 weights these sums are integers (counts of correct argmaxes), exactly representable.
  sums.mlm_correct += std::llround(out.losses.mlm_correct_sum);
  sums.mlm_loss_sum += out.losses.mlm_loss_sum;
  sums.disc_loss_sum += out.losses.disc_loss_sum;
  for (size_t i = 0; i < N; ++i) {
    if (batch.input_mask[i] == 0) continue;
    ++sums.tokens;
    const float logit = out.disc_logits[i];
    const bool replaced = out.disc_label[i] == 1;
    const bool predicted = logit > 0.0f;  // sigmoid(logit) > 0.5
    if (predicted) {
      ++(replaced ? sums.true_positive : sums.false_positive);
    } else {
      ++(replaced ? sums.false_negative : sums.true_negative);
    }
    histogram.add(sigmoid(static_cast<double>(logit)), replaced);
    if (std::isfinite(logit)) store.add(disc_tokens[i], logit, replaced);
  }
}

// auc(every rank's runs): this rank's runs gathered to rank 0, merged and scored there, the result broadcast.
template <typename Run>
double gather_auc(const std::vector<Run>& local_runs, double (*auc)(std::vector<Run>), const dist::Communicator& comm) {
  const std::vector<std::string> packed = comm.gather_strings(pack_scores(local_runs));
  double value = 0.0;
  if (comm.is_root()) {
    std::vector<Run> runs;
    for (const std::string& bytes : packed) unpack_scores(bytes, runs);
    value = auc(std::move(runs));
  }
  comm.broadcast(&value, sizeof(value));
  return value;
}

// Exact AUC of all ranks' stored scores.
double gather_exact_auc(const ScoreStore& store, const dist::Communicator& comm) {
  return gather_auc(compress_scores(store.logits, store.labels), &auc_exact, comm);
}

// The AUC of a pass's scores over all ranks: exact while the evaluation's real tokens are within the
// limit (every rank decides alike, from the global count), from the reduced histogram beyond. The histogram
// must already be reduced over ranks; non-finite scores make it NaN either way.
struct ReducedAuc {
  double auc = 0.0;
  double error_bound = 0.0;
  bool exact = false;
};
ReducedAuc reduced_auc(const ScoreHistogram& histogram, const ScoreStore& store, int64_t tokens,
                       const EvalOptions& options, const dist::Communicator& comm) {
  if (options.exact_auc_max_tokens > 0 && tokens <= options.exact_auc_max_tokens && histogram.nonfinite() == 0) {
    return {gather_exact_auc(store, comm), 0.0, true};
  }
  return {auc_from_histogram(histogram), auc_error_bound(histogram), false};
}

// The unigram distribution of the evaluated text: counts of the original tokens (masked positions hold
// their masked_lm_ids) of real tokens, special tokens excluded.
class UnigramTable {
 public:
  UnigramTable(const text::Vocab& vocab, size_t vocab_size)
      : counts_(vocab_size, 0),
        special_{vocab.pad_id(), vocab.unk_id(), vocab.cls_id(), vocab.sep_id(), vocab.mask_id()} {}

  void count(const Batch& batch) {
    ids_with_predictions(batch, batch.masked_lm_ids, original_);
    for (size_t i = 0; i < original_.size(); ++i) {
      if (batch.input_mask[i] != 0 && !is_special(original_[i])) ++counts_.at(static_cast<size_t>(original_[i]));
    }
  }
  std::span<int64_t> counts() { return counts_; }
  // Cumulative counts, after the counts are reduced over ranks. False without a single ordinary token.
  bool finish() {
    cumulative_.resize(counts_.size());
    std::partial_sum(counts_.begin(), counts_.end(), cumulative_.begin());
    return !cumulative_.empty() && cumulative_.back() > 0;
  }
  // A token drawn in proportion to its count, from two 32-bit draws.
  int32_t draw(PhiloxSequence& random) const {
    const uint64_t bits = (uint64_t{random.next_u32()} << 32) | random.next_u32();
    const int64_t target = static_cast<int64_t>(bits % static_cast<uint64_t>(cumulative_.back()));
    return static_cast<int32_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), target) - cumulative_.begin());
  }

 private:
  bool is_special(int32_t id) const { return std::find(special_.begin(), special_.end(), id) != special_.end(); }
  std::vector<int64_t> counts_, cumulative_;
  std::vector<int32_t> special_, original_;
};

// `batch` with every weighted masked position replaced by a unigram draw, weights zeroed (so the generator
// replaces nothing), into `out`; `labels` [B,S]: 1 where a draw differs from the original token.
void unigram_corrupted(const Batch& batch, const UnigramTable& table, uint64_t seed, Batch& out,
                       std::vector<uint8_t>& labels, std::vector<int32_t>& original) {
  out = batch;
  const size_t S = static_cast<size_t>(batch.seq_length), P = static_cast<size_t>(batch.num_predictions);
  labels.assign(static_cast<size_t>(batch.rows) * S, 0);
  ids_with_predictions(batch, batch.masked_lm_ids, original);
  out.input_word_ids = original;
  for (size_t r = 0; r < static_cast<size_t>(batch.rows); ++r) {
    PhiloxSequence random(seed, RandomPurpose::kUnigramReplacement, 0, batch.global_row_offset + r);
    for (size_t p = 0; p < P; ++p) {
      if (batch.masked_lm_weights[r * P + p] == 0.0f) continue;
      const size_t position = static_cast<size_t>(batch.masked_lm_positions[r * P + p]);
      const int32_t drawn = table.draw(random);
      out.input_word_ids[r * S + position] = drawn;
      labels[r * S + position] = drawn != original[r * S + position] ? 1 : 0;
    }
  }
  std::fill(out.masked_lm_weights.begin(), out.masked_lm_weights.end(), 0.0f);
}

}  // namespace

EvalMetrics evaluate(PretrainerModel<float>& model, data::Loader& loader, const dist::Communicator& comm,
                     const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (static_cast<size_t>(model.config().vocab_size) != loader.vocab().size()) {
    fail("evaluate: the model has vocab_size ", model.config().vocab_size, " but the data's vocabulary ",
         loader.vocab().origin(), " has ", loader.vocab().size(), " tokens");
  }
  const int64_t per_epoch = loader.batches_per_epoch();
  const int64_t batches = options.max_batches > 0 ? std::min(options.max_batches, per_epoch) : per_epoch;
  if (comm.allreduce_min(batches) != comm.allreduce_max(batches)) {
    fail("evaluate: ranks disagree on the number of batches (", batches, " on rank ", comm.rank(),
         "): their loaders were built with different options");
  }
  if (options.rewind) loader.restore(data::LoaderState{});
  const data::LoaderState first_batch = loader.state();  // where the unigram pass starts again
  std::optional<UnigramTable> unigram;
  if (options.unigram_auc) unigram.emplace(loader.vocab(), static_cast<size_t>(model.config().vocab_size));

  EvalSums sums;
  ScoreHistogram histogram(options.auc_bins);
  ScoreStore store(options.exact_auc_max_tokens, /*with_tokens=*/true);
  std::vector<int32_t> disc_tokens;
  StepContext context;
  context.seed = options.seed;
  context.training = false;      // dropout off
  context.copy_outputs = false;  // the LM logits are not needed; logits, labels and samples always come back
  Batch batch, trimmed;          // reused: their vectors keep their capacity
  // The loader's next global-batch slice, cut to its longest row with options.trim_padding. Its rows are keyed
  // by their position in the held-out epoch (global_row_offset moved on by the batch's first position, with
  // step 0 below), so the generator's samples and unigram draws of an example do not depend on the batch size.
  auto next_rows = [&]() -> const Batch& {
    const uint64_t cursor = loader.state().cursor;
    batch = loader.next();
    batch.global_row_offset += cursor;
    const int seq = options.trim_padding ? needed_seq_length(batch, 0, batch.rows) : batch.seq_length;
    if (seq == batch.seq_length) return batch;
    copy_rows(batch, 0, batch.rows, seq, trimmed);
    return trimmed;
  };
  context.step = 0;  // sampling keyed by (seed, example position): see next_rows
  for (int64_t k = 0; k < batches; ++k) {
    const Batch& rows = next_rows();
    accumulate(rows, model.forward(rows, context), sums, histogram, store, disc_tokens);
    if (unigram) unigram->count(rows);
  }
  if (comm.is_root()) sums.batches = batches;

  // Exact reduction of the integer counts and both histograms in one int64 allreduce.
  std::vector<int64_t> counts = sums.counts();
  counts.insert(counts.end(), histogram.counts().begin(), histogram.counts().end());
  comm.allreduce_sum(std::span<int64_t>(counts));
  sums.set_counts(std::span<const int64_t>(counts).first(EvalSums::kNumCounts));
  std::copy(counts.begin() + EvalSums::kNumCounts, counts.end(), histogram.counts().begin());
  double losses[2] = {sums.mlm_loss_sum, sums.disc_loss_sum};
  comm.allreduce_sum(std::span<double>(losses, 2));
  sums.mlm_loss_sum = losses[0];
  sums.disc_loss_sum = losses[1];

  EvalMetrics metrics = finalize(sums, histogram);
  if (const ReducedAuc auc = reduced_auc(histogram, store, sums.tokens, options, comm); auc.exact) {
    metrics.disc_auc = auc.auc;
    metrics.disc_auc_error_bound = 0.0;
    metrics.auc_method = "exact";
    metrics.disc_auc_within_token =
        gather_auc(compress_token_scores(store.tokens, store.logits, store.labels), &auc_within_token, comm);
  }
  if (unigram) {
    // The same batches and masks again, each masked position holding a unigram draw (EvalOptions::unigram_auc).
    comm.allreduce_sum(unigram->counts());
    if (!unigram->finish()) {
      if (comm.is_root()) {
        ELECTRA_LOG(warning) << "evaluate: the held-out text has no ordinary tokens (only [UNK] and special "
                                "tokens) to draw unigram replacements from; disc_auc_unigram is null";
      }
      unigram.reset();
      metrics.unigram_auc_computed = true;
    }
  }
  if (unigram) {
    loader.restore(first_batch);
    ScoreHistogram unigram_histogram(options.auc_bins);
    ScoreStore unigram_store(options.exact_auc_max_tokens, /*with_tokens=*/false);
    Batch corrupted;
    std::vector<uint8_t> labels;
    std::vector<int32_t> original;
    for (int64_t k = 0; k < batches; ++k) {
      unigram_corrupted(next_rows(), *unigram, options.seed, corrupted, labels, original);
      const PretrainerOutputs<float>& out = model.forward(corrupted, context);
      for (size_t i = 0; i < labels.size(); ++i) {
        if (corrupted.input_mask[i] == 0) continue;
        const float logit = out.disc_logits[i];
        unigram_histogram.add(sigmoid(static_cast<double>(logit)), labels[i] == 1);
        if (std::isfinite(logit)) unigram_store.add(corrupted.input_word_ids[i], logit, labels[i] == 1);
      }
    }
    comm.allreduce_sum(unigram_histogram.counts());
    metrics.disc_auc_unigram = reduced_auc(unigram_histogram, unigram_store, sums.tokens, options, comm).auc;
    metrics.unigram_auc_computed = true;
  }
  metrics.seconds = comm.allreduce_max(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (histogram.nonfinite() > 0 && comm.is_root()) {
    ELECTRA_LOG(warning) << "evaluate: " << histogram.nonfinite()
                         << " non-finite discriminator logits; disc_auc is NaN";
  }
  return metrics;
}

}  // namespace electra::eval
