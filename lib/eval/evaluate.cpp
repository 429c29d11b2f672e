#include "lib/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <vector>

#include "data_pipeline/preprocess/manifest.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::eval {

namespace fs = std::filesystem;

int manifest_seq_length(const std::string& data_dir) {
  const fs::path manifest = fs::path(data_dir) / data::kManifestName;
  if (!fs::exists(manifest)) return 0;
  return data::Manifest::load(manifest.string()).max_seq_length;
}

std::unique_ptr<data::Loader> make_eval_loader(const std::string& data_dir, int global_batch_size, int seq_length,
                                               float mask_prob, int max_predictions, uint64_t seed,
                                               const dist::Communicator& comm, const std::string& vocab_path) {
  if (seq_length <= 0) {
    seq_length = manifest_seq_length(data_dir);
    if (seq_length <= 0) fail(data_dir, ": no manifest.json to take the sequence length from; give it explicitly");
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
  o.cache_bytes = uint64_t{256} << 20;
  return std::make_unique<data::Loader>(o);
}

namespace {

// Adds one forward pass of this rank's slice to the sums and the histogram.
// This rank's discriminator scores, kept for the exact AUC while there are at most `limit`.
struct ScoreStore {
  int64_t limit = 0;
  bool overflow = false;
  std::vector<float> logits;
  std::vector<uint8_t> labels;
  void add(float logit, bool replaced) {
    if (overflow) return;
    if (static_cast<int64_t>(logits.size()) >= limit) {
      overflow = true;
      logits = {};
      labels = {};
      return;
    }
    logits.push_back(logit);
    labels.push_back(replaced ? 1 : 0);
  }
};

void accumulate(const Batch& batch, const PretrainerOutputs<float>& out, EvalSums& sums, ScoreHistogram& histogram,
                ScoreStore& store) {
  const size_t M = static_cast<size_t>(batch.rows) * batch.num_predictions;
  const size_t N = static_cast<size_t>(batch.rows) * batch.seq_length;
  if (out.sampled_ids.size() != M || out.disc_logits.size() != N || out.disc_label.size() != N) {
    fail("evaluate: the pretrainer returned ", out.sampled_ids.size(), " sampled ids, ", out.disc_logits.size(),
         " discriminator logits and ", out.disc_label.size(), " labels for a batch of ", batch.rows, " x ",
         batch.seq_length, " with ", batch.num_predictions, " predictions");
  }
  sums.examples += batch.rows;
  for (size_t i = 0; i < M; ++i) {
    const float w = batch.masked_lm_weights[i];
    if (w == 0.0f) continue;
    if (w != 1.0f) fail("evaluate: masked_lm_weights must be 0 or 1, got ", w, " at [", i, "]");
    ++sums.masked;
    if (out.sampled_ids[i] == batch.masked_lm_ids[i]) ++sums.sampled_correct;
  }
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
    if (std::isfinite(logit)) store.add(logit, replaced);
  }
}

// Exact AUC of all ranks' stored scores: runs gathered to rank 0, merged there, the result broadcast.
double gather_exact_auc(const ScoreStore& store, const dist::Communicator& comm) {
  const std::vector<std::string> packed = comm.gather_strings(pack_scores(compress_scores(store.logits, store.labels)));
  double auc = 0.0;
  if (comm.is_root()) {
    std::vector<ScoreCount> runs;
    for (const std::string& bytes : packed) unpack_scores(bytes, runs);
    auc = auc_exact(std::move(runs));
  }
  comm.broadcast(&auc, sizeof(auc));
  return auc;
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

  EvalSums sums;
  ScoreHistogram histogram(options.auc_bins);
  ScoreStore store;
  store.limit = options.exact_auc_max_tokens;
  store.overflow = options.exact_auc_max_tokens <= 0;
  StepContext context;
  context.seed = options.seed;
  context.training = false;      // dropout off
  context.copy_outputs = false;  // the LM logits are not needed; logits, labels and samples always come back
  Batch trimmed;                 // reused: its vectors keep their capacity
  for (int64_t k = 0; k < batches; ++k) {
    const Batch batch = loader.next();
    context.step = static_cast<uint64_t>(k);  // sampling keyed by (seed, batch, global row), as in training
    const int seq = options.trim_padding ? needed_seq_length(batch, 0, batch.rows) : batch.seq_length;
    if (seq < batch.seq_length) copy_rows(batch, 0, batch.rows, seq, trimmed);
    const Batch& rows = seq < batch.seq_length ? trimmed : batch;
    accumulate(rows, model.forward(rows, context), sums, histogram, store);
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
  // Every rank decides alike: the global token count is the same everywhere, and when it is within the
  // limit no rank's store overflowed. Non-finite scores make the AUC NaN either way.
  if (options.exact_auc_max_tokens > 0 && sums.tokens <= options.exact_auc_max_tokens && histogram.nonfinite() == 0) {
    metrics.disc_auc = gather_exact_auc(store, comm);
    metrics.disc_auc_error_bound = 0.0;
    metrics.auc_method = "exact";
  }
  metrics.seconds = comm.allreduce_max(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (histogram.nonfinite() > 0 && comm.is_root()) {
    ELECTRA_LOG(warning) << "evaluate: " << histogram.nonfinite()
                         << " non-finite discriminator logits; disc_auc is NaN";
  }
  return metrics;
}

}  // namespace electra::eval
