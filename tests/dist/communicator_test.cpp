#include "lib/dist/communicator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "lib/dist/launch_env.h"
#include "tests/dist/mpi_test_common.h"

namespace electra::dist {
namespace {

using testing::identical_on_all_ranks;
using testing::world;

TEST(Communicator, TopologyIsConsistent) {
  const Communicator& comm = world();
  int mpi_rank = -1;
  int mpi_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
  EXPECT_EQ(comm.rank(), mpi_rank);
  EXPECT_EQ(comm.world_size(), mpi_size);
  EXPECT_GE(comm.thread_level(), MPI_THREAD_FUNNELED);
  EXPECT_GE(comm.local_rank(), 0);
  EXPECT_LT(comm.local_rank(), comm.local_size());
  EXPECT_GE(comm.num_nodes(), 1);
  // Every node's ranks sum to world size; leaders (local rank 0) count the nodes.
  EXPECT_EQ(comm.allreduce_sum(int64_t{comm.local_rank() == 0 ? comm.local_size() : 0}), comm.world_size());
  EXPECT_EQ(comm.allreduce_sum(int64_t{comm.local_rank() == 0}), comm.num_nodes());
  // mpirun sets OMPI_COMM_WORLD_LOCAL_RANK; ours must agree with it.
  EXPECT_FALSE(check_local_rank(comm.local_rank(), read_launch_env()).has_value());
}

TEST(Communicator, WrapsAnExistingCommunicatorAndMoves) {
  Communicator wrapped(MPI_COMM_WORLD);
  EXPECT_EQ(wrapped.rank(), world().rank());
  EXPECT_EQ(wrapped.world_size(), world().world_size());
  EXPECT_NE(wrapped.comm(), MPI_COMM_WORLD) << "the communicator is duplicated";
  Communicator moved(std::move(wrapped));
  EXPECT_EQ(moved.rank(), world().rank());
  EXPECT_EQ(moved.allreduce_sum(int64_t{1}), world().world_size());
}

TEST(Communicator, AllreduceSumExact) {
  const Communicator& comm = world();
  const int n = comm.world_size();
  std::vector<float> f(1001);
  std::vector<double> d(517);
  std::vector<int64_t> i(33);
  for (size_t k = 0; k < f.size(); ++k) f[k] = static_cast<float>(comm.rank() * 1000 + static_cast<int>(k));
  for (size_t k = 0; k < d.size(); ++k) d[k] = 0.5 * comm.rank() - static_cast<double>(k);
  for (size_t k = 0; k < i.size(); ++k) i[k] = (int64_t{1} << 40) * comm.rank() + static_cast<int64_t>(k);
  comm.allreduce_sum(std::span<float>(f));
  comm.allreduce_sum(std::span<double>(d));
  comm.allreduce_sum(std::span<int64_t>(i));
  const int64_t rank_sum = int64_t{n} * (n - 1) / 2;
  for (size_t k = 0; k < f.size(); ++k) EXPECT_EQ(f[k], static_cast<float>(rank_sum * 1000 + n * int64_t(k))) << k;
  for (size_t k = 0; k < d.size(); ++k) EXPECT_EQ(d[k], 0.5 * rank_sum - double(n) * double(k)) << k;
  for (size_t k = 0; k < i.size(); ++k) EXPECT_EQ(i[k], (int64_t{1} << 40) * rank_sum + n * int64_t(k)) << k;
}

TEST(Communicator, AllreduceAverageMatchesAndIsIdenticalEverywhere) {
  const Communicator& comm = world();
  std::mt19937 rng(1234 + comm.rank());  // different data per rank
  std::normal_distribution<float> normal;
  std::vector<float> data(4099);
  for (float& x : data) x = normal(rng);
  // Expected: every rank's data, summed in rank order in double.
  std::vector<double> expected(data.size(), 0.0);
  for (int r = 0; r < comm.world_size(); ++r) {
    std::vector<float> theirs = data;
    comm.broadcast(std::span<float>(theirs), r);
    for (size_t k = 0; k < data.size(); ++k) expected[k] += theirs[k];
  }
  std::vector<double> as_double(data.begin(), data.end());
  comm.allreduce_average(std::span<float>(data));
  comm.allreduce_average(std::span<double>(as_double));
  for (size_t k = 0; k < data.size(); ++k) {
    const double mean = expected[k] / comm.world_size();
    EXPECT_NEAR(data[k], mean, 1e-5 * (1 + std::abs(mean))) << k;
    EXPECT_NEAR(as_double[k], mean, 1e-12 * (1 + std::abs(mean))) << k;
  }
  EXPECT_TRUE(identical_on_all_ranks(std::span<const float>(data)));
  EXPECT_TRUE(identical_on_all_ranks(std::span<const double>(as_double)));
}

TEST(Communicator, ScalarReductions) {
  const Communicator& comm = world();
  const int n = comm.world_size();
  EXPECT_EQ(comm.allreduce_sum(int64_t{comm.rank() + 1}), int64_t{n} * (n + 1) / 2);
  EXPECT_EQ(comm.allreduce_sum(0.25 * comm.rank()), 0.25 * n * (n - 1) / 2);
  EXPECT_EQ(comm.allreduce_max(int64_t{comm.rank()}), n - 1);
  EXPECT_EQ(comm.allreduce_min(int64_t{comm.rank()}), 0);
  EXPECT_EQ(comm.allreduce_max(-1.5 * comm.rank()), 0.0);
  EXPECT_EQ(comm.allreduce_min(-1.5 * comm.rank()), -1.5 * (n - 1));
}

TEST(Communicator, BroadcastFromEveryRoot) {
  const Communicator& comm = world();
  for (int root = 0; root < comm.world_size(); ++root) {
    std::vector<float> floats(10, comm.rank() == root ? 3.5f : -1.0f);
    comm.broadcast(std::span<float>(floats), root);
    for (float x : floats) EXPECT_EQ(x, 3.5f);

    int64_t bytes = comm.rank() == root ? 0x0102030405060708 : 0;
    comm.broadcast(&bytes, sizeof(bytes), root);
    EXPECT_EQ(bytes, 0x0102030405060708);

    std::string text = comm.rank() == root ? std::string("from root ") + std::to_string(root) : "something longer here";
    comm.broadcast(text, root);
    EXPECT_EQ(text, std::string("from root ") + std::to_string(root));

    std::string empty = comm.rank() == root ? "" : "not empty";
    comm.broadcast(empty, root);
    EXPECT_EQ(empty, "");

    const nlohmann::json sent = {{"step", 1200}, {"ranks", {"a", "b"}}, {"root", root}};
    const nlohmann::json got = comm.broadcast_json(comm.rank() == root ? sent : nlohmann::json(nullptr), root);
    EXPECT_EQ(got, sent);
  }
}

TEST(Communicator, GatherStringsInRankOrder) {
  const Communicator& comm = world();
  // Rank 0's string is empty, the others grow: lengths differ per rank.
  const std::string mine =
      comm.rank() == 0 ? "" : "rank-" + std::to_string(comm.rank()) + std::string(comm.rank() * 3, 'x');
  for (int root : {0, comm.world_size() - 1}) {
    const std::vector<std::string> all = comm.gather_strings(mine, root);
    if (comm.rank() == root) {
      // No ASSERT: returning early here would leave the other ranks in the next gather.
      EXPECT_EQ(all.size(), static_cast<size_t>(comm.world_size()));
      if (all.size() != static_cast<size_t>(comm.world_size())) continue;
      EXPECT_EQ(all[0], "");
      for (int r = 1; r < comm.world_size(); ++r) {
        EXPECT_EQ(all[r], "rank-" + std::to_string(r) + std::string(r * 3, 'x'));
      }
    } else {
      EXPECT_TRUE(all.empty());
    }
  }
}

TEST(Communicator, AgreeAnyAndAll) {
  const Communicator& comm = world();
  const int last = comm.world_size() - 1;
  EXPECT_FALSE(comm.agree_any(false));
  EXPECT_TRUE(comm.agree_any(comm.rank() == last));  // one rank got SIGTERM
  EXPECT_TRUE(comm.agree_any(true));
  EXPECT_TRUE(comm.agree_all(true));
  EXPECT_FALSE(comm.agree_all(comm.rank() != last));  // one rank saw a NaN
  EXPECT_FALSE(comm.agree_all(false));
}

}  // namespace
}  // namespace electra::dist
