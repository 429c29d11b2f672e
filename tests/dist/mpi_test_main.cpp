// GoogleTest main for tests run under mpirun: every rank runs every test in the same order (tests must
// make the same collective calls on all ranks, so they use EXPECT_*, or ASSERT_* only after their last
// collective). Rank 0 prints the usual report; other ranks print their failures prefixed with the rank.
// The exit status is non-zero on every rank if any rank failed, and kAllSkippedExitCode when every rank
// skipped every test it ran (no GPU for the NCCL tests): CTest reports the test as skipped
// (SKIP_RETURN_CODE in cmake/ElectraTargets.cmake) instead of passed.
#include <gtest/gtest.h>

#include <iostream>

#include "lib/core/log.h"
#include "tests/dist/mpi_test_common.h"

namespace electra::dist::testing {
namespace {

const Communicator* g_world = nullptr;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << (result.file_name() ? result.file_name() : "?") << ":"
              << result.line_number() << ": failure\n"
              << result.summary() << std::endl;
  }

 private:
  int rank_;
};

}  // namespace

const Communicator& world() { return *g_world; }

}  // namespace electra::dist::testing

int main(int argc, char** argv) {
  auto comm = electra::dist::Communicator::init(argc, argv);
  electra::log::LogOptions log_options;
  log_options.rank = comm.rank();
  log_options.world_size = comm.world_size();
  electra::log::init(log_options);
  electra::dist::testing::g_world = &comm;
  ::testing::InitGoogleTest(&argc, argv);
  if (comm.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new electra::dist::testing::RankFailurePrinter(comm.rank()));
  }
  const int local = RUN_ALL_TESTS();
  const bool all_passed = comm.agree_all(local == 0);
  if (comm.rank() == 0 && !all_passed && local == 0) std::cerr << "some rank other than 0 failed" << std::endl;
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  const bool skipped_all = unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count();
  constexpr int kAllSkippedExitCode = 77;
  if (comm.agree_all(skipped_all) && all_passed) return kAllSkippedExitCode;
  return all_passed ? 0 : 1;
}
