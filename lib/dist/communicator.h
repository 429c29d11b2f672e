// The MPI communicator every rank trains through: who am I (rank, node-local rank, nodes), blocking
// collectives on host buffers, agreement on step-boundary decisions, and a job-wide abort.
//
// Collectives must be called by every rank in the same order (MPI's rule); the agree_* helpers exist
// so decisions that one rank can make alone (stop signal, NaN loss, checkpoint due) become the same
// decision everywhere before anyone acts on it.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

namespace electra::dist {

class Communicator {
 public:
  // Initialises MPI (MPI_Init_thread, at least MPI_THREAD_FUNNELED: only the main thread calls MPI,
  // except MPI_Abort from the watchdog), checks the launch (Slurm world size, see launch_env.h) and
  // owns MPI: the last owner's destructor calls MPI_Finalize. Call once per process.
  static Communicator init(int& argc, char**& argv);

  // Wraps an existing communicator of an already initialised MPI (tests, sub-communicators). The
  // communicator is duplicated, so our collectives never interleave with the caller's; MPI is not
  // finalised by this object. Collective over `comm`.
  explicit Communicator(MPI_Comm comm);

  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // Rank among the ranks on this node (MPI_Comm_split_type SHARED, ordered by world rank); selects the
  // device. Cross-checked against the launcher's variable (a mismatch is logged as a warning).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  int num_nodes() const { return num_nodes_; }
  bool is_root() const { return rank_ == 0; }
  MPI_Comm comm() const { return comm_; }
  // The MPI thread level granted by MPI_Init_thread (MPI_THREAD_* constant); -1 when not owned.
  int thread_level() const { return thread_level_; }

  // In-place elementwise reductions over all ranks; every rank gets bitwise the same result.
  // Averages divide the sum by world_size (for integers use the sum and divide where it is meant).
  void allreduce_sum(std::span<float> data) const;
  void allreduce_sum(std::span<double> data) const;
  void allreduce_sum(std::span<int64_t> data) const;
  void allreduce_average(std::span<float> data) const;
  void allreduce_average(std::span<double> data) const;
  double allreduce_sum(double value) const;
  int64_t allreduce_sum(int64_t value) const;
  double allreduce_max(double value) const;
  int64_t allreduce_max(int64_t value) const;
  double allreduce_min(double value) const;
  int64_t allreduce_min(int64_t value) const;

  // Broadcasts from `root`; on other ranks the buffer must already have the root's size.
  void broadcast(void* data, size_t bytes, int root = 0) const;
  void broadcast(std::span<float> data, int root = 0) const;
  // Resizes on non-root ranks.
  void broadcast(std::string& text, int root = 0) const;
  // Returns root's value on every rank (the argument is ignored elsewhere).
  nlohmann::json broadcast_json(const nlohmann::json& value, int root = 0) const;

  // Every rank's string, in rank order, on `root`; other ranks get an empty vector.
  std::vector<std::string> gather_strings(const std::string& text, int root = 0) const;

  void barrier() const;

  // Logical OR / AND of one flag per rank: "does anyone want to stop?" / "is everyone finite?".
  bool agree_any(bool flag) const;
  bool agree_all(bool flag) const;

  // Logs `message` with this rank at fatal level, flushes logs and ends the whole job with MPI_Abort.
  // Never returns and never waits for other ranks.
  [[noreturn]] void abort(const std::string& message, int code = 1) const;

 private:
  Communicator() = default;
  void setup_topology();
  void release() noexcept;

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owns_mpi_ = false;
  int thread_level_ = -1;
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int num_nodes_ = 1;
};

// Collective: compares every rank's `identity` (what it is about to compute on: settings, data, model)
// with rank 0's. `differences` is "" where all agree; otherwise, on rank 0, one line per differing rank
// ("rank R on HOST: key: rank 0 A, rank R B; ...", config_differences), and this rank's own line
// elsewhere. Paths that may differ per node do not belong in `identity`.
struct RankAgreement {
  bool agree = true;
  std::string differences;
};
RankAgreement compare_with_rank0(const Communicator& comm, const nlohmann::json& identity);

// Aborts the job from anywhere, before or without a Communicator (MPI_COMM_WORLD if MPI is up,
// else std::_Exit). Logs `message` with the rank first.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace electra::dist
