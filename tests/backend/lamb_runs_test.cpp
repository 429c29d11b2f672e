// Backend<T>::lamb_step_runs on the CPU: bitwise the same for any thread count and on every call (the norms
// are summed in fixed pieces), runs of several pieces agree with the formula, elements outside every run
// are untouched, an empty call does nothing, and the interface's default refuses naming the backend.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/error.h"
#include "lib/core/philox.h"

namespace electra {
namespace {

template <typename T>
std::vector<T> random_vector(size_t n, uint64_t id, double lo, double hi) {
  PhiloxStream stream(11, RandomPurpose::kTest, 0, id);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(lo + (hi - lo) * stream.uniform(i));
  return out;
}

template <typename T>
class LambRunsTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LambRunsTest, Types);

TYPED_TEST(LambRunsTest, ThreadCountIndependentAndTheFormula) {
  using T = TypeParam;
  const int saved_threads = omp_get_max_threads();
  auto be = make_cpu_backend<T>();
  using Run = typename Backend<T>::LambRun;
  // A large table over several 16384-element pieces, weights and biases alternating, a run with adapt off,
  // one with all-zero parameters, and a gap.
  const std::vector<Run> runs = {{0, 100000, 0.01f, true},     {100000, 256, 0.0f, false},
                                 {100256, 65536, 0.01f, true}, {165792, 768, 0.0f, false},
                                 {166560, 40000, 0.0f, true},  {206560 + 50, 33000, 0.01f, true}};
  const size_t n = 206560 + 50 + 33000;
  auto params0 = random_vector<T>(n, 1, -1, 1);
  const auto grads = random_vector<T>(n, 2, -0.1, 0.1), m0 = random_vector<T>(n, 3, -0.01, 0.01),
             v0 = random_vector<T>(n, 4, 0, 1e-4);
  std::fill(params0.begin() + 166560, params0.begin() + 206560, T(0));  // ||p|| = 0: ratio 1
  for (long long t : {1LL, 7LL}) {
    std::vector<T> p_ref, m_ref, v_ref;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      for (int repeat = 0; repeat < 2; ++repeat) {
        std::vector<T> p = params0, m = m0, v = v0;
        be->lamb_step_runs(p.data(), grads.data(), m.data(), v.data(), runs.data(), runs.size(), 1e-2f, 0.9f, 0.999f,
                           1e-6f, t, 0.5f);
        if (p_ref.empty()) {
          p_ref = p, m_ref = m, v_ref = v;
          continue;
        }
        EXPECT_EQ(p, p_ref) << "threads " << threads << " t " << t;
        EXPECT_EQ(m, m_ref);
        EXPECT_EQ(v, v_ref);
      }
    }
    // The formula in double, run by run (the moments are the backend's own: they are elementwise).
    for (const Run& r : runs) {
      const double bc1 = 1 - std::pow(0.9f, static_cast<double>(t)), bc2 = 1 - std::pow(0.999f, static_cast<double>(t));
      double pn = 0, un = 0;
      std::vector<double> u(r.size);
      for (size_t i = 0; i < r.size; ++i) {
        const size_t j = r.offset + i;
        u[i] = (m_ref[j] / bc1) / (std::sqrt(v_ref[j] / bc2) + double(1e-6f)) + double(r.weight_decay) * params0[j];
        pn += double(params0[j]) * params0[j];
        un += u[i] * u[i];
      }
      const double ratio = r.adapt && pn > 0 && un > 0 ? std::sqrt(pn) / std::sqrt(un) : 1.0;
      if (r.offset == 100256) {
        EXPECT_GT(std::abs(ratio - 1.0), 0.1);  // an adapted run really is scaled
      }
      const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
      for (size_t i = 0; i < r.size; ++i) {
        const size_t j = r.offset + i;
        ASSERT_NEAR(p_ref[j], params0[j] - double(1e-2f) * ratio * u[i], tol * (1 + std::abs(params0[j])))
            << "run at " << r.offset << " element " << i << " t " << t;
      }
    }
    for (size_t i = 206560; i < 206560 + 50; ++i) ASSERT_EQ(p_ref[i], params0[i]);  // the gap
  }
  // An empty call does nothing (Lamb's probe at construction); t must be >= 1 otherwise.
  be->lamb_step_runs(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 1e-2f, 0.9f, 0.999f, 1e-6f, 1, 1.0f);
  std::vector<T> p = params0, m = m0, v = v0;
  EXPECT_THROW(be->lamb_step_runs(p.data(), grads.data(), m.data(), v.data(), runs.data(), runs.size(), 1e-2f, 0.9f,
                                  0.999f, 1e-6f, 0, 1.0f),
               Error);
  // The interface's default refuses, naming the backend and the key.
  try {
    be->Backend<T>::lamb_step_runs(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 1e-2f, 0.9f, 0.999f, 1e-6f, 1, 1.0f);
    ADD_FAILURE() << "expected the default lamb_step_runs to fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(be->name()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("optim.name"), std::string::npos) << e.what();
  }
  omp_set_num_threads(saved_threads);
}

}  // namespace
}  // namespace electra
