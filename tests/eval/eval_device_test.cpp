// electra-eval --device / --precision: flag errors exit with 2 and name the problem; --device cuda without
// a usable GPU fails before anything is read, naming what is missing (the driver, the GPU or a CUDA
// build). Runs everywhere; on a GPU machine --device cuda gets as far as the missing checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using electra::test::bin;
using electra::test::log_of;
using electra::test::read_text;
using electra::test::run;

struct Result {
  int code = -1;
  std::string output;
};

Result eval_with(const std::string& flags) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("electra_eval_device_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const fs::path log = dir / "eval.log";
  Result r;
  r.code = run(bin("electra-eval") + " --checkpoint " + (dir / "no_run").string() + " --data " +
                   (dir / "no_shards").string() + " " + flags,
               log);
  r.output = read_text(log);
  return r;
}

TEST(EvalDevice, CudaWithoutAGpuFailsWithTheReason) {
  const Result r = eval_with("--device cuda");
  EXPECT_EQ(r.code, 2) << r.output;
  if (r.output.find("--device cuda: ") != std::string::npos) {
    // No GPU here: one of the reasons cuda_unavailable_reason / a CPU-only build give.
    const bool named = r.output.find("no NVIDIA driver") != std::string::npos ||
                       r.output.find("no CUDA GPU is visible") != std::string::npos ||
                       r.output.find("driver") != std::string::npos ||
                       r.output.find("this build has no CUDA backend") != std::string::npos;
    EXPECT_TRUE(named) << r.output;
    EXPECT_EQ(r.output.find("no_run"), std::string::npos) << "the checkpoint was read first: " << r.output;
  } else {
    // A GPU: the backend was made, then the missing checkpoint was reported.
    EXPECT_NE(r.output.find("no_run"), std::string::npos) << r.output;
  }
}

TEST(EvalDevice, TensorCorePrecisionNeedsCuda) {
  const Result r = eval_with("--device cpu --precision tf32");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("precision tf32 needs --device cuda"), std::string::npos) << r.output;
}

TEST(EvalDevice, UnknownDeviceOrPrecisionIsAFlagError) {
  Result r = eval_with("--device tpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  r = eval_with("--device cuda --precision fp8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--precision"), std::string::npos) << r.output;
}

}  // namespace
