// The train.*, data.*, optim.*, device.* and debug.* settings electra-train runs with, read and checked from
// the resolved configuration in one pure function (no I/O, no MPI): a bad value fails naming its key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "data_pipeline/loader/loader.h"
#include "lib/backend/backend.h"
#include "lib/core/config.h"
#include "lib/model/attention_impl.h"
#include "lib/optim/adamw.h"
#include "lib/train/collapse_check.h"

namespace electra::train {

// The most OpenMP threads a rank may ask for (train.threads, electra-bench --threads): tens of thousands
// fail to start or crash libgomp.
inline constexpr int kMaxThreadsPerRank = 4096;

// debug.*: the faults this rank injects for the distributed tests, each as the step it happens at (-1: none).
struct InjectedFaults {
  int64_t nan_step = -1;              // debug.nan_step: a non-finite loss gradient
  int64_t hang_step = -1;             // debug.hang_step: no progress after backward (the watchdog's case)
  int64_t throw_step = -1;            // debug.throw_step: an exception after backward
  int64_t hang_checkpoint_step = -1;  // debug.hang_checkpoint_step: no progress in that step's checkpoint
};

struct TrainSettings {
  int64_t total_steps = 0;        // train.steps (> 0)
  int global_batch = 0;           // train.batch_size: a positive multiple of the ranks
  int local_rows = 0;             // global_batch / ranks
  int micro_rows = 0;             // train.micro_batch_size (0: local_rows); divides local_rows
  int seq_length = 0;             // data.seq_length
  bool trim_padding = true;       // data.trim_padding
  uint64_t seed = 1;              // train.seed
  int log_every = 1;              // train.log_every (at least 1)
  int checkpoint_every = 0;       // train.checkpoint_every (0: only at the end and on stops)
  int keep_last = 3;              // train.keep_last
  int64_t keep_every = 0;         // train.keep_every
  int eval_every = 0;             // train.eval_every (0: off)
  int64_t eval_batches = 0;       // train.eval_batches (>= 0; 0: all of data.eval_dir)
  bool eval_unigram_auc = false;  // train.eval_unigram_auc
  int max_skipped = 10;           // train.max_skipped_steps
  double step_timeout = 0;        // train.step_timeout, seconds (> 0, at most a year)
  double checkpoint_timeout = 0;  // train.checkpoint_timeout, seconds (> 0, at most a year)
  int threads = 0;  // train.threads (0: cores / ranks on the node, chosen at set-up; at most kMaxThreadsPerRank)
  int parallel_chunks = 0;                         // train.parallel_chunks (0: = threads)
  double peak_gflops = 0;                          // train.peak_gflops (0: measured)
  bool profile = false;                            // train.profile
  bool tensorboard = true;                         // train.tensorboard
  AttentionImpl attention = AttentionImpl::kAuto;  // train.attention
  CudaPrecision precision = CudaPrecision::kFp32;  // train.precision (checked against the device at set-up)
  std::optional<StorageType> storage;              // train.storage; nullopt = auto (resolved at set-up)
  CollapseCheckOptions collapse;                   // train.collapse_warning.*, warm-up from optim.warmup_steps
  OptimizerConfig optim;                           // optim.* (total_steps = train.steps)
  double memory_fraction = 0.9;                    // device.memory_fraction, in (0, 1]
  int64_t arena_bytes = 0;                         // device.arena_bytes (>= 0)
  // The training data for this rank: data.dir (may be empty: the trainer says how to pass it), data.vocab,
  // data.mask_prob, model.num_token_predictions (max_predictions), data.prefetch_batches, data.shuffle,
  // data.cache_mb, data.verify_checksums, with the batch, sequence length, seed, rank and rank count above.
  data::LoaderOptions loader;
  std::string eval_dir;   // data.eval_dir ("": no held-out evaluation)
  InjectedFaults faults;  // debug.*, for this rank

  // Reads and checks the keys for rank `rank` of a run over `ranks` ranks; fails (electra::Error) naming the
  // key.
  static TrainSettings from_config(const Config& config, int ranks, int rank);
};

}  // namespace electra::train
