// The fast CPU bf16 backend (make_onednn_bf16_backend) op by op against the bf16 reference
// (make_cpu_bf16_backend) on the same bf16 inputs: the products (oneDNN: bf16 operands, float
// accumulation) and attention within bf16 rounding, the other ops as the reference (their kernels have
// their own tests in bf16_kernels_test.cpp); bitwise run to run, and inside parallel chunks as on one thread. And the
// dispatch: with oneDNN limited to an ISA without bf16 instructions (ONEDNN_MAX_CPU_ISA, in a child
// process) the products are the reference's, bitwise.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
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
std::vector<double> as_double(const std::vector<bf16>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(x[i]);
  return out;
}
std::vector<double> as_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// ||a - b|| / ||b||.
template <typename A, typename B>
double rel_l2(const std::vector<A>& a, const std::vector<B>& b) {
  double d2 = 0, b2 = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    d2 += (x - y) * (x - y);
    b2 += y * y;
  }
  return b2 == 0 ? std::sqrt(d2) : std::sqrt(d2 / b2);
}

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

TEST_F(OnednnBf16Backend, GemmEveryTransposeLeadingDimensionsAlphaBeta) {
  const int m = 37, n = 45, k = 70;
  for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
    for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
      const int lda = (ta == Transpose::kNo ? k : m) + 3, ldb = (tb == Transpose::kNo ? n : k) + 5, ldc = n + 2;
      const std::vector<bf16> a = random_bf16(static_cast<size_t>(ta == Transpose::kNo ? m : k) * lda, 1);
      const std::vector<bf16> b = random_bf16(static_cast<size_t>(tb == Transpose::kNo ? k : n) * ldb, 2);
      const std::vector<bf16> c0 = random_bf16(static_cast<size_t>(m) * ldc, 3);
      for (float beta : {0.0f, 0.5f}) {
        auto [got, want] = both(c0, [&](Backend<bf16>& be, std::vector<bf16>& c) {
          be.gemm(ta, tb, m, n, k, 0.75f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        });
        EXPECT_TRUE(test::all_near(as_double(got), as_double(want), 1e-2, 1e-2)) << "beta " << beta;
        for (int r = 0; r < m; ++r) {  // the gap between rows is not the op's
          for (int j = n; j < ldc; ++j) ASSERT_EQ(got[r * ldc + j], c0[r * ldc + j]);
        }
      }
    }
  }
}

TEST_F(OnednnBf16Backend, GemmStridedBatched) {
  const int m = 16, n = 24, k = 40, batch = 3;
  const long long sa = m * k + 8, sb = k * n + 4, sc = m * n + 16;
  const std::vector<bf16> a = random_bf16(batch * sa, 4), b = random_bf16(batch * sb, 5);
  const std::vector<bf16> c0 = random_bf16(batch * sc, 6);
  auto [got, want] = both(c0, [&](Backend<bf16>& be, std::vector<bf16>& c) {
    be.gemm_strided_batched(Transpose::kNo, Transpose::kYes, m, n, k, 1.0f, a.data(), k, sa, b.data(), k, k * n + 4,
                            0.0f, c.data(), n, sc, batch);
  });
  (void)sb;
  EXPECT_TRUE(test::all_near(as_double(got), as_double(want), 1e-2, 1e-2));
}

