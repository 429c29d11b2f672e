// Backend<T>::adamw_step_runs: one call over many runs equals one adamw_step per run, bit for bit, for any
// thread count; the interface's default (a loop over adamw_step) gives the same.
#include <gtest/gtest.h>
#include <omp.h>

#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "lib/core/philox.h"

namespace electra {
namespace {

template <typename T>
std::vector<T> random_vector(size_t n, uint64_t id, double lo, double hi) {
  PhiloxStream stream(7, RandomPurpose::kTest, 0, id);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(lo + (hi - lo) * stream.uniform(i));
  return out;
}

template <typename T>
class AdamWRunsTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AdamWRunsTest, Types);

TYPED_TEST(AdamWRunsTest, EqualsOneAdamWStepPerRun) {
  using T = TypeParam;
  const int saved_threads = omp_get_max_threads();
  auto be = make_cpu_backend<T>();
  // Runs of the sizes a layout has (biases, LayerNorms, weights, a large table), decay alternating, with a
  // gap (elements outside every run stay untouched).
  using Run = typename Backend<T>::AdamWRun;
  const std::vector<Run> runs = {{0, 100000, 0.01f},     {100000, 256, 0.0f},       {100256, 65536, 0.01f},
                                 {165792, 768, 0.0f},    {166560, 16384, 0.01f},    {182944, 1, 0.0f},
                                 {182945, 40000, 0.01f}, {222945 + 50, 33000, 0.0f}};
  const size_t n = 222945 + 50 + 33000;
  const auto params0 = random_vector<T>(n, 1, -1, 1), grads = random_vector<T>(n, 2, -0.1, 0.1),
             m0 = random_vector<T>(n, 3, -0.01, 0.01), v0 = random_vector<T>(n, 4, 0, 1e-4);
  for (bool bias_correction : {false, true}) {
    for (long long t : {1LL, 7LL}) {
      // Reference: one adamw_step per run.
      std::vector<T> p_ref = params0, m_ref = m0, v_ref = v0;
      for (const Run& r : runs) {
        be->adamw_step(p_ref.data() + r.offset, grads.data() + r.offset, m_ref.data() + r.offset,
                       v_ref.data() + r.offset, r.size, 1e-3f, 0.9f, 0.999f, 1e-6f, r.weight_decay, t, 0.5f,
                       bias_correction);
      }
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<T> p = params0, m = m0, v = v0;
        be->adamw_step_runs(p.data(), grads.data(), m.data(), v.data(), runs.data(), runs.size(), 1e-3f, 0.9f, 0.999f,
                            1e-6f, t, 0.5f, bias_correction);
        EXPECT_EQ(p, p_ref) << "threads " << threads << " t " << t << " bias_correction " << bias_correction;
        EXPECT_EQ(m, m_ref);
        EXPECT_EQ(v, v_ref);
        // The interface's default implementation.
        std::vector<T> pd = params0, md = m0, vd = v0;
        be->Backend<T>::adamw_step_runs(pd.data(), grads.data(), md.data(), vd.data(), runs.data(), runs.size(), 1e-3f,
                                        0.9f, 0.999f, 1e-6f, t, 0.5f, bias_correction);
        EXPECT_EQ(pd, p_ref);
        EXPECT_EQ(md, m_ref);
        EXPECT_EQ(vd, v_ref);
      }
    }
  }
  // The gap between runs is left alone.
  std::vector<T> p = params0, m = m0, v = v0;
  be->adamw_step_runs(p.data(), grads.data(), m.data(), v.data(), runs.data(), runs.size(), 1e-3f, 0.9f, 0.999f, 1e-6f,
                      3, 1.0f, false);
  for (size_t i = 222945; i < 222945 + 50; ++i) ASSERT_EQ(p[i], params0[i]);
  EXPECT_THROW(be->adamw_step_runs(p.data(), grads.data(), m.data(), v.data(), runs.data(), runs.size(), 1e-3f, 0.9f,
                                   0.999f, 1e-6f, 0, 1.0f, false),
               Error);  // t must be >= 1
  omp_set_num_threads(saved_threads);
}

}  // namespace
}  // namespace electra
