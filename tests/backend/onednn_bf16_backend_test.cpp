// The fast CPU bf16 backend (make_onednn_bf16_backend) beyond the parity table (tests/backend/parity: its
// cpu_bf16_onednn column checks every op against the bf16 reference, bit for bit but for the products):
// its name and wide backend, parameter gradients that differ from the reference's only in the order of the
// float sums, refusals, bitwise run to run and inside parallel chunks as on one thread. And the dispatch:
// with oneDNN limited to an ISA without bf16 instructions (ONEDNN_MAX_CPU_ISA, in a child process) the
// products are the reference's, bitwise.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/onednn_matmul.h"
#include "lib/core/error.h"
#include "tests/backend/test_util.h"

namespace electra {
namespace {

using bf16 = bfloat16;

// Random bf16 values in [lo, hi).
std::vector<bf16> random_bf16(size_t n, uint64_t id, double lo = -1.0, double hi = 1.0) {
  const std::vector<double> v = test::random_values(n, id, lo, hi);
  std::vector<bf16> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = bf16(static_cast<float>(v[i]));
  return out;
}
std::vector<double> as_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

class OnednnBf16Backend : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu::cpu_bf16_support().onednn_built) GTEST_SKIP() << "this build has no oneDNN";
    fast = make_onednn_bf16_backend(*wide);
    ref = make_cpu_bf16_backend(*wide);
  }
  // Both backends' result of op(backend, output) on a copy of `init`.
  template <typename Op>
  std::pair<std::vector<bf16>, std::vector<bf16>> both(const std::vector<bf16>& init, Op op) {
    std::vector<bf16> a = init, b = init;
    op(*fast, a);
    op(*ref, b);
    return {a, b};
  }

  std::unique_ptr<Backend<float>> wide = make_cpu_backend<float>();
  std::unique_ptr<Backend<bf16>> fast;
  std::unique_ptr<Backend<bf16>> ref;
};

TEST_F(OnednnBf16Backend, NameDeviceAndWide) {
  EXPECT_EQ(fast->name(), "cpu-bf16-onednn");
  EXPECT_EQ(fast->device(), DeviceKind::kCpu);
  EXPECT_EQ(&fast->wide(), wide.get());
  std::printf("%s\n", cpu::cpu_bf16_support().summary().c_str());
}

