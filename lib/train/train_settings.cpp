#include "lib/train/train_settings.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "lib/core/error.h"

namespace electra::train {

TrainSettings TrainSettings::from_config(const Config& config, int ranks, int rank) {
  TrainSettings s;
  s.step_timeout = config.get<double>("train.step_timeout");
  s.checkpoint_timeout = config.get<double>("train.checkpoint_timeout");
  for (const auto& [key, timeout] :
       {std::pair{"train.step_timeout", s.step_timeout}, std::pair{"train.checkpoint_timeout", s.checkpoint_timeout}}) {
    // The watchdog counts in nanoseconds (int64: 292 years); a year is more than any step or save needs.
    constexpr double kYear = 365.25 * 24 * 3600;
    if (!(timeout > 0) || !(timeout <= kYear)) {
      fail("config key '", key, "' must be a positive number of seconds up to a year (", static_cast<long long>(kYear),
           "), got ", timeout);
    }
  }
  s.eval_batches = config.get<int64_t>("train.eval_batches");
  if (s.eval_batches < 0) {
    fail("config key 'train.eval_batches' must be >= 0 (0: all of data.eval_dir), got ", s.eval_batches);
  }

  s.total_steps = config.get<int64_t>("train.steps");
  s.global_batch = config.get<int>("train.batch_size");
  s.seq_length = config.get<int>("data.seq_length");
  s.trim_padding = config.get<bool>("data.trim_padding");
  s.seed = config.get<uint64_t>("train.seed");
  s.log_every = config.get<int>("train.log_every");
  s.checkpoint_every = config.get<int>("train.checkpoint_every");
  s.keep_last = config.get<int>("train.keep_last");
  s.keep_every = config.get<int64_t>("train.keep_every");
  s.eval_every = config.get<int>("train.eval_every");
  s.eval_unigram_auc = config.get<bool>("train.eval_unigram_auc");
  s.max_skipped = config.get<int>("train.max_skipped_steps");
  if (s.seq_length < 1) fail("config key 'data.seq_length' must be positive, got ", s.seq_length);
  if (s.log_every < 1) fail("config key 'train.log_every' must be positive, got ", s.log_every);
  if (s.checkpoint_every < 0) {
    fail("config key 'train.checkpoint_every' must be >= 0 (0: only at the end and when stopped), got ",
         s.checkpoint_every);
  }
  if (s.keep_last < 2) fail("config key 'train.keep_last' must be at least 2, got ", s.keep_last);
  if (s.keep_every < 0) fail("config key 'train.keep_every' must be >= 0 (0: none), got ", s.keep_every);
  if (s.eval_every < 0) fail("config key 'train.eval_every' must be >= 0 (0: off), got ", s.eval_every);
  if (s.max_skipped < 0) fail("config key 'train.max_skipped_steps' must be >= 0, got ", s.max_skipped);
  s.profile = config.get<bool>("train.profile");
  s.tensorboard = config.get<bool>("train.tensorboard");
  if (s.total_steps <= 0) fail("config key 'train.steps' must be positive, got ", s.total_steps);
  if (s.global_batch <= 0 || s.global_batch % ranks != 0) {
    fail("config key 'train.batch_size' (", s.global_batch, ") must be a positive multiple of the number of ranks (",
         ranks, ")");
  }
  s.local_rows = s.global_batch / ranks;
  const int micro = config.get<int>("train.micro_batch_size");
  if (micro < 0) fail("config key 'train.micro_batch_size' must be >= 0 (0: the whole per-rank batch), got ", micro);
  s.micro_rows = micro > 0 ? micro : s.local_rows;
  s.attention = parse_attention_impl(config.get<std::string>("train.attention"), "config key 'train.attention'");
  if (s.local_rows % s.micro_rows != 0) {
    fail("config key 'train.micro_batch_size' (", s.micro_rows, ") must divide the per-rank batch (", s.local_rows,
         " = train.batch_size / ranks)");
  }
  s.threads = config.get<int>("train.threads");
  s.parallel_chunks = config.get<int>("train.parallel_chunks");
  s.peak_gflops = config.get<double>("train.peak_gflops");
  if (s.threads < 0 || s.threads > kMaxThreadsPerRank) {
    fail("config key 'train.threads' must be in [0, ", kMaxThreadsPerRank, "] (0: cores / ranks on the node), got ",
         s.threads);
  }
  if (s.parallel_chunks < 0) {
    fail("config key 'train.parallel_chunks' must be >= 0 (0: one per thread), got ", s.parallel_chunks);
  }
  if (!(s.peak_gflops >= 0) || !std::isfinite(s.peak_gflops)) {
    fail("config key 'train.peak_gflops' must be a finite number >= 0 (0: measured), got ", s.peak_gflops);
  }

  s.optim = optimizer_config_from_json(config.at("optim"), s.total_steps);
  s.collapse.min_gain = config.get<double>("train.collapse_warning.min_gain");
  s.collapse.windows = config.get<int>("train.collapse_warning.windows");
  s.collapse.warmup_steps = s.optim.warmup_steps;
  if (!std::isfinite(s.collapse.min_gain)) {
    fail("config key 'train.collapse_warning.min_gain' must be a finite number of nats, got ", s.collapse.min_gain);
  }
  if (s.collapse.windows < 0) {
    fail("config key 'train.collapse_warning.windows' must be >= 0 (0: off), got ", s.collapse.windows);
  }
  s.precision = parse_cuda_precision(config.get<std::string>("train.precision"), "config key 'train.precision' =");
  s.storage = parse_storage_type(config.get<std::string>("train.storage"), "config key 'train.storage'");
  s.memory_fraction = config.get<double>("device.memory_fraction");
  if (!(s.memory_fraction > 0.0 && s.memory_fraction <= 1.0)) {
    fail("config key 'device.memory_fraction' must be in (0, 1], got ", s.memory_fraction);
  }
  s.arena_bytes = config.get<int64_t>("device.arena_bytes");
  if (s.arena_bytes < 0) {
    fail("config key 'device.arena_bytes' must be >= 0 (0: use device.memory_fraction), got ", s.arena_bytes);
  }

  data::LoaderOptions& loader = s.loader;
  loader.data_dir = config.get<std::string>("data.dir");
  loader.vocab_path = config.get<std::string>("data.vocab");
  loader.global_batch_size = s.global_batch;
  loader.seq_length = s.seq_length;
  loader.mask_prob = config.get<float>("data.mask_prob");
  loader.max_predictions = config.get<int>("model.num_token_predictions");
  loader.seed = s.seed;
  loader.rank = rank;
  loader.world_size = ranks;
  loader.prefetch_batches = config.get<int>("data.prefetch_batches");
  loader.shuffle = config.get<bool>("data.shuffle");
  const int64_t cache_mb = config.get<int64_t>("data.cache_mb");
  if (cache_mb < 0 || cache_mb > (int64_t{1} << 40))
    fail("config key 'data.cache_mb' must be in [0, 2^40], got ", cache_mb);
  loader.cache_bytes = static_cast<uint64_t>(cache_mb) << 20;
  loader.verify_checksums = config.get<bool>("data.verify_checksums");
  loader.use_next_sentence_labels = config.get<bool>("data.use_next_sentence_label");
  if (!(loader.mask_prob > 0 && loader.mask_prob < 1))
    fail("config key 'data.mask_prob' must be in (0, 1), got ", loader.mask_prob);
  if (loader.prefetch_batches < 1)
    fail("config key 'data.prefetch_batches' must be at least 1, got ", loader.prefetch_batches);
  s.eval_dir = config.get<std::string>("data.eval_dir");

  // A fault's step is read only where its rank is this one.
  auto fault_step = [&](const char* what) {
    const std::string prefix = std::string("debug.") + what;
    return config.get<int>(prefix + "_rank") == rank ? config.get<int64_t>(prefix + "_step") : int64_t{-1};
  };
  s.faults = InjectedFaults{fault_step("nan"), fault_step("hang"), fault_step("throw"), fault_step("hang_checkpoint")};
  return s;
}

}  // namespace electra::train
