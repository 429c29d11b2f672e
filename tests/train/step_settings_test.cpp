// StepMetrics (step.h): sums with +=, one span for the allreduce, the log window's averages; and
// TrainSettings::from_config (train_settings.h): the trainer's keys read from a config (the loader's and the
// debug faults' for one rank too), bad values named.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/train/step.h"
#include "lib/train/train_settings.h"
#include "lib/train/trainer.h"

namespace {

using electra::Config;
using electra::train::StepMetrics;
using electra::train::TrainSettings;

TEST(StepMetrics, AddsFieldByFieldAndSpansItsDoublesInOrder) {
  StepMetrics a, b;
  a.total_loss = 1.5;
  a.disc_tokens = 10;
  a.computed_flops = 3;
  b.total_loss = 0.25;
  b.disc_tokens = 6;
  b.computed_flops = 1;
  a += b;
  EXPECT_EQ(a.total_loss, 1.75);
  EXPECT_EQ(a.disc_tokens, 16);
  EXPECT_EQ(a.computed_flops, 4);
  const std::span<double> values = a.values();
  ASSERT_EQ(values.size(), StepMetrics::kNumValues);
  EXPECT_EQ(&values.front(), &a.total_loss);
  EXPECT_EQ(&values.back(), &a.computed_flops);
  values[7] = 42;  // disc_tokens, the eighth field
  EXPECT_EQ(a.disc_tokens, 42);
}

TEST(StepMetrics, AddTakesAMicroBatchsLossesAndCounts) {
  electra::PretrainerLosses l;
  l.total_loss = 2;
  l.mlm_loss = 1;
  l.disc_loss = 0.5;
  l.mlm_correct_sum = 3;
  l.mlm_weight_sum = 4;
  l.disc_correct_sum = 5;
  l.disc_token_count = 6;
  l.disc_fake_count = 1;
  StepMetrics m;
  m.add(l);
  m.add(l);
  EXPECT_EQ(m.total_loss, 4);
  EXPECT_EQ(m.mlm_loss, 2);
  EXPECT_EQ(m.disc_loss, 1);
  EXPECT_EQ(m.mlm_correct, 6);
  EXPECT_EQ(m.mlm_weight, 8);
  EXPECT_EQ(m.disc_correct, 10);
  EXPECT_EQ(m.disc_tokens, 12);
  EXPECT_EQ(m.disc_fake, 2);
  EXPECT_EQ(m.tokens, 0);
}

TEST(StepMetrics, WindowAverageDividesLossesAndSizesButNotCounts) {
  StepMetrics m;
  for (double& v : m.values()) v = 8;
  const StepMetrics avg = m.window_average(4);
  for (double v : {avg.total_loss, avg.mlm_loss, avg.disc_loss, avg.sentence_loss, avg.tokens, avg.computed_tokens,
                   avg.computed_flops}) {
    EXPECT_EQ(v, 2);
  }
  for (double v : {avg.mlm_correct, avg.mlm_weight, avg.disc_correct, avg.disc_tokens, avg.disc_fake}) EXPECT_EQ(v, 8);
}

Config defaults() { return Config(electra::train::default_run_config()); }

std::string error_of(const Config& config, int ranks = 1) {
  try {
    TrainSettings::from_config(config, ranks, /*rank=*/0);
  } catch (const electra::Error& e) {
    return e.what();
  }
  return "";
}

TEST(TrainSettings, ReadsTheDefaults) {
  const TrainSettings s = TrainSettings::from_config(defaults(), 4, 0);
  EXPECT_EQ(s.total_steps, 1000000);
  EXPECT_EQ(s.global_batch, 128);
  EXPECT_EQ(s.local_rows, 32);
  EXPECT_EQ(s.micro_rows, 32);
  EXPECT_EQ(s.seq_length, 128);
  EXPECT_TRUE(s.trim_padding);
  EXPECT_EQ(s.log_every, 100);
  EXPECT_EQ(s.optim.total_steps, 1000000);
  EXPECT_EQ(s.collapse.warmup_steps, s.optim.warmup_steps);
  EXPECT_EQ(s.collapse.windows, 5);
  EXPECT_EQ(s.precision, electra::CudaPrecision::kFp32);
  EXPECT_EQ(s.storage, std::nullopt);  // auto
}

TEST(TrainSettings, ReadsOverrides) {
  Config c = defaults();
  c.set("train.micro_batch_size=8");
  c.set("train.log_every=7");
  c.set("data.trim_padding=false");
  c.set("train.attention=fused");
  c.set("train.precision=bf16");
  c.set("train.storage=fp32");
  const TrainSettings s = TrainSettings::from_config(c, 2, 1);
  EXPECT_EQ(s.micro_rows, 8);
  EXPECT_EQ(s.log_every, 7);  // 0 is refused (BadValuesNameTheirKey)
  EXPECT_FALSE(s.trim_padding);
  EXPECT_EQ(s.attention, electra::AttentionImpl::kFused);
  EXPECT_EQ(s.precision, electra::CudaPrecision::kBf16);
  EXPECT_EQ(s.storage, electra::StorageType::kFp32);
}

TEST(TrainSettings, FillsTheLoaderOptionsOfItsRank) {
  Config c = defaults();
  c.set("data.dir=\"shards\"");
  c.set("data.vocab=\"vocab.txt\"");
  c.set("data.eval_dir=\"held_out\"");
  c.set("data.mask_prob=0.2");
  c.set("model.num_token_predictions=19");
  c.set("data.prefetch_batches=2");
  c.set("data.shuffle=false");
  c.set("data.cache_mb=16");
  c.set("data.verify_checksums=true");
  c.set("train.seed=7");
  const TrainSettings s = TrainSettings::from_config(c, 4, 3);
  const electra::data::LoaderOptions& l = s.loader;
  EXPECT_EQ(l.data_dir, "shards");
  EXPECT_EQ(l.vocab_path, "vocab.txt");
  EXPECT_EQ(s.eval_dir, "held_out");
  EXPECT_FLOAT_EQ(l.mask_prob, 0.2f);
  EXPECT_EQ(l.max_predictions, 19);
  EXPECT_EQ(l.prefetch_batches, 2);
  EXPECT_FALSE(l.shuffle);
  EXPECT_EQ(l.cache_bytes, uint64_t{16} << 20);
  EXPECT_TRUE(l.verify_checksums);
  EXPECT_EQ(l.global_batch_size, 128);  // the global batch: the loader takes the rank's slice
  EXPECT_EQ(l.seq_length, 128);
  EXPECT_EQ(l.seed, 7u);
  EXPECT_EQ(l.rank, 3);
  EXPECT_EQ(l.world_size, 4);
}

TEST(TrainSettings, InjectsADebugFaultOnlyOnItsRank) {
  const TrainSettings off = TrainSettings::from_config(defaults(), 2, 0);
  for (int64_t step :
       {off.faults.nan_step, off.faults.hang_step, off.faults.throw_step, off.faults.hang_checkpoint_step}) {
    EXPECT_EQ(step, -1);
  }
  Config c = defaults();
  c.set("debug.nan_rank=1");
  c.set("debug.nan_step=5");
  c.set("debug.throw_rank=1");
  c.set("debug.throw_step=6");
  c.set("debug.hang_rank=0");
  c.set("debug.hang_step=8");
  c.set("debug.hang_checkpoint_rank=0");
  c.set("debug.hang_checkpoint_step=7");
  const TrainSettings rank0 = TrainSettings::from_config(c, 2, 0);
  const TrainSettings rank1 = TrainSettings::from_config(c, 2, 1);
  EXPECT_EQ(rank0.faults.nan_step, -1);
  EXPECT_EQ(rank0.faults.throw_step, -1);
  EXPECT_EQ(rank0.faults.hang_step, 8);
  EXPECT_EQ(rank0.faults.hang_checkpoint_step, 7);
  EXPECT_EQ(rank1.faults.nan_step, 5);
  EXPECT_EQ(rank1.faults.throw_step, 6);
  EXPECT_EQ(rank1.faults.hang_step, -1);
  EXPECT_EQ(rank1.faults.hang_checkpoint_step, -1);
}

TEST(TrainSettings, BadValuesNameTheirKey) {
  const std::pair<const char*, const char*> cases[] = {
      {"train.steps=0", "train.steps"},
      {"train.batch_size=6", "train.batch_size"},  // not a multiple of 4 ranks
      {"train.micro_batch_size=5", "train.micro_batch_size"},
      {"train.step_timeout=0", "train.step_timeout"},
      {"train.checkpoint_timeout=-1", "train.checkpoint_timeout"},
      {"train.eval_batches=-1", "train.eval_batches"},
      {"train.attention=sparse", "train.attention"},
      {"train.precision=fp8", "config key 'train.precision' = must be fp32, tf32, bf16 or fp16, got 'fp8'"},
      {"train.storage=fp16", "config key 'train.storage' must be auto, fp32 or bf16, got 'fp16'"},
      {"train.collapse_warning.windows=-1", "train.collapse_warning.windows"},
      {"device.memory_fraction=1.5", "device.memory_fraction"},
      {"device.arena_bytes=-1", "device.arena_bytes"},
      {"optim.beta2=2", "optim.beta2"},
      {"train.log_every=0", "config key 'train.log_every' must be positive, got 0"},
      {"train.checkpoint_every=-1", "config key 'train.checkpoint_every' must be >= 0"},
      {"train.keep_last=1", "config key 'train.keep_last' must be at least 2, got 1"},
      {"train.keep_every=-2", "config key 'train.keep_every' must be >= 0"},
      {"train.eval_every=-1", "config key 'train.eval_every' must be >= 0"},
      {"train.max_skipped_steps=-1", "config key 'train.max_skipped_steps' must be >= 0"},
      {"train.micro_batch_size=-4", "config key 'train.micro_batch_size' must be >= 0"},
      {"train.threads=-3", "config key 'train.threads' must be in [0, 4096]"},
      {"train.threads=100000", "config key 'train.threads' must be in [0, 4096]"},
      {"data.seq_length=0", "config key 'data.seq_length' must be positive, got 0"},
      {"train.step_timeout=1e10", "config key 'train.step_timeout' must be a positive number of seconds up to a year"},
      {"train.checkpoint_timeout=1e300", "train.checkpoint_timeout"},
      {"train.parallel_chunks=-1", "config key 'train.parallel_chunks' must be >= 0"},
      {"train.peak_gflops=-5", "config key 'train.peak_gflops' must be a finite number >= 0"},
      {"train.seed=-1", "config key 'train.seed' must be an integer in [0, 18446744073709551615], got -1"},
      {"train.log_every=4294967296", "config key 'train.log_every' must be an integer in [-2147483648, 2147483647]"},
      {"data.cache_mb=-1", "config key 'data.cache_mb' must be in [0, 2^40], got -1"},
      {"data.mask_prob=1.5", "config key 'data.mask_prob' must be in (0, 1), got 1.5"},
      {"data.prefetch_batches=0", "config key 'data.prefetch_batches' must be at least 1, got 0"},
  };
  for (const auto& [assignment, key] : cases) {
    Config c = defaults();
    c.set(assignment);
    EXPECT_NE(error_of(c, 4).find(key), std::string::npos) << assignment << ": " << error_of(c, 4);
  }
}

// What a resume compares against the checkpoint's configuration (run_checkpoints.cpp): every difference,
// nested keys dotted, numbers by value.
TEST(ConfigDifferences, ListsEveryDifferenceAndComparesNumbersByValue) {
  const nlohmann::json saved = nlohmann::json::parse(
      R"({"lr": 0.0005, "warmup_steps": 40, "loss_scale": {"init": 65536.0, "mode": "auto"}, "old": 1})");
  const nlohmann::json run = nlohmann::json::parse(
      R"({"lr": 5e-4, "warmup_steps": 80, "loss_scale": {"init": 65536, "mode": "off"}, "new": true})");
  using electra::config_differences;
  EXPECT_EQ(
      config_differences(saved, run, "optim"),
      (std::vector<std::string>{
          "optim.loss_scale.mode: checkpoint \"auto\", run \"off\"", "optim.old: checkpoint 1, run has no such key",
          "optim.warmup_steps: checkpoint 40, run 80", "optim.new: checkpoint has no such key, run true"}));
  EXPECT_TRUE(config_differences(saved, saved).empty());
  EXPECT_EQ(config_differences(nlohmann::json(4), nlohmann::json(8), "train.steps"),
            std::vector<std::string>{"train.steps: checkpoint 4, run 8"});
}

}  // namespace
