// optim.name = lamb in electra-train on the CPU: the loss goes down, checkpoints record the optimizer, a
// stop and resume on 2 ranks continues bitwise exactly, and a checkpoint of the other optimizer (or an
// unknown optim.name) is refused with exit 2 naming the key.
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
using electra::train::CheckpointFile;

// LAMB's steps are relative to each tensor's norm: 1e-2 moves the small model's weights about 1% a step.
constexpr const char* kLamb = "--set optim.name=lamb --set optim.lr=1e-2 ";

class LambTraining : public electra::test::TrainingDataSuite<LambTraining> {
 protected:
  static void SetUpTestSuite() { ASSERT_NO_FATAL_FAILURE(make_training_data("electra_lamb", 2, 30, 13, mpirun(1))); }
  static std::string train_command(int np, const fs::path& run_dir, const std::string& extra) {
    return electra::test::small_train_command(mpirun(np), root() / "shards", run_dir,
                                              "--set train.steps=12 --set train.checkpoint_every=4 " + extra);
  }
};

TEST_F(LambTraining, TrainsAndResumesBitwise) {
  const fs::path straight = run_dir("straight"), resumed = run_dir("resumed");
  const fs::path log = root() / "straight.log";
  ASSERT_EQ(run(train_command(2, straight, kLamb), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("optimizer lamb"), std::string::npos) << log_of(log);
  const auto a = read_metrics(straight);
  ASSERT_EQ(a.size(), 12u) << log_of(log);
  EXPECT_LT(a.back()["loss"].get<double>(), a.front()["loss"].get<double>() - 0.5) << log_of(log);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000012.h5";
  EXPECT_EQ(CheckpointFile::open(straight / final_name).state().at("optimizer"), "lamb");

  // Stop after step 6, resume: the same every-step metrics, weights, moments and loader position, bitwise.
  const fs::path log1 = root() / "resumed1.log", log2 = root() / "resumed2.log";
  ASSERT_EQ(run(train_command(2, resumed, std::string(kLamb) + "--stop-after 6"), log1), 3) << log_of(log1);
  ASSERT_EQ(read_metrics(resumed).size(), 6u);
  ASSERT_EQ(run(train_command(2, resumed, std::string(kLamb) + "--resume auto"), log2), 0) << log_of(log2);
  EXPECT_NE(read_text(log2).find("resumed from"), std::string::npos) << log_of(log2);
  expect_same_trajectory(a, read_metrics(resumed), 0.0, "lamb straight vs stopped+resumed");
  ASSERT_NO_FATAL_FAILURE(expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));
  EXPECT_EQ(CheckpointFile::open(straight / final_name).loader(), CheckpointFile::open(resumed / final_name).loader());
}

TEST_F(LambTraining, AnotherOptimizersCheckpointIsRefusedNamingTheKey) {
  // An AdamW run (the default, recorded as such) resumed with LAMB, and the other way round: exit 2 before
  // training, naming optim.name and both optimizers; nothing is added to the run.
  for (const auto& [first, second] : {std::pair{"adamw", "lamb"}, std::pair{"lamb", "adamw"}}) {
    const std::string name = std::string(first) + "_then_" + second;
    const fs::path dir = run_dir(name);
    const fs::path log1 = root() / (name + "1.log"), log2 = root() / (name + "2.log");
    ASSERT_EQ(run(train_command(1, dir, std::string("--set optim.name=") + first + " --stop-after 4"), log1), 3)
        << log_of(log1);
    EXPECT_EQ(CheckpointFile::open(dir / "checkpoints" / "ckpt-00000004.h5").state().at("optimizer"), first);
    ASSERT_EQ(run(train_command(1, dir, std::string("--set optim.name=") + second + " --resume auto"), log2), 2)
        << log_of(log2);
    const std::string text = read_text(log2);
    EXPECT_NE(text.find("optim.name"), std::string::npos) << log_of(log2);
    EXPECT_NE(text.find(std::string("written by optimizer ") + first), std::string::npos) << log_of(log2);
    EXPECT_EQ(read_metrics(dir).size(), 4u);
    // The same optimizer resumes it.
    ASSERT_EQ(run(train_command(1, dir, std::string("--set optim.name=") + first + " --resume auto"), log2), 0)
        << log_of(log2);
  }
  // An unknown optimizer is refused at set-up, naming the key.
  const fs::path bad = run_dir("bad");
  const fs::path log = root() / "bad.log";
  EXPECT_EQ(run(train_command(1, bad, "--set optim.name=sgd"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("optim.name"), std::string::npos) << log_of(log);
  EXPECT_FALSE(fs::exists(bad / "checkpoints"));
}

}  // namespace
