// The training data loader: global sampling, dynamic masking and background prefetch.
//
// Sampling. Epoch e visits every example once in the order of a seeded bijective permutation of
// [0, N) (FeistelPermutation keyed by (seed, epoch); identity when shuffle is off). Global batch k of
// the epoch is permutation positions [k*G, (k+1)*G); rank r of W takes positions
// [k*G + r*G/W, k*G + (r+1)*G/W). A batch never mixes epochs: the last N mod G examples of each
// epoch's order are dropped (they differ from epoch to epoch, so nothing is dropped for good).
//
// State. LoaderState is global (epoch, examples consumed in the epoch), so a run can be resumed with
// the same or another world size as long as the global batch size G is kept: after restore(state),
// next() returns exactly the batches an uninterrupted run would have returned.
//
// Masking. Each example is masked on the fly (masking.h) with Philox(seed, kMasking, epoch, example
// index), independent of rank count and batch split.
//
// Packed data (electra-preprocess --pack true). An "example" above is then a shard row holding several
// examples: it is sampled and masked as one (masking skips every [CLS]/[SEP] in it, and the number of
// predictions follows the row's real tokens, at most max_predictions). Batch::input_mask holds the row's
// example_ids (k on the k-th example's tokens, 0 on padding) and Batch::position_ids each token's position
// within its example; unpacked data gives input_mask 0/1 and no position_ids, as before.
//
// Prefetch. A background thread reads and masks the next `prefetch_batches` batches into a bounded
// queue (the rows of a batch spread over `reader_threads` threads); next() only waits when the thread
// is behind. An exception in the thread is rethrown by next() (and by every later call).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "data_pipeline/loader/masking.h"
#include "data_pipeline/loader/shard_dataset.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/core/batch.h"

namespace electra::data {

struct LoaderOptions {
  std::string data_dir;
  std::string vocab_path;  // optional: checked against the manifest hash; required for NVIDIA shards
  int global_batch_size = 0;
  int seq_length = 0;
  float mask_prob = 0.15f;
  int max_predictions = -1;  // -1: int((mask_prob + 0.005) * seq_length), as google-research/electra
  uint64_t seed = 1;
  int rank = 0;
  int world_size = 1;
  int prefetch_batches = 4;
  bool shuffle = true;
  uint64_t cache_bytes = uint64_t{1} << 30;  // decompressed-chunk cache of the shard reader
  int reader_threads = 2;                    // threads that read, inflate and mask one batch together
  bool verify_checksums = false;             // CRC-32 of every shard against the manifest at start-up
  // Batch::next_sentence_labels from the shards' (NVIDIA BERT shards carry them): the model then adds the
  // next-sentence loss, as TF Model Garden's ELECTRA task does with use_next_sentence_label. Shards without
  // them are refused.
  bool use_next_sentence_labels = false;
  // Evaluation (shuffle off): the epoch's tail, instead of being dropped, is one more batch completed by
  // empty rows (no tokens: input_mask 0, no predictions), so one epoch reads every example once. Data smaller
  // than a global batch is one batch of its size (rounded up to whole rows per rank): global_batch_size().
  bool pad_last_batch = false;
};

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // global examples consumed in the epoch

  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);
  bool operator==(const LoaderState&) const = default;
};

class Loader {
 public:
  explicit Loader(LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // This rank's slice of the next global batch.
  electra::Batch next();
  // State after the last batch returned by next() (the start state before the first call).
  LoaderState state() const { return state_; }
  // Continues from `state` (discarding prefetched batches).
  void restore(const LoaderState& state);

  uint64_t num_examples() const { return num_examples_; }
  int batches_per_epoch() const { return batches_per_epoch_; }
  int max_predictions() const { return masking_.max_predictions; }
  // Rows hold several examples: batches carry example ids in input_mask and position_ids.
  bool packed() const { return dataset_->packed(); }
  const electra::text::Vocab& vocab() const { return dataset_->vocab(); }
  const ShardDataset& dataset() const { return *dataset_; }
  int global_batch_size() const { return options_.global_batch_size; }
  void check_every_row() { dataset_->check_every_row(); }  // ShardDataset::check_every_row

 private:
  struct Item {
    electra::Batch batch;
    LoaderState after;
    std::exception_ptr error;
  };
  void start(LoaderState from);
  void stop();
  void produce(LoaderState from);
  electra::Batch make_batch(const LoaderState& at);

  class WorkerPool;

  LoaderOptions options_;
  std::unique_ptr<ShardDataset> dataset_;
  std::unique_ptr<WorkerPool> pool_;
  MaskingOptions masking_;
  uint64_t num_examples_ = 0;
  int batches_per_epoch_ = 0;
  int rows_per_rank_ = 0;
  LoaderState state_;

  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
};

// Rows [begin, end) of a batch (e.g. one micro-batch): copies; global_row_offset moves by `begin`.
electra::Batch slice_rows(const electra::Batch& batch, int begin, int end);

}  // namespace electra::data
