// What the launcher (mpirun, srun) told this process through the environment, and the checks made on
// it. Pure functions of the values so they can be tested without a scheduler.
#pragma once

#include <optional>
#include <string>

namespace electra::dist {

struct LaunchEnv {
  std::optional<std::string> slurm_ntasks;     // SLURM_NTASKS
  std::optional<std::string> slurm_job_id;     // SLURM_JOB_ID
  std::optional<std::string> slurm_localid;    // SLURM_LOCALID (set per task by srun)
  std::optional<std::string> ompi_local_rank;  // OMPI_COMM_WORLD_LOCAL_RANK (set by Open MPI's launcher)
  bool skip_slurm_check = false;               // ELECTRA_SKIP_SLURM_CHECK=1
};

// Reads the variables above from the process environment.
LaunchEnv read_launch_env();

// Inside a Slurm job (SLURM_JOB_ID and SLURM_NTASKS set) the MPI world must have SLURM_NTASKS ranks;
// a mismatch (typically every task alone in a world of 1) means Open MPI was started without PMIx.
// Throws electra::Error saying so. Does nothing outside Slurm or when skip_slurm_check is set.
void check_slurm_world_size(int world_size, const LaunchEnv& env);

// Compares the node-local rank MPI computed (shared-memory split) with the launcher's variable:
// OMPI_COMM_WORLD_LOCAL_RANK when present (mpirun, also inside a Slurm allocation), else SLURM_LOCALID
// (srun). Returns a warning message on a mismatch, nullopt when they agree or nothing is set.
std::optional<std::string> check_local_rank(int local_rank, const LaunchEnv& env);

}  // namespace electra::dist