TEST_F(OnednnBf16Backend, LinearForwardAndBackwardAccumulateInFloat) {
  const int rows = 130, in = 96, out = 72;
  const std::vector<bf16> x = random_bf16(rows * in, 7), w = random_bf16(out * in, 8), bias = random_bf16(out, 9);
  const std::vector<bf16> dy = random_bf16(rows * out, 10);
  auto [y_fast, y_ref] = both(std::vector<bf16>(rows * out), [&](Backend<bf16>& be, std::vector<bf16>& y) {
    be.linear_forward(y.data(), x.data(), w.data(), bias.data(), rows, in, out);
  });
  EXPECT_TRUE(test::all_near(as_double(y_fast), as_double(y_ref), 1e-2, 1e-2));
  auto [nb_fast, nb_ref] = both(std::vector<bf16>(rows * out), [&](Backend<bf16>& be, std::vector<bf16>& y) {
    be.linear_forward(y.data(), x.data(), w.data(), nullptr, rows, in, out);
  });
  EXPECT_TRUE(test::all_near(as_double(nb_fast), as_double(nb_ref), 1e-2, 1e-2));

  // Parameter gradients accumulate (+=) into float buffers.
  const std::vector<double> dw0 = test::random_values(out * in, 11), db0 = test::random_values(out, 12);
  std::vector<float> dw_fast(dw0.begin(), dw0.end()), dw_ref = dw_fast, db_fast(db0.begin(), db0.end()),
                                                      db_ref = db_fast;
  std::vector<bf16> dx_fast(rows * in), dx_ref(rows * in);
  fast->linear_backward(dx_fast.data(), dw_fast.data(), db_fast.data(), dy.data(), x.data(), w.data(), rows, in, out);
  ref->linear_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(test::all_near(as_double(dx_fast), as_double(dx_ref), 1e-2, 1e-2));
  // Sums of exact bf16 products in float: only the order of the float additions differs.
  EXPECT_TRUE(test::all_near(as_double(dw_fast), as_double(dw_ref), 1e-5, 1e-4));
  EXPECT_TRUE(test::all_near(as_double(db_fast), as_double(db_ref), 1e-5, 1e-4));
  // dx null: the parameter gradients only.
  fast->linear_backward(nullptr, dw_fast.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  ref->linear_backward(nullptr, dw_ref.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(test::all_near(as_double(dw_fast), as_double(dw_ref), 1e-5, 1e-4));
  EXPECT_THROW(fast->linear_forward(y_fast.data(), x.data(), w.data(), nullptr, rows, 0, out), Error);
}

// One attention forward + backward on both backends; returns {context, probs, dqkv} of each.
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

TEST_F(OnednnBf16Backend, MaterialisedAttentionWithMaskAndDropout) {
  const int B = 3, S = 40, H = 4, D = 16;
  const std::vector<bf16> qkv = random_bf16(static_cast<size_t>(B) * S * 3 * H * D, 13, -2.0, 2.0);
  const std::vector<bf16> dcontext = random_bf16(static_cast<size_t>(B) * S * H * D, 14);
  std::vector<int32_t> mask(B * S, 1);
  for (int s = 25; s < S; ++s) mask[1 * S + s] = 0;  // row 1 padded
  for (int s = 0; s < S; ++s) mask[2 * S + s] = 0;   // row 2 all padding
  for (float dropout : {0.0f, 0.1f}) {
    for (const std::vector<int32_t>* m :
         {static_cast<const std::vector<int32_t>*>(&mask), static_cast<const std::vector<int32_t>*>(nullptr)}) {
      const AttentionRun f = run_attention(*fast, qkv, dcontext, m, B, S, H, D, dropout);
      const AttentionRun r = run_attention(*ref, qkv, dcontext, m, B, S, H, D, dropout);
      const std::string what = "dropout " + std::to_string(dropout) + (m ? " mask" : " no mask");
      EXPECT_EQ(f.keep, r.keep) << what;
      EXPECT_TRUE(test::all_near(as_double(f.probs), as_double(r.probs), 1e-2, 1e-3)) << what;
      EXPECT_TRUE(test::all_near(as_double(f.context), as_double(r.context), 2e-2, 2e-2)) << what;
      EXPECT_LT(rel_l2(f.dqkv, r.dqkv), 2e-2) << what;
      EXPECT_TRUE(test::all_near(as_double(f.dqkv), as_double(r.dqkv), 5e-2, 2e-2)) << what;
      if (m != nullptr) {
        for (int h = 0; h < H; ++h) {  // masked keys get exactly 0, an all-padding row all zeros
          for (int i = 0; i < S; ++i) {
            for (int j = 25; j < S; ++j) ASSERT_EQ(static_cast<float>(f.probs[((1 * H + h) * S + i) * S + j]), 0.0f);
            for (int j = 0; j < S; ++j) ASSERT_EQ(static_cast<float>(f.probs[((2 * H + h) * S + i) * S + j]), 0.0f);
          }
        }
      }
    }
  }
}

// ELECTRA-base's attention shape at S = 512 takes the one-row-at-a-time path (scores of one row fill the
// 16 MB budget): the same results as the reference.
TEST_F(OnednnBf16Backend, AttentionInRowGroups) {
  const int B = 2, S = 512, H = 12, D = 8;
  const std::vector<bf16> qkv = random_bf16(static_cast<size_t>(B) * S * 3 * H * D, 15);
  const std::vector<bf16> dcontext = random_bf16(static_cast<size_t>(B) * S * H * D, 16);
  const AttentionRun f = run_attention(*fast, qkv, dcontext, nullptr, B, S, H, D, 0.1f);
  const AttentionRun r = run_attention(*ref, qkv, dcontext, nullptr, B, S, H, D, 0.1f);
  EXPECT_TRUE(test::all_near(as_double(f.context), as_double(r.context), 2e-2, 2e-2));
  EXPECT_LT(rel_l2(f.dqkv, r.dqkv), 2e-2);
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

// The ops outside the products go to the bf16 kernels: a few checked here through the backend (each
// kernel's own tests are in bf16_kernels_test.cpp).
TEST_F(OnednnBf16Backend, OtherOpsAreTheReferences) {
  const size_t n = 3000;
  const std::vector<bf16> x = random_bf16(n, 22, -3.0, 3.0), y0 = random_bf16(n, 23);
  auto [g_fast, g_ref] = both(y0, [&](Backend<bf16>& be, std::vector<bf16>& y) {
    be.activation_forward(Activation::kGelu, y.data(), x.data(), n);
  });
  EXPECT_EQ(g_fast, g_ref);
  const int rows = 30, cols = 100;
  const std::vector<bf16> gamma = random_bf16(cols, 24), beta = random_bf16(cols, 25);
  std::vector<float> mf(rows), rf(rows), mr(rows), rr(rows);
  std::vector<bf16> lf(rows * cols), lr(rows * cols);
  fast->layernorm_forward(lf.data(), mf.data(), rf.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-12f);
  ref->layernorm_forward(lr.data(), mr.data(), rr.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-12f);
  EXPECT_EQ(lf, lr);
  EXPECT_EQ(mf, mr);
  EXPECT_EQ(rf, rr);
  EXPECT_NEAR(fast->sum_squares(x.data(), n), ref->sum_squares(x.data(), n), 1e-9 * ref->sum_squares(x.data(), n));
  EXPECT_THROW(fast->adamw_step(nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 0, 0, 0, 1, 1, true), Error);
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
