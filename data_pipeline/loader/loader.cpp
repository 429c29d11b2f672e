#include "data_pipeline/loader/loader.h"

#include <algorithm>
#include <functional>
#include <optional>

#include "data_pipeline/loader/permutation.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "lib/core/log.h"

namespace electra::data {

// A fixed set of threads that run the parts of one job together with the calling thread.
class Loader::WorkerPool {
 public:
  explicit WorkerPool(int threads) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  // Runs fn(part) for every part in [0, parts); rethrows the first exception of any part.
  void run(int parts, const std::function<void(int)>& fn) {
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      parts_ = parts;
      next_ = 0;
      done_ = 0;
      error_ = nullptr;
      generation = ++generation_;
    }
    cv_.notify_all();
    drain(generation);
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return done_ == parts_; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs parts of job `generation` until none is left (parts are claimed under the lock, so a
  // thread late from an earlier job never touches a newer one).
  void drain(uint64_t generation) {
    for (;;) {
      int part;
      const std::function<void(int)>* fn;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (generation_ != generation || next_ >= parts_) return;
        part = next_++;
        fn = fn_;
      }
      std::exception_ptr error;
      try {
        (*fn)(part);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && !error_) error_ = error;
      if (++done_ == parts_) done_cv_.notify_all();
    }
  }
  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      drain(seen);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int parts_ = 0, done_ = 0, next_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

nlohmann::json LoaderState::to_json() const { return {{"epoch", epoch}, {"cursor", cursor}}; }

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  try {
    return LoaderState{j.at("epoch").get<uint64_t>(), j.at("cursor").get<uint64_t>()};
  } catch (const nlohmann::json::exception& e) {
    fail("loader state ", j.dump(), ": ", e.what());
  }
}

Loader::Loader(LoaderOptions options) : options_(std::move(options)) {
  LoaderOptions& o = options_;
  if (o.global_batch_size <= 0) fail("loader: global_batch_size must be positive, got ", o.global_batch_size);
  if (o.world_size <= 0 || o.rank < 0 || o.rank >= o.world_size)
    fail("loader: rank ", o.rank, " is outside world size ", o.world_size);
  if (o.global_batch_size % o.world_size != 0)
    fail("loader: global batch size ", o.global_batch_size, " does not divide by the world size ", o.world_size);
  if (o.seq_length <= 0) fail("loader: seq_length must be positive, got ", o.seq_length);
  if (!(o.mask_prob > 0.0f && o.mask_prob < 1.0f)) fail("loader: mask_prob must be in (0, 1), got ", o.mask_prob);
  if (o.prefetch_batches < 1) fail("loader: prefetch_batches must be at least 1");
  if (o.reader_threads < 1) fail("loader: reader_threads must be at least 1");

  DatasetOptions d;
  d.data_dir = o.data_dir;
  d.vocab_path = o.vocab_path;
  d.seq_length = o.seq_length;
  d.cache_bytes = o.cache_bytes;
  d.verify_checksums = o.verify_checksums;
  dataset_ = std::make_unique<ShardDataset>(d);
  num_examples_ = dataset_->num_examples();
  if (o.pad_last_batch && o.shuffle) fail("loader: pad_last_batch is for evaluation, with shuffle off");
  if (o.use_next_sentence_labels && !dataset_->has_next_sentence_labels()) {
    fail(o.data_dir,
         ": its shards have no next_sentence_labels (only NVIDIA BERT shards do), but "
         "config key 'data.use_next_sentence_label' is true");
  }
  if (num_examples_ < static_cast<uint64_t>(o.global_batch_size)) {
    if (!o.pad_last_batch || num_examples_ == 0)
      fail(o.data_dir, ": ", num_examples_, " examples are fewer than one global batch of ", o.global_batch_size);
    // Evaluation of less data than a batch: one batch of the data, rounded up to whole rows per rank.
    const auto ranks = static_cast<uint64_t>(o.world_size);
    const int fitted = static_cast<int>((num_examples_ + ranks - 1) / ranks * ranks);
    if (o.rank == 0)
      ELECTRA_LOG(warning) << "loader: " << o.data_dir << " holds " << num_examples_
                           << " examples, fewer than a batch of " << o.global_batch_size << ": one batch of " << fitted;
    o.global_batch_size = fitted;
  }
  const uint64_t G = static_cast<uint64_t>(o.global_batch_size);
  const uint64_t batches = o.pad_last_batch ? (num_examples_ + G - 1) / G : num_examples_ / G;
  batches_per_epoch_ = static_cast<int>(std::min<uint64_t>(batches, static_cast<uint64_t>(INT32_MAX)));
  rows_per_rank_ = o.global_batch_size / o.world_size;

  const text::Vocab& vocab = dataset_->vocab();
  masking_.mask_prob = o.mask_prob;
  masking_.max_predictions =
      o.max_predictions >= 0 ? o.max_predictions : static_cast<int>((o.mask_prob + 0.005f) * o.seq_length);
  masking_.seed = o.seed;
  masking_.mask_id = vocab.mask_id();
  masking_.cls_id = vocab.cls_id();
  masking_.sep_id = vocab.sep_id();
  masking_.pad_id = vocab.pad_id();
  if (masking_.mask_id < 0 || masking_.cls_id < 0 || masking_.sep_id < 0 || masking_.pad_id < 0)
    fail(o.data_dir, ": the vocabulary lacks one of [MASK], [CLS], [SEP], [PAD]");
  if (masking_.max_predictions > o.seq_length)
    fail("loader: max_predictions ", masking_.max_predictions, " exceeds seq_length ", o.seq_length);
#ifndef H5_HAVE_THREADSAFE
  // The prefetch thread calls HDF5; a library built without --enable-threadsafe must not be used from
  // another thread (e.g. checkpoint writing) at the same time.
  ELECTRA_LOG(warning) << "loader: this HDF5 library is not thread-safe; do not call HDF5 from other threads "
                          "while the loader runs";
#endif
  pool_ = std::make_unique<WorkerPool>(o.reader_threads);
  start(state_);
}

Loader::~Loader() { stop(); }

void Loader::start(LoaderState from) {
  stopping_ = false;
  thread_ = std::thread([this, from] { produce(from); });
}

void Loader::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  queue_.clear();
}

