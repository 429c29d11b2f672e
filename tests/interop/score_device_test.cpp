// electra-score --device: without a usable GPU, --device cuda fails before the model is read (exit 2, bad
// input found while setting up, as electra-eval; the reason on stderr); a bad device name is a flag error
// (exit 2). Runs everywhere; on a GPU machine --device cuda gets as far as the missing model.
#include <gtest/gtest.h>

#include <string>

#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using namespace testing;

CommandResult score_missing_model(const std::string& flags) {
  const fs::path missing = fs::path(::testing::TempDir()) / "electra_score_device_no_model";
  return run_command(shell_quote(program("electra-score")) + " --model " + shell_quote(missing.string()) + " " + flags +
                     " < /dev/null 2>&1");
}

TEST(ScoreDevice, CudaWithoutAGpuFailsWithTheReason) {
  const CommandResult r = score_missing_model("--device cuda");
  EXPECT_EQ(r.status, 2) << r.out;
  if (r.out.find("--device cuda: ") != std::string::npos) {
    EXPECT_EQ(r.out.find("electra_score_device_no_model"), std::string::npos) << "model read first: " << r.out;
    EXPECT_TRUE(r.out.find("driver") != std::string::npos || r.out.find("no CUDA GPU") != std::string::npos ||
                r.out.find("this build has no CUDA backend") != std::string::npos)
        << r.out;
  } else {
    EXPECT_NE(r.out.find("electra_score_device_no_model"), std::string::npos) << r.out;
  }
}

TEST(ScoreDevice, BadDeviceOrPrecision) {
  CommandResult r = score_missing_model("--device gpu");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--device"), std::string::npos) << r.out;
  r = score_missing_model("--precision tf32");  // on the CPU
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("precision tf32 needs --device cuda"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace electra::interop
