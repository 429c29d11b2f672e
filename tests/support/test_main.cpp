// main() of every electra_test binary: defaults for the environment the tests read (CTest cannot pass a
// multi-entry ENVIRONMENT through gtest_discover_tests reliably), one thread unless a test asks for more
// (ctest -j runs binaries side by side on small machines), then GoogleTest.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdlib>

extern "C" void openblas_set_num_threads(int num_threads);

int main(int argc, char** argv) {
  setenv("ELECTRA_PYTHON", ELECTRA_TEST_PYTHON, /*overwrite=*/0);
  setenv("ELECTRA_BUILD_DIR", ELECTRA_TEST_BUILD_DIR, 0);
  setenv("ELECTRA_SKIP_SLURM_CHECK", "1", 0);
  const char* threads = std::getenv("ELECTRA_TEST_THREADS");
  const int n = threads != nullptr ? std::atoi(threads) : 1;
  omp_set_num_threads(n > 0 ? n : 1);
  openblas_set_num_threads(n > 0 ? n : 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
