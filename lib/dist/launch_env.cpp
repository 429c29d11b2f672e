#include "lib/dist/launch_env.h"

#include <cstdlib>
#include <string_view>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

std::optional<std::string> env_value(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// Parses a non-negative decimal integer; nullopt for anything else.
std::optional<long long> parse_count(const std::string& text) {
  if (text.empty() || text.size() > 18) return std::nullopt;
  long long value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

}  // namespace

LaunchEnv read_launch_env() {
  LaunchEnv env;
  env.slurm_ntasks = env_value("SLURM_NTASKS");
  env.slurm_job_id = env_value("SLURM_JOB_ID");
  env.slurm_localid = env_value("SLURM_LOCALID");
  env.ompi_local_rank = env_value("OMPI_COMM_WORLD_LOCAL_RANK");
  const auto skip = env_value("ELECTRA_SKIP_SLURM_CHECK");
  env.skip_slurm_check = skip.has_value() && *skip != "0" && !skip->empty();
  return env;
}

void check_slurm_world_size(int world_size, const LaunchEnv& env) {
  if (env.skip_slurm_check || !env.slurm_job_id || !env.slurm_ntasks) return;
  const auto ntasks = parse_count(*env.slurm_ntasks);
  if (!ntasks) fail("SLURM_NTASKS='", *env.slurm_ntasks, "' is not a task count");
  if (*ntasks == world_size) return;
  fail("MPI world size is ", world_size, " but Slurm job ", *env.slurm_job_id, " has SLURM_NTASKS=", *ntasks,
       ": Open MPI was probably started without PMIx, so every task is alone in its own world. Launch with "
       "`srun --mpi=pmix ...` (check `srun --mpi=list`), or set ELECTRA_SKIP_SLURM_CHECK=1 if a smaller "
       "world is intended (e.g. mpirun -np N inside a larger allocation)");
}

std::optional<std::string> check_local_rank(int local_rank, const LaunchEnv& env) {
  // Open MPI's variable wins: under mpirun inside an allocation SLURM_LOCALID is the batch step's (0).
  const char* source = nullptr;
  const std::optional<std::string>* value = nullptr;
  if (env.ompi_local_rank) {
    source = "OMPI_COMM_WORLD_LOCAL_RANK";
    value = &env.ompi_local_rank;
  } else if (env.slurm_localid) {
    source = "SLURM_LOCALID";
    value = &env.slurm_localid;
  } else {
    return std::nullopt;
  }
  const auto parsed = parse_count(**value);
  if (parsed && *parsed == local_rank) return std::nullopt;
  return detail::concat("node-local rank from MPI is ", local_rank, " but ", source, "=", **value,
                        "; using MPI's value (device selection follows it)");
}

}  // namespace electra::dist
