// Loss scaling in electra-train runs on the CPU (optim.loss_scale.*): a fixed power-of-two scale trains
// bitwise like no scale; an injected non-finite gradient (debug.nan_step) is an overflow that halves a
// dynamic scale and skips the step without counting toward train.max_skipped_steps; a stop and resume
// with a dynamic scale continues bitwise exactly, scale and good-step counter included.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lib/train/checkpoint.h"
#include "tests/support/checkpoints.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...
using electra::train::CheckpointFile;

std::vector<double> loss_scales(const std::vector<nlohmann::json>& metrics) {
  std::vector<double> out;
  for (const auto& m : metrics) out.push_back(m.at("loss_scale").get<double>());
  return out;
}

std::vector<int64_t> steps(const std::vector<nlohmann::json>& metrics) {
  std::vector<int64_t> out;
  for (const auto& m : metrics) out.push_back(m.at("step").get<int64_t>());
  return out;
}

class LossScaleTraining : public electra::test::TrainingDataSuite<LossScaleTraining> {
 protected:
  static void SetUpTestSuite() {
    ASSERT_NO_FATAL_FAILURE(make_training_data("electra_loss_scale", 2, 30, 11, mpirun(1)));
  }
  static std::string train_command(int np, const fs::path& run_dir, const std::string& extra) {
    return electra::test::small_train_command(mpirun(np), root() / "shards", run_dir,
                                              "--set train.steps=8 --set train.checkpoint_every=4 " + extra);
  }
};

TEST_F(LossScaleTraining, FixedPowerOfTwoScaleTrainsBitwiseLikeNoScale) {
  const fs::path plain = run_dir("plain"), scaled = run_dir("scaled");
  const fs::path log_plain = root() / "plain.log", log_scaled = root() / "scaled.log";
  ASSERT_EQ(run(train_command(1, plain, ""), log_plain), 0) << log_of(log_plain);
  ASSERT_EQ(
      run(train_command(1, scaled, "--set optim.loss_scale.mode=fixed --set optim.loss_scale.init=1024"), log_scaled),
      0)
      << log_of(log_scaled);
  const auto a = read_metrics(plain), b = read_metrics(scaled);
  ASSERT_EQ(a.size(), 8u) << log_of(log_plain);
  expect_same_trajectory(a, b, 0.0, "no scale vs fixed 1024");
  EXPECT_EQ(loss_scales(a), std::vector<double>(8, 1.0));
  EXPECT_EQ(loss_scales(b), std::vector<double>(8, 1024.0));
  EXPECT_NE(read_text(log_scaled).find("loss scale 1024"), std::string::npos) << log_of(log_scaled);
  expect_same_checkpoint_tensors(plain / "checkpoints" / "ckpt-00000008.h5",
                                 scaled / "checkpoints" / "ckpt-00000008.h5");
}

