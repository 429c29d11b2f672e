// electra-train's performance aids change no number: train.profile logs one phase line per log window
// (rank 0) and trains bitwise like a run without it; a rank whose threads may run on fewer CPUs than
// there are threads (mpirun's default binding) is warned about it.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

int count_of(const std::string& text, const std::string& what) {
  int count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++count;
  return count;
}

int allowed_cpus() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  return sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
}

class TrainProfile : public electra::test::TrainingDataSuite<TrainProfile> {
 protected:
  static void SetUpTestSuite() {
    ASSERT_NO_FATAL_FAILURE(make_training_data("electra_train_profile", 2, 30, 17, mpirun(1)));
  }
  static std::string train_command(const std::string& launcher, const fs::path& run_dir, const std::string& extra) {
    return electra::test::small_train_command(launcher, root() / "shards", run_dir,
                                              "--set train.steps=6 --set train.checkpoint_every=3 " + extra);
  }
};

TEST_F(TrainProfile, LogsOnePhaseLinePerWindowAndTrainsBitwiseAsWithout) {
  const fs::path plain = run_dir("plain"), profiled = run_dir("profiled");
  const fs::path log_plain = root() / "plain.log", log_profiled = root() / "profiled.log";
  ASSERT_EQ(run(train_command(mpirun(2), plain, "--set train.log_every=2"), log_plain), 0) << log_of(log_plain);
  ASSERT_EQ(run(train_command(mpirun(2), profiled, "--set train.log_every=2 --set train.profile=true"), log_profiled),
            0)
      << log_of(log_profiled);

  const auto a = read_metrics(plain), b = read_metrics(profiled);
  ASSERT_EQ(a.size(), 3u) << log_of(log_plain);
  ASSERT_EQ(b.size(), a.size()) << log_of(log_profiled);
  for (size_t i = 0; i < a.size(); ++i) {
    for (const char* key : {"step", "loss", "gen_loss", "disc_loss", "mlm_accuracy", "disc_accuracy", "grad_norm"}) {
      EXPECT_EQ(a[i][key], b[i][key]) << key << " at line " << i;
    }
  }
  const std::string rank0 = read_text(profiled / "logs" / "rank_0.log");
  EXPECT_EQ(count_of(rank0, "profile steps "), 3) << rank0;
  for (const char* window : {"profile steps 1-2,", "profile steps 3-4,", "profile steps 5-6,"}) {
    EXPECT_NE(rank0.find(window), std::string::npos) << window << "\n" << rank0;
  }
  EXPECT_NE(rank0.find("mean of 2 rank(s)"), std::string::npos) << rank0;
  EXPECT_NE(rank0.find("fwd+bwd "), std::string::npos) << rank0;
  std::string profile_lines;
  std::istringstream lines(rank0);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("profile steps ") != std::string::npos) profile_lines += line + "\n";
  }
  EXPECT_NE(profile_lines.find(" checkpoint "), std::string::npos) << profile_lines;  // steps 3 and 6 write one
  EXPECT_NE(rank0.find(" ms per step over all ranks"), std::string::npos) << rank0;
  // Only rank 0 logs it, and nothing without the key.
  EXPECT_EQ(count_of(read_text(profiled / "logs" / "rank_1.log"), "profile steps "), 0);
  EXPECT_EQ(count_of(read_text(plain / "logs" / "rank_0.log"), "profile steps "), 0);
}

TEST_F(TrainProfile, WarnsWhenTheThreadsMayRunOnFewerCpus) {
  if (allowed_cpus() < 2) GTEST_SKIP() << "needs 2 CPUs to run unbound (this process may use " << allowed_cpus() << ")";
  const std::string one_cpu = "taskset -c 0 " + mpirun(1) + "--bind-to none ";
  const std::string unbound = mpirun(1) + "--bind-to none ";
  const fs::path bound_dir = run_dir("bound"), free_dir = run_dir("unbound");
  const fs::path bound_log = root() / "bound.log", free_log = root() / "unbound.log";
  const std::string two_threads = "--set train.threads=2 --set train.steps=1";
  ASSERT_EQ(run(train_command(one_cpu, bound_dir, two_threads), bound_log), 0) << log_of(bound_log);
  ASSERT_EQ(run(train_command(unbound, free_dir, two_threads), free_log), 0) << log_of(free_log);
  const std::string warning = "2 threads (train.threads) may run on only 1 CPU(s)";
  EXPECT_NE(read_text(bound_dir / "logs" / "rank_0.log").find(warning), std::string::npos) << log_of(bound_log);
  EXPECT_EQ(read_text(free_dir / "logs" / "rank_0.log").find("may run on only"), std::string::npos) << log_of(free_log);
}

}  // namespace
