#include "lib/dist/communicator.h"

#include <algorithm>
#include <boost/log/core.hpp>
#include <climits>
#include <cstdlib>
#include <utility>

#include "lib/core/config.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/dist/launch_env.h"

namespace electra::dist {
namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  fail(what, " failed: ", std::string(text, static_cast<size_t>(length)));
}

bool mpi_is_up() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// MPI counts are int: large buffers go in slices of at most INT_MAX elements (same slicing on every
// rank, so the collectives match).
template <typename Fn>
void for_each_slice(size_t count, Fn&& fn) {
  constexpr size_t kMax = static_cast<size_t>(INT_MAX);
  for (size_t begin = 0; begin < count; begin += kMax) fn(begin, static_cast<int>(std::min(kMax, count - begin)));
}

template <typename T>
void allreduce_in_place(MPI_Comm comm, std::span<T> data, MPI_Datatype type, MPI_Op op) {
  for_each_slice(data.size(), [&](size_t begin, int count) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data() + begin, count, type, op, comm), "MPI_Allreduce");
  });
}

template <typename T>
T allreduce_scalar(MPI_Comm comm, T value, MPI_Datatype type, MPI_Op op) {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, type, op, comm), "MPI_Allreduce");
  return value;
}

[[noreturn]] void log_and_abort(MPI_Comm comm, int rank, const std::string& message, int code) {
  ELECTRA_LOG(fatal) << "rank " << rank << ": " << message << " (aborting the job)";
  boost::log::core::get()->flush();
  if (mpi_is_up()) MPI_Abort(comm == MPI_COMM_NULL ? MPI_COMM_WORLD : comm, code);
  // MPI_Abort does not return in practice; if MPI was never started there is nothing to tear down.
  std::_Exit(code == 0 ? 1 : code);
}

}  // namespace

Communicator Communicator::init(int& argc, char**& argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) fail("Communicator::init: MPI is already initialised");
  Communicator result;
  int provided = MPI_THREAD_SINGLE;
  check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  result.owns_mpi_ = true;
  result.thread_level_ = provided;
  if (provided < MPI_THREAD_FUNNELED) {
    fail("MPI_Init_thread granted thread level ", provided, ", need at least MPI_THREAD_FUNNELED (",
         MPI_THREAD_FUNNELED, ")");
  }
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &result.comm_), "MPI_Comm_dup");
  result.setup_topology();

  const LaunchEnv env = read_launch_env();
  check_slurm_world_size(result.world_size_, env);
  if (auto warning = check_local_rank(result.local_rank_, env)) {
    ELECTRA_LOG(warning) << "rank " << result.rank_ << ": " << *warning;
  }
  return result;
}

Communicator::Communicator(MPI_Comm comm) {
  if (!mpi_is_up()) fail("Communicator(MPI_Comm): MPI is not initialised");
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  setup_topology();
}

void Communicator::setup_topology() {
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &world_size_), "MPI_Comm_size");
  MPI_Comm local = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
  check_mpi(MPI_Comm_rank(local, &local_rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(local, &local_size_), "MPI_Comm_size");
  MPI_Comm_free(&local);
  // One leader per node: counting leaders counts nodes.
  num_nodes_ = static_cast<int>(allreduce_sum(static_cast<int64_t>(local_rank_ == 0 ? 1 : 0)));
}

Communicator::Communicator(Communicator&& other) noexcept { *this = std::move(other); }

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    release();
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    owns_mpi_ = std::exchange(other.owns_mpi_, false);
    thread_level_ = other.thread_level_;
    rank_ = other.rank_;
    world_size_ = other.world_size_;
    local_rank_ = other.local_rank_;
    local_size_ = other.local_size_;
    num_nodes_ = other.num_nodes_;
  }
  return *this;
}

Communicator::~Communicator() { release(); }

void Communicator::release() noexcept {
  if (mpi_is_up()) {
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }
  comm_ = MPI_COMM_NULL;
  owns_mpi_ = false;
}

void Communicator::allreduce_sum(std::span<float> data) const { allreduce_in_place(comm_, data, MPI_FLOAT, MPI_SUM); }
void Communicator::allreduce_sum(std::span<double> data) const { allreduce_in_place(comm_, data, MPI_DOUBLE, MPI_SUM); }
void Communicator::allreduce_sum(std::span<int64_t> data) const {
  allreduce_in_place(comm_, data, MPI_INT64_T, MPI_SUM);
}

void Communicator::allreduce_average(std::span<float> data) const {
  allreduce_sum(data);
  const float scale = 1.0f / static_cast<float>(world_size_);
  for (float& x : data) x *= scale;
}

void Communicator::allreduce_average(std::span<double> data) const {
  allreduce_sum(data);
  const double scale = 1.0 / static_cast<double>(world_size_);
  for (double& x : data) x *= scale;
}