void Loader::restore(const LoaderState& state) {
  if (state.cursor > num_examples_)
    fail("loader: state cursor ", state.cursor, " is past the ", num_examples_, " examples of ", options_.data_dir);
  stop();
  state_ = state;
  start(state_);
}

electra::Batch Loader::make_batch(const LoaderState& at) {
  const int B = rows_per_rank_, S = options_.seq_length, P = masking_.max_predictions;
  electra::Batch batch;
  batch.rows = B;
  batch.seq_length = S;
  batch.num_predictions = P;
  batch.input_word_ids.resize(static_cast<size_t>(B) * S);
  batch.input_mask.assign(static_cast<size_t>(B) * S, 0);
  batch.input_type_ids.resize(static_cast<size_t>(B) * S);
  batch.masked_lm_positions.resize(static_cast<size_t>(B) * P);
  batch.masked_lm_ids.resize(static_cast<size_t>(B) * P);
  batch.masked_lm_weights.resize(static_cast<size_t>(B) * P);
  if (options_.use_next_sentence_labels) batch.next_sentence_labels.resize(static_cast<size_t>(B));
  batch.global_row_offset = static_cast<uint64_t>(options_.rank) * static_cast<uint64_t>(B);
  batch.global_batch_rows = options_.global_batch_size;
  batch.example_index.resize(static_cast<size_t>(B));
  const bool packed = dataset_->packed();
  if (packed) batch.position_ids.assign(static_cast<size_t>(B) * S, 0);

  std::optional<FeistelPermutation> permutation;
  if (options_.shuffle) permutation.emplace(num_examples_, options_.seed, at.epoch);
  // Rows are independent (each a pure function of its example and the epoch), so any split over
  // threads gives the same batch.
  const int parts = std::min(B, options_.reader_threads * 4);
  pool_->run(parts, [&](int part) {
    std::vector<int32_t> original(static_cast<size_t>(S));
    for (int i = part * B / parts; i < (part + 1) * B / parts; ++i) {
      const uint64_t position = at.cursor + batch.global_row_offset + static_cast<uint64_t>(i);
      const size_t row = static_cast<size_t>(i) * S;
      const size_t prow = static_cast<size_t>(i) * P;
      if (position >= num_examples_) {  // pad_last_batch: an empty row (input_mask stays 0)
        batch.example_index[static_cast<size_t>(i)] = kNoExample;
        std::fill_n(batch.input_word_ids.begin() + static_cast<std::ptrdiff_t>(row), S, masking_.pad_id);
        std::fill_n(batch.input_type_ids.begin() + static_cast<std::ptrdiff_t>(row), S, 0);
        std::fill_n(batch.masked_lm_positions.begin() + static_cast<std::ptrdiff_t>(prow), P, 0);
        std::fill_n(batch.masked_lm_ids.begin() + static_cast<std::ptrdiff_t>(prow), P, 0);
        std::fill_n(batch.masked_lm_weights.begin() + static_cast<std::ptrdiff_t>(prow), P, 0.0f);
        if (!batch.next_sentence_labels.empty()) batch.next_sentence_labels[static_cast<size_t>(i)] = 0;
        continue;
      }
      const uint64_t example = permutation ? (*permutation)(position) : position;
      batch.example_index[static_cast<size_t>(i)] = example;
      int length = 0;
      int32_t nsp = -1;
      // input_mask is the example id of each token: 1 on every real token of an unpacked row.
      int32_t* mask = batch.input_mask.data() + row;
      dataset_->read(example, original.data(), batch.input_type_ids.data() + row, &length, &nsp, mask);
      if (packed) {  // positions restart at each example's [CLS] (its example id changes there)
        int32_t* positions = batch.position_ids.data() + row;
        for (int s = 0, start = 0; s < length; ++s) {
          if (s > 0 && mask[s] != mask[s - 1]) start = s;
          positions[s] = s - start;
        }
      }
      if (!batch.next_sentence_labels.empty()) batch.next_sentence_labels[static_cast<size_t>(i)] = nsp;
      mask_example(original.data(), length, S, masking_, at.epoch, example, batch.input_word_ids.data() + row,
                   batch.masked_lm_positions.data() + prow, batch.masked_lm_ids.data() + prow,
                   batch.masked_lm_weights.data() + prow);
    }
  });
  return batch;
}