// The table holds dW and dbias to bf16's tolerance; they are sums of exact bf16 products in float, so only
// the order of the float additions may differ from the reference's.
TEST_F(OnednnBf16Backend, LinearParameterGradientsAccumulateInFloat) {
  const int rows = 130, in = 96, out = 72;
  const std::vector<bf16> x = random_bf16(rows * in, 7), w = random_bf16(out * in, 8);
  const std::vector<bf16> dy = random_bf16(rows * out, 10);
  // Parameter gradients accumulate (+=) into float buffers.
  const std::vector<double> dw0 = test::random_values(out * in, 11), db0 = test::random_values(out, 12);
  std::vector<float> dw_fast(dw0.begin(), dw0.end()), dw_ref = dw_fast, db_fast(db0.begin(), db0.end()),
                                                      db_ref = db_fast;
  std::vector<bf16> dx_fast(rows * in), dx_ref(rows * in);
  fast->linear_backward(dx_fast.data(), dw_fast.data(), db_fast.data(), dy.data(), x.data(), w.data(), rows, in, out);
  ref->linear_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(test::all_near(as_double(dw_fast), as_double(dw_ref), 1e-5, 1e-4));
  EXPECT_TRUE(test::all_near(as_double(db_fast), as_double(db_ref), 1e-5, 1e-4));
  // dx null: the parameter gradients only.
  fast->linear_backward(nullptr, dw_fast.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  ref->linear_backward(nullptr, dw_ref.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(test::all_near(as_double(dw_fast), as_double(dw_ref), 1e-5, 1e-4));
}

TEST_F(OnednnBf16Backend, Refusals) {
  std::vector<bf16> x(8), w(8), y(8);
  EXPECT_THROW(fast->linear_forward(y.data(), x.data(), w.data(), nullptr, 2, 0, 4), Error);
  // The optimizer runs on wide() (fp32 master weights), not on bf16 storage.
  EXPECT_THROW(fast->adamw_step(nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 0, 0, 0, 1, 1, true), Error);
}

// One attention forward + backward; returns context, probs, dqkv and the keep bits.
struct AttentionRun {
  std::vector<bf16> context, probs, dqkv;
  std::vector<uint8_t> keep;
};
AttentionRun run_attention(Backend<bf16>& be, const std::vector<bf16>& qkv, const std::vector<bf16>& dcontext,
                           const std::vector<int32_t>* mask, int B, int S, int H, int D, float dropout) {
  AttentionRun r;
  const size_t pairs = static_cast<size_t>(B) * H * S * S;
  r.context.resize(static_cast<size_t>(B) * S * H * D);
  r.probs.resize(pairs);
  r.keep.resize(pairs);
  r.dqkv.assign(qkv.size(), bf16(std::nanf("")));  // overwritten entirely
  std::vector<bf16> scratch(pairs);
  DropoutKey key;
  key.seed = 5, key.step = 2, key.lane = 9, key.first_example = 3;
  key.elements_per_example = static_cast<uint64_t>(H) * S * S;
  const int32_t* m = mask != nullptr ? mask->data() : nullptr;
  be.attention_forward(r.context.data(), r.probs.data(), r.keep.data(), qkv.data(), m, B, S, H, D, dropout, key);
  be.attention_backward(r.dqkv.data(), scratch.data(), dcontext.data(), qkv.data(), r.probs.data(), r.keep.data(), m, B,
                        S, H, D, dropout);
  return r;
}

TEST_F(OnednnBf16Backend, SameBitsRunToRunAndInsideParallelChunks) {
  const int B = 4, S = 32, H = 2, D = 16, rows = B * S, in = 64, out = 96;
  const std::vector<bf16> qkv = random_bf16(static_cast<size_t>(B) * S * 3 * H * D, 17);
  const std::vector<bf16> dcontext = random_bf16(static_cast<size_t>(B) * S * H * D, 18);
  const std::vector<bf16> x = random_bf16(rows * in, 19), w = random_bf16(out * in, 20),
                          dy = random_bf16(rows * out, 21);
  struct Result {
    AttentionRun attention;
    std::vector<bf16> y, dx;
    std::vector<float> dw;
  };
  const auto run = [&]() {
    Result r;
    r.attention = run_attention(*fast, qkv, dcontext, nullptr, B, S, H, D, 0.1f);
    r.y.resize(rows * out);
    r.dx.resize(rows * in);
    r.dw.assign(out * in, 0.0f);
    fast->linear_forward(r.y.data(), x.data(), w.data(), nullptr, rows, in, out);
    fast->linear_backward(r.dx.data(), r.dw.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
    return r;
  };
  const auto expect_same = [](const Result& a, const Result& b, const std::string& what) {
    EXPECT_EQ(a.attention.context, b.attention.context) << what;
    EXPECT_EQ(a.attention.dqkv, b.attention.dqkv) << what;
    EXPECT_EQ(a.y, b.y) << what;
    EXPECT_EQ(a.dx, b.dx) << what;
    EXPECT_EQ(a.dw, b.dw) << what;
  };
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Result one = run();
  expect_same(run(), one, "run to run, 1 thread");
  // The model's parallel chunks: each OpenMP thread calls the backend on its own slice; every oneDNN call
  // there runs on its thread alone, so it gives the one-thread bits whatever the thread count.
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    std::vector<Result> chunks(2);
#pragma omp parallel for num_threads(2) schedule(static, 1)
    for (int k = 0; k < 2; ++k) chunks[k] = run();
    for (int k = 0; k < 2; ++k)
      expect_same(chunks[k], one, "chunk " + std::to_string(k) + ", " + std::to_string(threads) + " threads");
    // A call outside a parallel region uses every thread: oneDNN's split (and so the bits) may depend on
    // the count there (onednn_matmul_test's survey), so it is compared run to run only.
    const Result wide = run();
    expect_same(run(), wide, "run to run, " + std::to_string(threads) + " threads");
  }
  omp_set_num_threads(saved);
}

// Attention's products run on brgemm where bf16 products are native: the backend copies the heads dense,
// since oneDNN serves products read in place through qkv's strides with gemm:jit, which leaves AMX's tiles
// idle (a quarter of the speed on ELECTRA-small's heads). Checks the kernels of the primitives this thread
// made for one attention forward + backward at ELECTRA-small's head shape, and in a second group size.
TEST_F(OnednnBf16Backend, AttentionProductsRunOnBrgemm) {
  if (!cpu::cpu_bf16_support().native) GTEST_SKIP() << "no native bf16 products here: the reference runs them";
  const int saved = omp_get_max_threads();
  const std::vector<std::string> earlier = cpu::onednn_matmul_cached_implementations();  // other tests'
  for (auto [B, S, H, D] : {std::array{2, 128, 4, 64}, std::array{3, 40, 2, 16}}) {
    const std::vector<bf16> qkv = random_bf16(static_cast<size_t>(B) * S * 3 * H * D, 30);
    const std::vector<bf16> dcontext = random_bf16(static_cast<size_t>(B) * S * H * D, 31);
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      const size_t before = cpu::onednn_matmul_cached_primitives();
      run_attention(*fast, qkv, dcontext, nullptr, B, S, H, D, 0.1f);
      EXPECT_GT(cpu::onednn_matmul_cached_primitives(), before);
    }
  }
  omp_set_num_threads(saved);
  const std::vector<std::string> all = cpu::onednn_matmul_cached_implementations();
  std::vector<std::string> kernels;  // the ones attention made (both lists are sorted)
  std::set_difference(all.begin(), all.end(), earlier.begin(), earlier.end(), std::back_inserter(kernels));
  EXPECT_FALSE(kernels.empty());
  for (const std::string& kernel : kernels) {
    EXPECT_EQ(kernel.rfind("brg:", 0), 0u) << kernel;
    std::printf("%s\n", kernel.c_str());
  }
}

// Runs in a child process with ONEDNN_MAX_CPU_ISA set (read once per process by oneDNN): prints what the
// backend saw and whether its products equal the reference's bitwise.
TEST_F(OnednnBf16Backend, ChildReportsDispatch) {
  if (std::getenv("ELECTRA_TEST_ONEDNN_CHILD") == nullptr) GTEST_SKIP() << "runs only as the dispatch child";
  const int m = 33, n = 20, k = 50;
  const std::vector<bf16> a = random_bf16(m * k, 26), b = random_bf16(k * n, 27);
  auto [got, want] = both(std::vector<bf16>(m * n), [&](Backend<bf16>& be, std::vector<bf16>& c) {
    be.gemm(Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
  });
  const cpu::CpuBf16Support s = cpu::cpu_bf16_support();
  std::printf("DISPATCH native=%d isa=%s bitwise_reference=%d\n", s.native ? 1 : 0, s.onednn_isa.c_str(),
              got == want ? 1 : 0);
}

std::string run_child(const std::string& isa) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();  // this test binary
  const std::string command = "ELECTRA_TEST_ONEDNN_CHILD=1 ONEDNN_MAX_CPU_ISA=" + isa + " DNNL_MAX_CPU_ISA=" + isa +
                              " '" + self + "' --gtest_filter=OnednnBf16Backend.ChildReportsDispatch 2>&1";
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[512];
    while (fgets(buffer, sizeof buffer, pipe) != nullptr) out += buffer;
    pclose(pipe);
  }
  const size_t at = out.find("DISPATCH ");
  return at == std::string::npos ? "no report: " + out : out.substr(at, out.find('\n', at) - at);
}

// Without bf16 instructions (oneDNN held to AVX512_CORE or AVX2) the products are the reference's,
// bitwise; with them (where this CPU has them) they are oneDNN's.
TEST_F(OnednnBf16Backend, DispatchFollowsTheEffectiveIsa) {
  for (const char* isa : {"AVX512_CORE", "AVX2"}) {
    const std::string report = run_child(isa);
    std::printf("%s: %s\n", isa, report.c_str());
    EXPECT_NE(report.find("native=0"), std::string::npos) << isa << ": " << report;
    EXPECT_NE(report.find("bitwise_reference=1"), std::string::npos) << isa << ": " << report;
  }
  if (cpu::cpu_bf16_support().native) {
    const std::string report = run_child("ALL");
    std::printf("ALL: %s\n", report.c_str());
    EXPECT_NE(report.find("native=1"), std::string::npos) << report;
  }
}

}  // namespace
}  // namespace electra
