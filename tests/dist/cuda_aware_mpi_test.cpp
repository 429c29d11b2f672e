#include <gtest/gtest.h>

#include <string>

#include "lib/dist/gradient_transport.h"
#include "tests/dist/mpi_test_common.h"

namespace electra::dist {
namespace {

using testing::world;

// The answer comes from the MPI library at run time: whatever it is, it must be coherent and the same
// on every rank, and a "no" must say why.
TEST(CudaAwareMpi, QueryIsCoherentOnEveryRank) {
  const CudaAwareMpiSupport support = query_cuda_aware_mpi();
  if (support.available) {
    EXPECT_TRUE(support.reason.empty()) << support.reason;
  } else {
    EXPECT_NE(support.reason.find("CUDA"), std::string::npos) << support.reason;
  }
  const int64_t yes = world().allreduce_sum(int64_t{support.available});
  EXPECT_TRUE(yes == 0 || yes == world().world_size()) << yes << " ranks say CUDA-aware";
}

// The description is made on rank 0 and broadcast: every rank gets the same answer.
TEST(SharedGpus, FoundAcrossRanksTheSameEverywhere) {
  const Communicator& comm = world();
  EXPECT_EQ(find_shared_gpus(comm, "bus-" + std::to_string(comm.rank())), "");
  const std::string shared = find_shared_gpus(comm, "bus-" + std::to_string(comm.rank() / 2));
  if (comm.world_size() == 1) {
    EXPECT_EQ(shared, "");
  } else {
    EXPECT_EQ(shared.find("ranks 0 and 1 share GPU bus-0 on "), 0u) << shared;
  }
  EXPECT_TRUE(testing::identical_on_all_ranks(std::span<const char>(shared.data(), shared.size())));
}

}  // namespace
}  // namespace electra::dist
