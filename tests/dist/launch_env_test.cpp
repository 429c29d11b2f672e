#include "lib/dist/launch_env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

LaunchEnv slurm(const char* ntasks) {
  LaunchEnv env;
  env.slurm_job_id.emplace("4242");
  env.slurm_ntasks = ntasks;
  return env;
}

TEST(SlurmWorldSize, OutsideSlurmAnySizeIsFine) {
  EXPECT_NO_THROW(check_slurm_world_size(1, LaunchEnv{}));
  EXPECT_NO_THROW(check_slurm_world_size(7, LaunchEnv{}));
  LaunchEnv only_ntasks;  // no job id: not inside a Slurm job
  only_ntasks.slurm_ntasks.emplace("8");
  EXPECT_NO_THROW(check_slurm_world_size(1, only_ntasks));
}

TEST(SlurmWorldSize, MatchingSizePasses) { EXPECT_NO_THROW(check_slurm_world_size(16, slurm("16"))); }

TEST(SlurmWorldSize, MismatchBlamesMissingPmix) {
  try {
    check_slurm_world_size(1, slurm("8"));
    FAIL() << "a world of 1 in a job of 8 tasks must fail";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("PMIx"), std::string::npos) << message;
    EXPECT_NE(message.find("srun --mpi=pmix"), std::string::npos) << message;
    EXPECT_NE(message.find("SLURM_NTASKS=8"), std::string::npos) << message;
    EXPECT_NE(message.find("world size is 1"), std::string::npos) << message;
  }
  EXPECT_THROW(check_slurm_world_size(16, slurm("8")), Error);
}

TEST(SlurmWorldSize, SkipFlagAndMalformedCount) {
  LaunchEnv env = slurm("8");
  env.skip_slurm_check = true;
  EXPECT_NO_THROW(check_slurm_world_size(2, env));
  EXPECT_THROW(check_slurm_world_size(2, slurm("eight")), Error);
  EXPECT_THROW(check_slurm_world_size(2, slurm("")), Error);
}

TEST(LocalRank, PrefersOpenMpiVariable) {
  LaunchEnv env;
  EXPECT_FALSE(check_local_rank(3, env).has_value());
  env.ompi_local_rank.emplace("3");
  env.slurm_localid.emplace("0");  // mpirun inside an allocation: the batch step's id, ignored
  EXPECT_FALSE(check_local_rank(3, env).has_value());
  env.ompi_local_rank.emplace("2");
  auto warning = check_local_rank(3, env);
  ASSERT_TRUE(warning.has_value());
  EXPECT_NE(warning->find("OMPI_COMM_WORLD_LOCAL_RANK=2"), std::string::npos) << *warning;
}

TEST(LocalRank, FallsBackToSlurmLocalId) {
  LaunchEnv env;
  env.slurm_localid.emplace("1");
  EXPECT_FALSE(check_local_rank(1, env).has_value());
  auto warning = check_local_rank(0, env);
  ASSERT_TRUE(warning.has_value());
  EXPECT_NE(warning->find("SLURM_LOCALID=1"), std::string::npos) << *warning;
  env.slurm_localid.emplace("x");
  EXPECT_TRUE(check_local_rank(0, env).has_value());
}

TEST(LaunchEnvFromEnvironment, ReadsVariables) {
  setenv("SLURM_NTASKS", "5", 1);
  setenv("SLURM_JOB_ID", "77", 1);
  setenv("SLURM_LOCALID", "2", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  setenv("ELECTRA_SKIP_SLURM_CHECK", "1", 1);
  const LaunchEnv env = read_launch_env();
  EXPECT_EQ(env.slurm_ntasks, "5");
  EXPECT_EQ(env.slurm_job_id, "77");
  EXPECT_EQ(env.slurm_localid, "2");
  EXPECT_EQ(env.ompi_local_rank, "1");
  EXPECT_TRUE(env.skip_slurm_check);
  for (const char* name :
       {"SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "ELECTRA_SKIP_SLURM_CHECK"}) {
    unsetenv(name);
  }
  const LaunchEnv empty = read_launch_env();
  EXPECT_FALSE(empty.slurm_ntasks.has_value());
  EXPECT_FALSE(empty.ompi_local_rank.has_value());
  EXPECT_FALSE(empty.skip_slurm_check);
}

}  // namespace
}  // namespace electra::dist