TEST_F(LossScaleTraining, OverflowHalvesTheDynamicScaleAndSkipsWithoutCountingAsAFailure) {
  // Two ranks, the non-finite gradient on rank 1 only, no tolerance for failed steps: the overflow must
  // neither end the run nor let the ranks disagree. Steps are numbered from 1: nan_step=3 is the 4th.
  const fs::path dir = run_dir("overflow");
  const fs::path log = root() / "overflow.log";
  const std::string dynamic =
      "--set optim.loss_scale.mode=dynamic --set optim.loss_scale.init=1024 --set optim.loss_scale.growth_interval=2 "
      "--set train.max_skipped_steps=0 --set debug.nan_step=3 --set debug.nan_rank=1";
  ASSERT_EQ(run(train_command(2, dir, dynamic), log), 0) << log_of(log);
  const auto metrics = read_metrics(dir);
  EXPECT_EQ(steps(metrics), (std::vector<int64_t>{1, 2, 3, 5, 6, 7, 8})) << log_of(log);
  // The scale after each logged step: doubled after every 2 finite steps in a row, halved at step 4.
  EXPECT_EQ(loss_scales(metrics), (std::vector<double>{1024, 2048, 2048, 1024, 2048, 2048, 4096})) << log_of(log);
  EXPECT_NE(read_text(log).find("step 4: gradients overflowed at loss scale 2048"), std::string::npos) << log_of(log);
  const CheckpointFile ckpt = CheckpointFile::open(dir / "checkpoints" / "ckpt-00000008.h5");
  EXPECT_EQ(ckpt.state()["loss_scale"].get<double>(), 4096.0);
  EXPECT_EQ(ckpt.state()["loss_scale_mode"], "dynamic");
  EXPECT_EQ(ckpt.state()["loss_scale_good_steps"].get<int64_t>(), 0);
  EXPECT_EQ(ckpt.state()["skipped_steps"].get<int64_t>(), 1);
  ASSERT_NO_FATAL_FAILURE(electra::test::assert_finite_params(ckpt));

  // The same fault with a fixed scale is a failed step: max_skipped_steps=0 ends the run (exit 4).
  const fs::path fixed = run_dir("overflow_fixed");
  const fs::path log_fixed = root() / "overflow_fixed.log";
  EXPECT_EQ(run(train_command(2, fixed,
                              "--set optim.loss_scale.mode=fixed --set optim.loss_scale.init=1024 "
                              "--set train.max_skipped_steps=0 --set debug.nan_step=3 --set debug.nan_rank=1"),
                log_fixed),
            4)
      << log_of(log_fixed);
}

TEST_F(LossScaleTraining, ResumeWithADynamicScaleIsBitwiseExact) {
  // The scale drops at step 3 and regrows every 3 finite steps; the stop after step 5 falls between
  // two changes, so the resumed run must carry both the scale and the good-step counter.
  const std::string dynamic =
      "--set optim.loss_scale.mode=dynamic --set optim.loss_scale.init=1024 --set optim.loss_scale.growth_interval=3 "
      "--set debug.nan_step=2 --set debug.nan_rank=0 --set train.steps=10";
  const fs::path straight = run_dir("straight");
  const fs::path log = root() / "straight.log";
  ASSERT_EQ(run(train_command(1, straight, dynamic), log), 0) << log_of(log);

  const fs::path resumed = run_dir("resumed");
  const fs::path log1 = root() / "resumed1.log", log2 = root() / "resumed2.log";
  ASSERT_EQ(run(train_command(1, resumed, dynamic + " --stop-after 5"), log1), 3) << log_of(log1);
  const CheckpointFile stopped = CheckpointFile::open(resumed / "checkpoints" / "ckpt-00000005.h5");
  EXPECT_EQ(stopped.state()["loss_scale"].get<double>(), 512.0);
  EXPECT_EQ(stopped.state()["loss_scale_good_steps"].get<int64_t>(), 2);
  ASSERT_EQ(run(train_command(1, resumed, dynamic + " --resume auto"), log2), 0) << log_of(log2);
  EXPECT_NE(read_text(log2).find("loss scale 512 (2 finite steps"), std::string::npos) << log_of(log2);

  const auto a = read_metrics(straight), b = read_metrics(resumed);
  expect_same_trajectory(a, b, 0.0, "straight vs stopped+resumed");
  EXPECT_EQ(loss_scales(a), loss_scales(b));
  EXPECT_EQ(loss_scales(a), (std::vector<double>{1024, 1024, 512, 512, 1024, 1024, 1024, 2048, 2048}));
  expect_same_checkpoint_tensors(straight / "checkpoints" / "ckpt-00000010.h5",
                                 resumed / "checkpoints" / "ckpt-00000010.h5");
  const CheckpointFile end_a = CheckpointFile::open(straight / "checkpoints" / "ckpt-00000010.h5");
  const CheckpointFile end_b = CheckpointFile::open(resumed / "checkpoints" / "ckpt-00000010.h5");
  EXPECT_EQ(end_a.state()["loss_scale"], end_b.state()["loss_scale"]);
  EXPECT_EQ(end_a.state()["loss_scale_good_steps"], end_b.state()["loss_scale_good_steps"]);
}

