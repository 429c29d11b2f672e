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

}  // namespace
}  // namespace electra::dist