void Loader::produce(LoaderState at) {
  h5::quiet_errors();
  const uint64_t G = static_cast<uint64_t>(options_.global_batch_size);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || static_cast<int>(queue_.size()) < options_.prefetch_batches; });
      if (stopping_) return;
    }
    Item item;
    try {
      // Drop the epoch's tail (a batch never mixes epochs), unless it was padded into a batch of its own.
      if (options_.pad_last_batch ? at.cursor >= num_examples_ : at.cursor + G > num_examples_) {
        ++at.epoch;
        at.cursor = 0;
      }
      item.batch = make_batch(at);
      at.cursor += G;
      item.after = at;
    } catch (...) {
      item.error = std::current_exception();
    }
    const bool failed = item.error != nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_all();
    if (failed) return;
  }
}

electra::Batch Loader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty(); });
  if (queue_.front().error) std::rethrow_exception(queue_.front().error);  // stays queued: later calls fail too
  Item item = std::move(queue_.front());
  queue_.pop_front();
  lock.unlock();
  cv_.notify_all();
  state_ = item.after;
  return std::move(item.batch);
}

electra::Batch slice_rows(const electra::Batch& batch, int begin, int end) {
  if (begin < 0 || end > batch.rows || begin > end)
    fail("slice_rows: rows [", begin, ", ", end, ") outside a batch of ", batch.rows);
  electra::Batch out;
  const size_t S = static_cast<size_t>(batch.seq_length), P = static_cast<size_t>(batch.num_predictions);
  const size_t b = static_cast<size_t>(begin), e = static_cast<size_t>(end);
  out.rows = end - begin;
  out.seq_length = batch.seq_length;
  out.num_predictions = batch.num_predictions;
  auto cut = [&](const auto& v, size_t width) {
    using V = std::decay_t<decltype(v)>;
    return V(v.begin() + static_cast<std::ptrdiff_t>(b * width), v.begin() + static_cast<std::ptrdiff_t>(e * width));
  };
  out.input_word_ids = cut(batch.input_word_ids, S);
  out.input_mask = cut(batch.input_mask, S);
  out.input_type_ids = cut(batch.input_type_ids, S);
  if (!batch.position_ids.empty()) out.position_ids = cut(batch.position_ids, S);
  out.masked_lm_positions = cut(batch.masked_lm_positions, P);
  out.masked_lm_ids = cut(batch.masked_lm_ids, P);
  out.masked_lm_weights = cut(batch.masked_lm_weights, P);
  if (!batch.next_sentence_labels.empty()) out.next_sentence_labels = cut(batch.next_sentence_labels, 1);
  if (!batch.example_index.empty()) out.example_index = cut(batch.example_index, 1);
  out.global_row_offset = batch.global_row_offset + b;
  out.global_batch_rows = batch.global_batch_rows;
  return out;
}

}  // namespace electra::data
