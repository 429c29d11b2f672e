// bf16 storage (train.storage) in electra-train on the CPU (the oneDNN bf16 backend where the build has
// it, else the reference adaptor): a run with bf16 activations and weight copies follows the fp32 run to
// bf16 tolerance, stops and resumes bitwise exactly on 2 ranks, and its checkpoints (fp32 master weights,
// the one format) resume with fp32 storage and back. The key's bad values and contradictions are refused
// naming it.
#include <gtest/gtest.h>

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

class StorageTraining : public electra::test::TrainingDataSuite<StorageTraining> {
 protected:
  static void SetUpTestSuite() { ASSERT_NO_FATAL_FAILURE(make_training_data("electra_storage", 2, 30, 17, mpirun(1))); }
  static std::string train_command(int np, const fs::path& run_dir, const std::string& extra) {
    return electra::test::small_train_command(mpirun(np), root() / "shards", run_dir,
                                              "--set train.steps=8 --set train.checkpoint_every=4 " + extra);
  }
};

TEST_F(StorageTraining, Bf16FollowsFp32AndResumesBitwise) {
  const fs::path fp32 = run_dir("fp32"), bf16 = run_dir("bf16"), resumed = run_dir("bf16_resumed");
  const fs::path log_fp32 = root() / "fp32.log", log_bf16 = root() / "bf16.log";
  ASSERT_EQ(run(train_command(2, fp32, ""), log_fp32), 0) << log_of(log_fp32);
  ASSERT_EQ(run(train_command(2, bf16, "--set train.storage=bf16"), log_bf16), 0) << log_of(log_bf16);
  EXPECT_NE(read_text(log_fp32).find("precision fp32, storage fp32"), std::string::npos) << log_of(log_fp32);
  EXPECT_NE(read_text(log_bf16).find("precision fp32, storage bf16"), std::string::npos) << log_of(log_bf16);
  const auto a = read_metrics(fp32), b = read_metrics(bf16);
  ASSERT_EQ(a.size(), 8u) << log_of(log_fp32);
  // bf16 rounding of activations and weights: losses to about 1%, not bitwise.
  expect_same_trajectory(a, b, 3e-2, "fp32 vs bf16 storage", {"loss", "gen_loss", "disc_loss"});
  bool any_difference = false;
  for (size_t i = 0; i < a.size(); ++i) any_difference |= a[i]["loss"] != b[i]["loss"];
  EXPECT_TRUE(any_difference) << "bf16 storage gave fp32's losses bitwise: was it used?";

  // Stop after step 4, resume: the same every-step metrics and final tensors, bitwise.
  const fs::path log1 = root() / "resumed1.log", log2 = root() / "resumed2.log";
  ASSERT_EQ(run(train_command(2, resumed, "--set train.storage=bf16 --stop-after 4"), log1), 3) << log_of(log1);
  ASSERT_EQ(run(train_command(2, resumed, "--set train.storage=bf16 --resume auto"), log2), 0) << log_of(log2);
  expect_same_trajectory(b, read_metrics(resumed), 0.0, "bf16 straight vs stopped+resumed");
  expect_same_checkpoint_tensors(bf16 / "checkpoints" / "ckpt-00000008.h5",
                                 resumed / "checkpoints" / "ckpt-00000008.h5");
}

TEST_F(StorageTraining, CheckpointsMoveBetweenStorages) {
  // Steps 1-4 in one storage, 5-8 in the other: each half matches the run that stayed in its storage
  // (bitwise for the first half; to bf16 tolerance for the second, which starts from other weights).
  for (const auto& [first, second] : {std::pair{"bf16", "fp32"}, std::pair{"fp32", "bf16"}}) {
    const std::string name = std::string(first) + "_to_" + second;
    const fs::path straight = run_dir(name + "_straight"), moved = run_dir(name);
    const fs::path log0 = root() / (name + "0.log"), log1 = root() / (name + "1.log"), log2 = root() / (name + "2.log");
    ASSERT_EQ(run(train_command(1, straight, std::string("--set train.storage=") + second), log0), 0) << log_of(log0);
    ASSERT_EQ(run(train_command(1, moved, std::string("--set train.storage=") + first + " --stop-after 4"), log1), 3)
        << log_of(log1);
    ASSERT_EQ(run(train_command(1, moved, std::string("--set train.storage=") + second + " --resume auto"), log2), 0)
        << log_of(log2);
    EXPECT_NE(read_text(log2).find("resumed from"), std::string::npos) << log_of(log2);
    const auto s = read_metrics(straight), m = read_metrics(moved);
    ASSERT_EQ(s.size(), 8u) << log_of(log0);
    ASSERT_EQ(m.size(), 8u) << log_of(log2);
    const std::vector<nlohmann::json> s_tail(s.begin() + 4, s.end()), m_tail(m.begin() + 4, m.end());
    expect_same_trajectory(s_tail, m_tail, 3e-2, name, {"loss", "gen_loss", "disc_loss"});
    const electra::train::CheckpointFile end =
        electra::train::CheckpointFile::open(moved / "checkpoints" / "ckpt-00000008.h5");
    ASSERT_NO_FATAL_FAILURE(electra::test::assert_finite_params(end));
  }
}

TEST_F(StorageTraining, BadValuesAndContradictionsAreRefusedNamingTheKey) {
  const fs::path dir = run_dir("bad");
  const fs::path log = root() / "bad.log";
  EXPECT_EQ(run(train_command(1, dir, "--set train.storage=fp16"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("train.storage"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("fp16"), std::string::npos) << log_of(log);
  // The CPU computes in fp32 or bf16: tensor-core precisions are refused naming the precision key.
  EXPECT_EQ(run(train_command(1, dir, "--set train.precision=fp16"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("train.precision"), std::string::npos) << log_of(log);
  // Precision bf16 on the CPU is bf16 storage: fp32 storage contradicts it, and the storage key is named.
  EXPECT_EQ(run(train_command(1, dir, "--set train.precision=bf16 --set train.storage=fp32"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("train.storage"), std::string::npos) << log_of(log);
  EXPECT_NE(read_text(log).find("contradicts precision bf16"), std::string::npos) << log_of(log);
}

}  // namespace
