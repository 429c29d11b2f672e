// Held-out evaluation of an ELECTRA pretrainer, as google-research/electra's run_pretraining.py
// evaluates (metric_fn): masked-LM accuracy and loss, accuracy of the generator's sampled tokens, and
// the discriminator's loss, ROC AUC, accuracy, precision and recall (eval_metrics.h).
//
// Data parallel: every rank holds the whole model and takes its slice of each global batch from its
// loader (make_eval_loader: no shuffling, so every evaluation sees the same examples with the same
// masks). Dropout is off; the generator still samples replacements, keyed as in training by
// (seed, step = batch index, global row). Counts and the AUC histogram are summed over ranks with an
// int64 allreduce (exact), the two loss sums with a double allreduce, and the exact AUC is computed on
// rank 0 from every rank's scores and broadcast (eval_metrics.h); every rank returns the same metrics. Results do not
// depend on the number of ranks (beyond the loss sums' summation order and any float differences of the forward pass
// between slice shapes).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data_pipeline/loader/loader.h"
#include "lib/dist/communicator.h"
#include "lib/eval/eval_metrics.h"
#include "lib/model/pretrainer.h"

namespace electra::eval {

// electra-eval's --seed default, and the seed of electra-train's held-out evaluation whatever train.seed: every
// run is evaluated on the same masks, and electra-eval's defaults reproduce the numbers in metrics.jsonl.
inline constexpr uint64_t kEvalSeed = 1;

struct EvalOptions {
  int64_t max_batches = 0;    // global batches to evaluate; 0 or more than an epoch: one epoch of the loader
  uint64_t seed = kEvalSeed;  // keys the generator's sampling (masking is keyed by the loader's seed)
  int auc_bins = 10000;       // histogram bins of the AUC (see eval_metrics.h for the error bound)
  // The AUC is exact (scores gathered to rank 0) up to this many real tokens in the whole evaluation,
  // from histograms beyond (0: always histograms). 2^24 tokens: at most 192 MiB gathered.
  int64_t exact_auc_max_tokens = int64_t{1} << 24;
  bool rewind = true;  // restart the loader at (epoch 0, cursor 0) first: repeated calls see the same data
  // Each rank's slice computes on its longest row (rounded up to a multiple of 8), not on every slot
  // (data.trim_padding, lib/core/batch.h): the same metrics to float rounding.
  bool trim_padding = true;
  // Also disc_auc_unigram: a second pass over the same batches and masks in which every masked position
  // holds a token drawn from the unigram distribution of the evaluated real tokens (special tokens
  // excluded; keyed by seed, batch, global row and prediction, so any rank count draws the same) instead
  // of the generator's sample. Twice the evaluation's time.
  bool unigram_auc = false;
};

// A loader for held-out shards: shuffle off, `global_batch_size` examples per global batch split over
// the ranks of `comm`, the last batch completed by empty rows (pad_last_batch: one epoch reads every
// example), masking keyed by `seed`. `max_predictions` is the model's num_token_predictions;
// `seq_length` must equal the shards' max_seq_length (0: read it from DATA_DIR/manifest.json).
std::unique_ptr<data::Loader> make_eval_loader(const std::string& data_dir, int global_batch_size, int seq_length,
                                               float mask_prob, int max_predictions, uint64_t seed,
                                               const dist::Communicator& comm, const std::string& vocab_path = "");

// The shards' max_seq_length from DATA_DIR/manifest.json; 0 when there is no manifest (NVIDIA shards).
int manifest_seq_length(const std::string& data_dir);

// The batch's ids ([B,S]) with values[i] at the position of each weighted masked prediction i ([B,P]). With
// masked_lm_ids it is the original text; with the generator's samples the discriminator's input (what
// PretrainerOutputs::corrupted_ids holds with copy_outputs).
void ids_with_predictions(const Batch& batch, std::span<const int32_t> values, std::vector<int32_t>& out);

// Evaluates `model` on min(max_batches, loader.batches_per_epoch()) global batches of `loader`.
// Collective over `comm`: every rank calls it with the same options and a loader built with the same
// options for its own rank. Only forward passes: the model's gradients are left as they are, the
// parameters untouched. Fails when the model's vocabulary size differs from the data's.
EvalMetrics evaluate(PretrainerModel<float>& model, data::Loader& loader, const dist::Communicator& comm,
                     const EvalOptions& options = {});

}  // namespace electra::eval