double Communicator::allreduce_sum(double value) const { return allreduce_scalar(comm_, value, MPI_DOUBLE, MPI_SUM); }
int64_t Communicator::allreduce_sum(int64_t value) const {
  return allreduce_scalar(comm_, value, MPI_INT64_T, MPI_SUM);
}
double Communicator::allreduce_max(double value) const { return allreduce_scalar(comm_, value, MPI_DOUBLE, MPI_MAX); }
int64_t Communicator::allreduce_max(int64_t value) const {
  return allreduce_scalar(comm_, value, MPI_INT64_T, MPI_MAX);
}
double Communicator::allreduce_min(double value) const { return allreduce_scalar(comm_, value, MPI_DOUBLE, MPI_MIN); }
int64_t Communicator::allreduce_min(int64_t value) const {
  return allreduce_scalar(comm_, value, MPI_INT64_T, MPI_MIN);
}

void Communicator::broadcast(void* data, size_t bytes, int root) const {
  auto* base = static_cast<char*>(data);
  for_each_slice(bytes, [&](size_t begin, int count) {
    check_mpi(MPI_Bcast(base + begin, count, MPI_BYTE, root, comm_), "MPI_Bcast");
  });
}

void Communicator::broadcast(std::span<float> data, int root) const {
  for_each_slice(data.size(), [&](size_t begin, int count) {
    check_mpi(MPI_Bcast(data.data() + begin, count, MPI_FLOAT, root, comm_), "MPI_Bcast");
  });
}

void Communicator::broadcast(std::string& text, int root) const {
  uint64_t size = text.size();
  check_mpi(MPI_Bcast(&size, 1, MPI_UINT64_T, root, comm_), "MPI_Bcast");
  if (rank_ != root) text.resize(size);
  broadcast(text.data(), size, root);
}

nlohmann::json Communicator::broadcast_json(const nlohmann::json& value, int root) const {
  std::string text = rank_ == root ? value.dump() : std::string();
  broadcast(text, root);
  return rank_ == root ? value : nlohmann::json::parse(text);
}

std::vector<std::string> Communicator::gather_strings(const std::string& text, int root) const {
  if (text.size() > static_cast<size_t>(INT_MAX)) fail("gather_strings: string of ", text.size(), " bytes is too long");
  const int length = static_cast<int>(text.size());
  std::vector<int> lengths(rank_ == root ? world_size_ : 0);
  check_mpi(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_), "MPI_Gather");
  std::vector<int> displacements;
  std::string joined;
  if (rank_ == root) {
    displacements.resize(world_size_);
    int64_t total = 0;
    for (int r = 0; r < world_size_; ++r) {
      displacements[r] = static_cast<int>(total);
      total += lengths[r];
      if (total > INT_MAX) fail("gather_strings: ", total, " bytes in total is too many for one MPI_Gatherv");
    }
    joined.resize(static_cast<size_t>(total));
  }
  check_mpi(MPI_Gatherv(text.data(), length, MPI_CHAR, joined.data(), lengths.data(), displacements.data(), MPI_CHAR,
                        root, comm_),
            "MPI_Gatherv");
  std::vector<std::string> result;
  if (rank_ == root) {
    result.reserve(world_size_);
    for (int r = 0; r < world_size_; ++r) result.emplace_back(joined.substr(displacements[r], lengths[r]));
  }
  return result;
}

void Communicator::barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

RankAgreement compare_with_rank0(const Communicator& comm, const nlohmann::json& identity) {
  const nlohmann::json rank0 = comm.broadcast_json(identity);
  const std::string me = "rank " + std::to_string(comm.rank());
  const std::vector<std::string> differences = config_differences(rank0, identity, "", "rank 0", me);
  std::string line;
  if (!differences.empty()) {
    constexpr size_t kShown = 4;
    line = me + " on " + host_name() + ": ";
    for (size_t i = 0; i < differences.size() && i < kShown; ++i) line += (i > 0 ? "; " : "") + differences[i];
    if (differences.size() > kShown) line += "; and " + std::to_string(differences.size() - kShown) + " more";
  }
  const std::vector<std::string> lines = comm.gather_strings(line);
  RankAgreement agreement{.agree = comm.agree_all(differences.empty()), .differences = line};
  if (comm.is_root()) {
    agreement.differences.clear();
    for (const std::string& l : lines)
      if (!l.empty()) agreement.differences += (agreement.differences.empty() ? "" : "\n") + l;
  }
  return agreement;
}

bool Communicator::agree_any(bool flag) const {
  int value = flag ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_LOR, comm_), "MPI_Allreduce");
  return value != 0;
}

bool Communicator::agree_all(bool flag) const {
  int value = flag ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_LAND, comm_), "MPI_Allreduce");
  return value != 0;
}

void Communicator::abort(const std::string& message, int code) const { log_and_abort(comm_, rank_, message, code); }

void abort_job(const std::string& message, int code) {
  int rank = log::rank();
  if (mpi_is_up()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  log_and_abort(MPI_COMM_WORLD, rank, message, code);
}

}  // namespace electra::dist