// What a skipped step leaves behind survives a resume too. A window whose steps were all skipped reports the
// last applied step's lr and gradient norm (they were 0 after a resume); a run of non-finite steps ends at
// the same step (train.max_skipped_steps) however it is stopped and resumed (the streak restarted at 0).
TEST_F(LossScaleTraining, SkippedStepsCountTheSameAcrossAResume) {
  // Windows of 2 steps; the 4th is skipped, so the window 3-4 is open at the stop after step 3.
  const std::string skip =
      "--set optim.loss_scale.mode=dynamic --set debug.nan_step=3 --set train.steps=6 --set train.log_every=2";
  const fs::path straight = run_dir("skip_straight"), resumed = run_dir("skip_resumed");
  const fs::path log = root() / "skip.log";
  ASSERT_EQ(run(train_command(1, straight, skip), log), 0) << log_of(log);
  ASSERT_EQ(run(train_command(1, resumed, skip + " --stop-after 3"), log), 3) << log_of(log);
  ASSERT_EQ(run(train_command(1, resumed, skip + " --resume auto"), log), 0) << log_of(log);
  const auto a = read_metrics(straight), b = read_metrics(resumed);
  expect_same_trajectory(a, b, 0.0, "straight vs stopped+resumed", {"loss", "grad_norm", "lr", "loss_scale"});
  ASSERT_EQ(steps(a), (std::vector<int64_t>{2, 4, 6}));
  EXPECT_GT(b[1]["lr"].get<double>(), 0.0) << b[1].dump();  // step 3's, in the window resumed

  // Diverging: every step from the second is non-finite; 3 in a row are allowed, the 4th ends the run.
  const std::string diverge =
      "--set optim.lr=1e30 --set optim.clip_norm=0 --set optim.warmup_steps=0 --set train.max_skipped_steps=3 "
      "--set train.steps=10";
  const fs::path log_a = root() / "diverge_straight.log", log_b = root() / "diverge_resumed.log";
  ASSERT_EQ(run(train_command(1, run_dir("diverge_straight"), diverge), log_a), 4) << log_of(log_a);
  const fs::path stopped = run_dir("diverge_resumed");
  ASSERT_EQ(run(train_command(1, stopped, diverge + " --stop-after 3"), log_b), 3) << log_of(log_b);
  ASSERT_EQ(run(train_command(1, stopped, diverge + " --resume auto"), log_b), 4) << log_of(log_b);
  EXPECT_NE(read_text(log_a).find("step 5: non-finite"), std::string::npos) << log_of(log_a);
  EXPECT_EQ(read_text(log_a).find("step 6: non-finite"), std::string::npos) << log_of(log_a);
  EXPECT_NE(read_text(log_b).find("step 5: non-finite"), std::string::npos) << log_of(log_b);
  EXPECT_EQ(read_text(log_b).find("step 6: non-finite"), std::string::npos) << log_of(log_b);
}

// TF32 and fp16 are tensor-core precisions (bf16 is the CPU's bf16 storage: StorageTraining).
TEST_F(LossScaleTraining, TensorCorePrecisionsAreRefusedOnTheCpu) {
  for (const char* precision : {"fp16", "tf32", "fp64"}) {
    const fs::path dir = run_dir(std::string("precision_") + precision);
    const fs::path log = root() / (std::string("precision_") + precision + ".log");
    EXPECT_EQ(run(train_command(1, dir, std::string("--set train.precision=") + precision), log), 2) << log_of(log);
    EXPECT_NE(read_text(log).find("train.precision"), std::string::npos) << log_of(log);
  }
  const fs::path dir = run_dir("precision_fp32");
  const fs::path log = root() / "precision_fp32.log";
  EXPECT_EQ(run(train_command(1, dir, "--set train.precision=fp32 --set train.steps=1"), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("precision fp32, storage fp32 (backend cpu-float); loss scaling off"),
            std::string::npos)
      << log_of(log);
}

}  // namespace
