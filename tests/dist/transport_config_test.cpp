// dist.gradient_transport as electra-train users meet it: the key is in the schema with "auto", and
// values that cannot work on the CPU (or do not exist) are bad input (exit 2) naming the key, on every
// rank, before any data is read. On a GPU (skipped without one), one rank trains the same trajectory
// bitwise with nccl and with host staging: a one-rank sum changes nothing, so any difference is a bug
// in the device path (ordering of the streams, a bucket not reduced or reduced twice).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#if defined(ELECTRA_TEST_HAVE_CUDA)
#include "lib/backend/cuda/cuda_backend.h"
#endif
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

class TransportConfig : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = electra::test::fresh_temp_dir("electra_transport"); }
  void TearDown() override { fs::remove_all(dir_); }

  // electra-train on the CPU with one --set; the data directory does not exist (never reached).
  std::string train(const std::string& transport, const std::string& launcher = "") const {
    return launcher + bin("electra-train") + " --device cpu --data " + (dir_ / "no-shards").string() + " --output " +
           (dir_ / "run").string() + " --set dist.gradient_transport=" + transport;
  }

  fs::path dir_;
};

TEST_F(TransportConfig, TheSchemaHasTheKeyWithAuto) {
  const fs::path log = dir_ / "print.log";
  ASSERT_EQ(run(bin("electra-train") + " --print-config", log), 0) << log_of(log);
  const std::string text = read_text(log);
  const nlohmann::json config = nlohmann::json::parse(text.substr(text.find('{')));
  EXPECT_EQ(config.at("dist").at("gradient_transport"), "auto") << text;
}

TEST_F(TransportConfig, DeviceTransportsOnTheCpuAreBadInputNamingTheKey) {
  for (const std::string transport : {"nccl", "cuda_aware_mpi"}) {
    const fs::path log = dir_ / (transport + ".log");
    EXPECT_EQ(run(train(transport), log), 2) << log_of(log);
    const std::string text = read_text(log);
    EXPECT_NE(text.find("dist.gradient_transport' = " + transport), std::string::npos) << log_of(log);
    EXPECT_NE(text.find("--device cuda"), std::string::npos) << log_of(log);
    EXPECT_FALSE(fs::exists(dir_ / "run" / "checkpoints")) << "nothing may be written";
  }
}

TEST_F(TransportConfig, UnknownTransportIsBadInputOnEveryRank) {
  const fs::path log = dir_ / "unknown.log";
  EXPECT_EQ(run(train("gloo", mpirun(2)), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("dist.gradient_transport': unknown transport 'gloo'"), std::string::npos)
      << log_of(log);
}

TEST_F(TransportConfig, HostAndAutoGetPastTheTransportCheck) {
  for (const std::string transport : {"host", "auto"}) {
    const fs::path log = dir_ / (transport + ".log");
    EXPECT_EQ(run(train(transport), log), 2) << "the missing data is what fails" << log_of(log);
    EXPECT_EQ(read_text(log).find("gradient_transport"), std::string::npos) << log_of(log);
    EXPECT_NE(read_text(log).find("no-shards"), std::string::npos) << log_of(log);
  }
}

TEST_F(TransportConfig, OnOneGpuNcclAndHostStagingTrainTheSameTrajectoryBitwise) {
#if defined(ELECTRA_TEST_HAVE_CUDA)
  if (electra::cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << electra::cuda_unavailable_reason();
#else
  GTEST_SKIP() << "this build has no CUDA backend";
#endif
  electra::test::write_generated_corpus(dir_ / "corpus", 2, 30, 11);
  ASSERT_NO_FATAL_FAILURE(electra::test::prepare_shards(dir_, ""));
  std::vector<std::vector<nlohmann::json>> runs;
  for (const std::string transport : {"host", "nccl"}) {
    const fs::path log = dir_ / (transport + ".log");
    const std::string command = electra::test::small_train_command(
        "", dir_ / "shards", dir_ / transport,
        "--device cuda --set train.steps=6 --set dist.gradient_transport=" + transport);
    ASSERT_EQ(run(command, log), 0) << log_of(log);
    EXPECT_NE(read_text(log).find("gradient allreduce: " + transport), std::string::npos) << log_of(log);
    runs.push_back(read_metrics(dir_ / transport));
    ASSERT_EQ(runs.back().size(), 6u) << log_of(log);
  }
  for (size_t i = 0; i < runs[0].size(); ++i) {
    for (const char* key : {"loss", "gen_loss", "disc_loss", "grad_norm"}) {
      EXPECT_EQ(runs[0][i][key].get<double>(), runs[1][i][key].get<double>()) << key << " at step " << i + 1;
    }
  }
}

}  // namespace
