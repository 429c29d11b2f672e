// Checkpoints move between the CPU and a GPU: electra-train --device cuda for 3 steps (stopped with a
// checkpoint), resumed on the CPU for 2 more, and the reverse, each against 5 straight CPU steps. The two
// backends agree to float rounding (backend.h), so the trajectories and final weights agree to a
// tolerance, not bitwise. Skips without a GPU (it has never run on one at the time of writing).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lib/backend/cuda/cuda_backend.h"
#include "lib/train/checkpoint.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

fs::path g_root;

std::string train_command(const fs::path& run_dir, const std::string& device, const std::string& extra) {
  return electra::test::small_train_command(
      mpirun(1), g_root / "shards", run_dir,
      "--device " + device + " --set train.steps=5 --set train.checkpoint_every=5 " + extra);
}

// Step metrics of two runs agree to rel_tol (relative, at least absolute rel_tol near 0); the accuracies
// are left out (one flipped prediction moves them by a whole example).
void expect_close_trajectories(const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b,
                               double rel_tol, const std::string& what) {
  electra::test::expect_same_trajectory(a, b, rel_tol, what, {"loss", "gen_loss", "disc_loss", "grad_norm"});
}

// The final parameters and Adam moments of two runs agree elementwise to abs_tol + rel_tol * |x|.
void expect_close_checkpoints(const fs::path& a_path, const fs::path& b_path, double abs_tol, double rel_tol) {
  const auto a = electra::train::CheckpointFile::open(a_path);
  const auto b = electra::train::CheckpointFile::open(b_path);
  for (auto section :
       {electra::train::Section::kParams, electra::train::Section::kAdamM, electra::train::Section::kAdamV}) {
    const auto tensors = a.tensors(section);
    ASSERT_EQ(tensors.size(), b.tensors(section).size());
    for (const auto& t : tensors) {
      const std::vector<float> x = a.read_tensor(section, t.name), y = b.read_tensor(section, t.name);
      ASSERT_EQ(x.size(), y.size()) << t.name;
      size_t bad = 0;
      for (size_t i = 0; i < x.size(); ++i) bad += !(std::abs(x[i] - y[i]) <= abs_tol + rel_tol * std::abs(x[i]));
      EXPECT_EQ(bad, 0u) << t.name << " (" << x.size() << " elements)";
    }
  }
  EXPECT_EQ(a.loader(), b.loader());
}

class CudaCheckpointMove : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (electra::cuda_device_count() == 0) return;
    g_root = electra::test::fresh_temp_dir("electra_ckpt_move");
    electra::test::write_generated_corpus(g_root / "corpus", 2, 40, 11);
    ASSERT_NO_FATAL_FAILURE(electra::test::prepare_shards(g_root, mpirun(1)));
  }
  static void TearDownTestSuite() {
    if (!g_root.empty()) fs::remove_all(g_root);
  }
  void SetUp() override {
    if (electra::cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << electra::cuda_unavailable_reason();
  }

  // 3 steps on `first` (stopped with a checkpoint: exit 3), 2 more on `second` from it.
  fs::path moved_run(const std::string& first, const std::string& second) {
    const fs::path dir = g_root / (first + "_then_" + second);
    const fs::path log1 = g_root / (first + "_then_" + second + "_1.log");
    const fs::path log2 = g_root / (first + "_then_" + second + "_2.log");
    fs::remove_all(dir);
    EXPECT_EQ(run(train_command(dir, first, "--stop-after 3"), log1), 3) << log_of(log1);
    EXPECT_EQ(read_metrics(dir).size(), 3u) << log_of(log1);
    EXPECT_EQ(run(train_command(dir, second, "--resume auto"), log2), 0) << log_of(log2);
    EXPECT_NE(read_text(log2).find("resumed from"), std::string::npos) << log_of(log2);
    return dir;
  }
};

TEST_F(CudaCheckpointMove, GpuCheckpointResumesOnCpuAndBack) {
  const fs::path straight = g_root / "cpu_straight";
  const fs::path log = g_root / "cpu_straight.log";
  ASSERT_EQ(run(train_command(straight, "cpu", ""), log), 0) << log_of(log);
  const auto reference = read_metrics(straight);
  ASSERT_EQ(reference.size(), 5u);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000005.h5";

  const fs::path gpu_then_cpu = moved_run("cuda", "cpu");
  expect_close_trajectories(reference, read_metrics(gpu_then_cpu), 1e-3, "CPU straight vs GPU 3 + CPU 2");
  expect_close_checkpoints(straight / final_name, gpu_then_cpu / final_name, 1e-4, 1e-2);

  const fs::path cpu_then_gpu = moved_run("cpu", "cuda");
  expect_close_trajectories(reference, read_metrics(cpu_then_gpu), 1e-3, "CPU straight vs CPU 3 + GPU 2");
  expect_close_checkpoints(straight / final_name, cpu_then_gpu / final_name, 1e-4, 1e-2);
  // The CPU part of the CPU-first run is the straight run, bit for bit.
  const auto moved = read_metrics(cpu_then_gpu);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(moved[i]["loss"], reference[i]["loss"]) << "step " << i + 1;
}

}  // namespace
