// Every op of the CUDA backend against the CPU backend on the same random inputs, forward and backward.
// Skips without a GPU. Tolerances:
//  - elementwise ops and normalisation: relative 1e-5 (plus a small absolute term where a formula
//    cancels); exact where both backends do the same single rounding (add, dropout, gathers, embeddings);
//  - reductions (GEMMs, column sums, segment sums): both sides sum n terms in float, in different orders,
//    so |gpu - cpu| <= 2 n 2^-24 sum |terms| (twice the classic gamma_n bound), n the reduction length;
//  - dropout keep masks and Gumbel samples: bitwise equal.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"
#include "tests/cuda/ops_fixture.h"

namespace electra::test {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // float unit roundoff

class CudaOps : public CudaOpsFixture<float> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    gpu = make_cuda_backend(0);
    cpu = make_cpu_backend<float>();
  }
};

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// |got - want| <= 2 n u abs_sum per element (the reduction bound above), plus a denormal-sized floor.
::testing::AssertionResult within_sum_bound(const std::vector<float>& got, const std::vector<float>& want,
                                            const std::vector<double>& abs_sum, double n) {
  if (got.size() != want.size() || got.size() != abs_sum.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double bound = 2.0 * n * kU * abs_sum[i] + 1e-30;
    if (!(err <= bound)) {
      return ::testing::AssertionFailure()
             << "element " << i << ": gpu " << got[i] << " cpu " << want[i] << " error " << err << " > bound " << bound;
    }
  }
  return ::testing::AssertionSuccess();
}

// sum_k |alpha op(A)[i,k] op(B)[k,j]| + |beta C[i,j]|, row-major.
std::vector<double> gemm_abs(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<float>& a, int lda,
                             const std::vector<float>& b, int ldb, double beta, const std::vector<float>& c, int ldc,
                             size_t a_off = 0, size_t b_off = 0, size_t c_off = 0) {
  std::vector<double> out(c.size(), 0.0);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) {
        const double av =
            ta ? a[a_off + static_cast<size_t>(p) * lda + i] : a[a_off + static_cast<size_t>(i) * lda + p];
        const double bv =
            tb ? b[b_off + static_cast<size_t>(j) * ldb + p] : b[b_off + static_cast<size_t>(p) * ldb + j];
        s += std::abs(av * bv);
      }
      const size_t ci = c_off + static_cast<size_t>(i) * ldc + j;
      out[ci] = std::abs(alpha) * s + std::abs(beta * c[ci]);
    }
  }
  return out;
}

// Relative tolerance rtol on every element plus rtol * max|want| (for elements that cancel).
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& want, double rtol) {
  const auto w = to_double(want);
  return all_near(got, w, rtol, rtol * std::max(1e-30, max_abs(w)));
}

// ---- memory ----

TEST_F(CudaOps, MemoryRoundTripsAndFills) {
  EXPECT_EQ(gpu->device(), DeviceKind::kCuda);
  EXPECT_EQ(gpu->name(), "cuda-float");
  EXPECT_EQ(gpu->allocate(0), nullptr);
  gpu->deallocate(nullptr);
  const auto src = cast<float>(random_values(1001, 1));
  auto buf = up(src);
  EXPECT_TRUE(bitwise_equal(down(buf), src));
  DeviceBuffer<float> other(*gpu, 1001);
  gpu->copy(other.data(), buf.data(), 1001);
  EXPECT_TRUE(bitwise_equal(down(other), src));
  for (float v : {0.0f, 2.5f, -0.0f}) {
    gpu->fill(other.data(), 1001, v);
    for (float x : down(other)) ASSERT_TRUE(std::memcmp(&x, &v, sizeof(float)) == 0) << v;
  }
  const std::vector<int32_t> ints = {1, -2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  EXPECT_EQ(down(up(ints)), ints);
  std::vector<uint8_t> b(37);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7);
  auto dbytes = bytes(b.size());
  cuda_copy_bytes_from_host(*gpu, dbytes.data(), b.data(), b.size());
  EXPECT_EQ(down(dbytes), b);
  gpu->synchronize();
  EXPECT_THROW(cuda_copy_bytes_to_host(*cpu, b.data(), b.data(), 1), Error);
}

TEST(CudaBackendErrors, MissingDeviceIsNamed) {
  if (cuda_device_count() == 0) {
    EXPECT_FALSE(cuda_unavailable_reason().empty());
    try {
      make_cuda_backend(0);
      FAIL() << "make_cuda_backend succeeded without a GPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA backend unavailable"), std::string::npos) << e.what();
    }
    return;  // the no-GPU path is what this machine can check
  }
  EXPECT_EQ(cuda_unavailable_reason(), "");
  try {
    make_cuda_backend(cuda_device_count() + 3);
    FAIL() << "an out-of-range device was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

// The deprecated tf32 flag may not silently override another precision (checked before any GPU is needed).
TEST(CudaBackendErrors, Tf32FlagContradictingPrecisionIsRefused) {
  try {
    make_cuda_backend(0, CudaBackendOptions{.precision = CudaPrecision::kBf16, .tf32 = true});
    FAIL() << "tf32 = true with precision bf16 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("contradicts precision bf16"), std::string::npos) << e.what();
  }
}

// ---- matrix products ----

TEST_F(CudaOps, GemmAllTransposesWithLeadingDimensions) {
  for (auto [m, n, k] : {std::tuple{7, 9, 11}, std::tuple{70, 90, 400}, std::tuple{128, 64, 32}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
        const auto a = cast<float>(random_values(static_cast<size_t>(ta ? k : m) * lda, 1));
        const auto b = cast<float>(random_values(static_cast<size_t>(tb ? n : k) * ldb, 2));
        const auto c = cast<float>(random_values(static_cast<size_t>(m) * ldc, 3));
        const Transpose tra = ta ? Transpose::kYes : Transpose::kNo, trb = tb ? Transpose::kYes : Transpose::kNo;
        auto want = c;
        cpu->gemm(tra, trb, m, n, k, 0.75f, a.data(), lda, b.data(), ldb, -0.5f, want.data(), ldc);
        auto da = up(a), db = up(b), dc = up(c);
        gpu->gemm(tra, trb, m, n, k, 0.75f, da.data(), lda, db.data(), ldb, -0.5f, dc.data(), ldc);
        EXPECT_TRUE(within_sum_bound(down(dc), want, gemm_abs(ta, tb, m, n, k, 0.75, a, lda, b, ldb, -0.5, c, ldc), k))
            << "ta=" << ta << " tb=" << tb << " m=" << m;
      }
    }
  }
}

TEST_F(CudaOps, GemmBetaZeroIgnoresGarbageAndChecksArguments) {
  const int m = 4, n = 5, k = 3;
  const auto a = cast<float>(random_values(m * k, 1)), b = cast<float>(random_values(k * n, 2));
  std::vector<float> want(m * n, 0.0f), nan(m * n, std::numeric_limits<float>::quiet_NaN());
  cpu->gemm(Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, want.data(), n);
  auto da = up(a), db = up(b), dc = up(nan);
  gpu->gemm(Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, da.data(), k, db.data(), n, 0.0f, dc.data(), n);
  EXPECT_TRUE(within_sum_bound(
      down(dc), want, gemm_abs(false, false, m, n, k, 1.0, a, k, b, n, 0.0, std::vector<float>(m * n, 0), n), k));
  EXPECT_THROW(
      gpu->gemm(Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, da.data(), k - 1, db.data(), n, 0.0f, dc.data(), n),
      Error);
}

TEST_F(CudaOps, GemmStridedBatched) {
  struct Shape {
    int m, n, k, batch;
  };
  for (const Shape& sh : {Shape{6, 4, 7, 5}, Shape{130, 33, 61, 3}}) {
    const int m = sh.m, n = sh.n, k = sh.k, batch = sh.batch;
    const int lda = m, ldb = k, ldc = n;  // A and B transposed: stored [k, m] and [n, k]
    const long long sa = static_cast<long long>(k) * lda + 7, sb = static_cast<long long>(n) * ldb + 3,
                    sc = static_cast<long long>(m) * ldc + 1;
    const auto a = cast<float>(random_values(sa * batch, 4)), b = cast<float>(random_values(sb * batch, 5));
    const auto c = cast<float>(random_values(sc * batch, 6));
    auto want = c;
    cpu->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, a.data(), lda, sa, b.data(), ldb, sb,
                              0.25f, want.data(), ldc, sc, batch);
    auto da = up(a), db = up(b), dc = up(c);
    gpu->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, da.data(), lda, sa, db.data(), ldb, sb,
                              0.25f, dc.data(), ldc, sc, batch);
    std::vector<double> abs_sum(c.size(), 0.0);
    for (size_t i = 0; i < c.size(); ++i) abs_sum[i] = std::abs(0.25 * c[i]);  // the gaps between matrices
    for (int i = 0; i < batch; ++i) {
      const auto part = gemm_abs(true, true, m, n, k, 1.5, a, lda, b, ldb, 0.25, c, ldc, i * sa, i * sb, i * sc);
      for (int r = 0; r < m; ++r) {
        for (int j = 0; j < n; ++j) abs_sum[i * sc + static_cast<size_t>(r) * ldc + j] = part[i * sc + r * ldc + j];
      }
    }
    EXPECT_TRUE(within_sum_bound(down(dc), want, abs_sum, k)) << "m=" << m;
  }
}

TEST_F(CudaOps, LinearForwardBackwardAccumulates) {
  const int rows = 300, in = 29, out = 23;  // rows > one column-sum block (128)
  const auto x = cast<float>(random_values(rows * in, 1)), w = cast<float>(random_values(out * in, 2));
  const auto bias = cast<float>(random_values(out, 3)), dy = cast<float>(random_values(rows * out, 4));
  const auto dw0 = cast<float>(random_values(out * in, 5)), db0 = cast<float>(random_values(out, 6));
  auto dx_ = up(x), dw_ = up(w), dbias_ = up(bias), ddy = up(dy);
  for (bool with_bias : {true, false}) {
    std::vector<float> y(rows * out);
    cpu->linear_forward(y.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, rows, in, out);
    DeviceBuffer<float> gy(*gpu, y.size());
    gpu->linear_forward(gy.data(), dx_.data(), dw_.data(), with_bias ? dbias_.data() : nullptr, rows, in, out);
    std::vector<double> abs_y(y.size());
    for (int r = 0; r < rows; ++r) {
      for (int o = 0; o < out; ++o) {
        double s = with_bias ? std::abs(bias[o]) : 0.0;
        for (int i = 0; i < in; ++i) s += std::abs(x[r * in + i] * w[o * in + i]);
        abs_y[r * out + o] = s;
      }
    }
    EXPECT_TRUE(within_sum_bound(down(gy), y, abs_y, in + 1)) << "bias " << with_bias;
  }
  // Backward: dx overwritten, dW and dbias accumulated.
  std::vector<float> dx(rows * in), dw = dw0, db = db0;
  cpu->linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), rows, in, out);
  DeviceBuffer<float> gdx(*gpu, dx.size());
  auto gdw = up(dw0);
  auto gdb = up(db0);
  gpu->linear_backward(gdx.data(), gdw.data(), gdb.data(), ddy.data(), dx_.data(), dw_.data(), rows, in, out);
  std::vector<double> abs_dx(dx.size()), abs_dw(dw.size()), abs_db(db.size());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < in; ++i) {
      double s = 0;
      for (int o = 0; o < out; ++o) s += std::abs(dy[r * out + o] * w[o * in + i]);
      abs_dx[r * in + i] = s;
    }
  }
  for (int o = 0; o < out; ++o) {
    abs_db[o] = std::abs(db0[o]);
    for (int r = 0; r < rows; ++r) abs_db[o] += std::abs(dy[r * out + o]);
    for (int i = 0; i < in; ++i) {
      double s = std::abs(dw0[o * in + i]);
      for (int r = 0; r < rows; ++r) s += std::abs(dy[r * out + o] * x[r * in + i]);
      abs_dw[o * in + i] = s;
    }
  }
  EXPECT_TRUE(within_sum_bound(down(gdx), dx, abs_dx, out));
  EXPECT_TRUE(within_sum_bound(down(gdw), dw, abs_dw, rows + 1));
  EXPECT_TRUE(within_sum_bound(down(gdb), db, abs_db, rows + 1));
  // Null dx and dbias are skipped; dW accumulates again.
  gpu->linear_backward(nullptr, gdw.data(), nullptr, ddy.data(), dx_.data(), dw_.data(), rows, in, out);
  cpu->linear_backward(nullptr, dw.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  for (double& s : abs_dw) s *= 2;
  EXPECT_TRUE(within_sum_bound(down(gdw), dw, abs_dw, 2 * rows + 1));
  EXPECT_TRUE(within_sum_bound(down(gdb), db, abs_db, rows + 1));
}

// ---- elementwise ----

TEST_F(CudaOps, ActivationsForwardBackward) {
  // Same approximations on both sides; 1 - tanh^2 cancels near saturation, hence the absolute term.
  expect_activations_are_the_cpus([](const std::vector<float>& got, const std::vector<float>& want) {
    return all_near(got, to_double(want), 1e-5, 1e-6);
  });
}

TEST_F(CudaOps, AddAccumulateScaleAreExact) {
  const size_t n = 70001;
  const auto a = cast<float>(random_values(n, 1)), b = cast<float>(random_values(n, 2));
  auto ga = up(a);
  auto gb = up(b);
  DeviceBuffer<float> out(*gpu, n);
  gpu->add(out.data(), ga.data(), gb.data(), n);
  std::vector<float> want(n);
  cpu->add(want.data(), a.data(), b.data(), n);
  EXPECT_TRUE(bitwise_equal(down(out), want));
  gpu->add(ga.data(), ga.data(), gb.data(), n);  // out aliases a
  EXPECT_TRUE(bitwise_equal(down(ga), want));
  auto acc = a;
  cpu->accumulate(acc.data(), b.data(), n);
  auto gacc = up(a);
  gpu->accumulate(gacc.data(), gb.data(), n);
  EXPECT_TRUE(bitwise_equal(down(gacc), acc));
  cpu->scale(acc.data(), n, -0.37f);
  gpu->scale(gacc.data(), n, -0.37f);
  EXPECT_TRUE(bitwise_equal(down(gacc), acc));
}

TEST_F(CudaOps, DropoutKeepMasksAreTheCpus) {
  expect_dropout_is_the_cpus();
  const size_t n = 10007;
  DeviceBuffer<float> gx(*gpu, n), gy(*gpu, n);
  auto gkeep = bytes(n);
  EXPECT_THROW(gpu->dropout_forward(gy.data(), gkeep.data(), gx.data(), n, 1.0f, DropoutKey{}), Error);
}

// ---- normalisation ----

TEST_F(CudaOps, LayerNormForwardBackward) {
  for (auto [rows, cols] : {std::pair{300, 200}, std::pair{5, 31}, std::pair{3, 1030}}) {
    const auto x = cast<float>(random_values(rows * cols, 1, -2.0, 3.0));
    const auto gamma = cast<float>(random_values(cols, 2, 0.5, 1.5)), beta = cast<float>(random_values(cols, 3));
    const auto dy = cast<float>(random_values(rows * cols, 4));
    const auto dg0 = cast<float>(random_values(cols, 5)), db0 = cast<float>(random_values(cols, 6));
    std::vector<float> y(rows * cols), mean(rows), rstd(rows), dx(rows * cols), dg = dg0, db = db0;
    cpu->layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-5f);
    cpu->layernorm_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(),
                            gamma.data(), rows, cols);
    auto gx = up(x);
    auto ggamma = up(gamma);
    auto gbeta = up(beta);
    auto gdy = up(dy);
    auto gdg = up(dg0);
    auto gdb = up(db0);
    DeviceBuffer<float> gy(*gpu, y.size()), gmean(*gpu, rows), grstd(*gpu, rows), gdx(*gpu, dx.size());
    gpu->layernorm_forward(gy.data(), gmean.data(), grstd.data(), gx.data(), ggamma.data(), gbeta.data(), rows, cols,
                           1e-5f);
    gpu->layernorm_backward(gdx.data(), gdg.data(), gdb.data(), gdy.data(), gx.data(), gmean.data(), grstd.data(),
                            ggamma.data(), rows, cols);
    EXPECT_TRUE(close(down(gmean), mean, 1e-5)) << rows << "x" << cols;
    EXPECT_TRUE(close(down(grstd), rstd, 1e-5));
    EXPECT_TRUE(close(down(gy), y, 1e-5));
    EXPECT_TRUE(close(down(gdx), dx, 1e-5));
    // dgamma/dbeta: sums over rows.
    std::vector<double> abs_g(cols), abs_b(cols);
    for (int c = 0; c < cols; ++c) {
      abs_g[c] = std::abs(dg0[c]);
      abs_b[c] = std::abs(db0[c]);
      for (int r = 0; r < rows; ++r) {
        abs_g[c] += std::abs(dy[r * cols + c] * (x[r * cols + c] - mean[r]) * rstd[r]);
        abs_b[c] += std::abs(dy[r * cols + c]);
      }
    }
    // 4 extra roundings per term in dgamma's products, both sides.
    EXPECT_TRUE(within_sum_bound(down(gdg), dg, abs_g, rows + 5));
    EXPECT_TRUE(within_sum_bound(down(gdb), db, abs_b, rows + 1));
    // Null outputs are skipped: dx only, then parameters only.
    auto gdg2 = up(dg0);
    gpu->layernorm_backward(gdx.data(), nullptr, nullptr, gdy.data(), gx.data(), gmean.data(), grstd.data(),
                            ggamma.data(), rows, cols);
    gpu->layernorm_backward(nullptr, gdg2.data(), nullptr, gdy.data(), gx.data(), gmean.data(), grstd.data(),
                            ggamma.data(), rows, cols);
    EXPECT_TRUE(close(down(gdx), dx, 1e-5));
    EXPECT_TRUE(within_sum_bound(down(gdg2), dg, abs_g, rows + 5));
  }
}

// ---- embeddings ----

TEST_F(CudaOps, EmbeddingForwardIsExact) {
  const int B = 3, S = 17, E = 40, V = 50;
  const auto ids = random_ints(B * S, 1, 0, V), types = random_ints(B * S, 2, 0, 2);
  const auto word = cast<float>(random_values(V * E, 3)), pos = cast<float>(random_values(S * E, 4));
  const auto type = cast<float>(random_values(2 * E, 5));
  auto gids = up(ids);
  auto gtypes = up(types);
  auto gword = up(word);
  auto gpos = up(pos);
  auto gtype = up(type);
  for (int variant = 0; variant < 3; ++variant) {
    const bool with_pos = variant != 1, with_type = variant != 2;
    std::vector<float> out(B * S * E);
    cpu->embedding_forward(out.data(), ids.data(), with_type ? types.data() : nullptr, word.data(),
                           with_pos ? pos.data() : nullptr, type.data(), B, S, E);
    DeviceBuffer<float> gout(*gpu, out.size());
    gpu->embedding_forward(gout.data(), gids.data(), with_type ? gtypes.data() : nullptr, gword.data(),
                           with_pos ? gpos.data() : nullptr, gtype.data(), B, S, E);
    EXPECT_TRUE(bitwise_equal(down(gout), out)) << "variant " << variant;
  }
}

TEST_F(CudaOps, EmbeddingBackwardIsDeterministicAndMatchesCpu) {
  const int B = 8, S = 64, E = 130, V = 50, tokens = B * S;  // 16 chunks of 32 sorted tokens; E > 128 columns
  auto ids = random_ints(tokens, 1, 0, V);
  const auto coin = random_ints(tokens, 2, 0, 10);
  for (int t = 0; t < tokens; ++t) {
    if (coin[t] < 4) ids[t] = 3;  // a run across many chunks, as [MASK] or [PAD]
  }
  const auto types = random_ints(tokens, 3, 0, 2);
  const auto dout = cast<float>(random_values(static_cast<size_t>(tokens) * E, 4));
  const auto word0 = cast<float>(random_values(V * E, 5)), pos0 = cast<float>(random_values(S * E, 6));
  const auto type0 = cast<float>(random_values(2 * E, 7));
  auto abs_sums = [&](const std::vector<float>& init, const std::vector<int32_t>* keys) {
    std::vector<double> s(init.size());
    for (size_t i = 0; i < s.size(); ++i) s[i] = std::abs(init[i]);
    for (int t = 0; t < tokens; ++t) {
      const int key = keys != nullptr ? (*keys)[t] : 0;
      for (int c = 0; c < E; ++c) s[static_cast<size_t>(key) * E + c] += std::abs(dout[static_cast<size_t>(t) * E + c]);
    }
    return s;
  };
  auto gids = up(ids);
  auto gtypes = up(types);
  auto gdout = up(dout);
  for (bool with_types : {true, false}) {
    auto word = word0, pos = pos0, type = type0;
    cpu->embedding_backward(word.data(), pos.data(), type.data(), dout.data(), ids.data(),
                            with_types ? types.data() : nullptr, B, S, E);
    auto gword = up(word0);
    auto gpos = up(pos0);
    auto gtype = up(type0);
    gpu->embedding_backward(gword.data(), gpos.data(), gtype.data(), gdout.data(), gids.data(),
                            with_types ? gtypes.data() : nullptr, B, S, E);
    const auto got_word = down(gword);
    EXPECT_TRUE(within_sum_bound(got_word, word, abs_sums(word0, &ids), tokens + 1));
    EXPECT_TRUE(bitwise_equal(down(gpos), pos));  // positions: the CPU's order
    EXPECT_TRUE(within_sum_bound(down(gtype), type, abs_sums(type0, with_types ? &types : nullptr), tokens + 1));
    // Run to run: bitwise.
    auto again = up(word0);
    gpu->embedding_backward(again.data(), nullptr, nullptr, gdout.data(), gids.data(), nullptr, B, S, E);
    EXPECT_TRUE(bitwise_equal(down(again), got_word));
  }
}

TEST_F(CudaOps, GatherAndScatterRowsAreExact) {
  const int B = 4, S = 20, P = 6, C = 33;
  auto positions = random_ints(B * P, 1, 0, S);
  positions[1] = positions[0];  // duplicates add up
  positions[2] = positions[0];
  const auto x = cast<float>(random_values(B * S * C, 2)), dout = cast<float>(random_values(B * P * C, 3));
  const auto dx0 = cast<float>(random_values(B * S * C, 4));
  std::vector<float> out(B * P * C), dx = dx0;
  cpu->gather_rows(out.data(), x.data(), positions.data(), B, S, P, C);
  cpu->scatter_add_rows(dx.data(), dout.data(), positions.data(), B, S, P, C);
  auto gpos = up(positions);
  auto gx = up(x);
  auto gdout = up(dout);
  auto gdx = up(dx0);
  DeviceBuffer<float> gout(*gpu, out.size());
  gpu->gather_rows(gout.data(), gx.data(), gpos.data(), B, S, P, C);
  gpu->scatter_add_rows(gdx.data(), gdout.data(), gpos.data(), B, S, P, C);
  EXPECT_TRUE(bitwise_equal(down(gout), out));
  EXPECT_TRUE(bitwise_equal(down(gdx), dx));
}

TEST_F(CudaOps, InvalidIndicesAreReportedAtTheNextWait) {
  const int B = 1, S = 4, E = 8;
  const std::vector<int32_t> ids = {1, -1, 2, 0}, positions = {0, 9};
  auto gids = up(ids);
  auto gpos = up(positions);
  auto table = up(cast<float>(random_values(4 * E, 1)));
  DeviceBuffer<float> out(*gpu, B * S * E);
  gpu->embedding_forward(out.data(), gids.data(), nullptr, table.data(), nullptr, nullptr, B, S, E);
  EXPECT_THROW(gpu->synchronize(), Error);
  gpu->synchronize();  // reported once
  gpu->gather_rows(out.data(), table.data(), gpos.data(), 1, S, 2, E);
  try {
    down(out);
    FAIL() << "a position outside [0, S) was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position"), std::string::npos) << e.what();
  }
  const std::vector<int32_t> labels = {0, 7};
  auto glabels = up(labels);
  DeviceBuffer<float> loss(*gpu, 2);
  gpu->softmax_cross_entropy(loss.data(), nullptr, nullptr, table.data(), glabels.data(), nullptr, 2, 5);
  EXPECT_THROW(down(loss), Error);
}

// ---- attention ----

struct AttentionCase {
  int B, S, H, D;
  float dropout;
  bool masked;
};

TEST_F(CudaOps, AttentionForwardBackward) {
  for (const AttentionCase& ac : {AttentionCase{3, 37, 2, 16, 0.0f, true}, AttentionCase{3, 37, 2, 16, 0.1f, true},
                                  AttentionCase{2, 130, 2, 8, 0.1f, false}, AttentionCase{1, 5, 1, 4, 0.3f, false}}) {
    const int B = ac.B, S = ac.S, H = ac.H, D = ac.D;
    const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = static_cast<size_t>(B) * S * H * D,
                 np = static_cast<size_t>(B) * H * S * S;
    const auto qkv = cast<float>(random_values(nqkv, 1, -2.0, 2.0)), dctx = cast<float>(random_values(nctx, 2));
    std::vector<int32_t> mask(B * S, 1);
    if (ac.masked) {
      for (int s = S - 10; s < S; ++s) mask[1 * S + s] = 0;  // padding
      for (int s = 0; s < S; ++s) mask[2 * S + s] = 0;       // nothing to attend to
    }
    const DropoutKey key{
        .seed = 4, .step = 7, .lane = 2, .first_example = 30, .elements_per_example = static_cast<uint64_t>(H) * S * S};
    std::vector<float> ctx(nctx), probs(np), dqkv(nqkv), scratch(np);
    std::vector<uint8_t> keep(np);
    const int32_t* m = ac.masked ? mask.data() : nullptr;
    cpu->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), m, B, S, H, D, ac.dropout, key);
    cpu->attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(), m, B, S, H,
                            D, ac.dropout);
    auto gqkv = up(qkv);
    auto gdctx = up(dctx);
    auto gmask = up(mask);
    DeviceBuffer<float> gctx(*gpu, nctx), gprobs(*gpu, np), gdqkv(*gpu, nqkv), gscratch(*gpu, np);
    auto gkeep = bytes(np);
    const int32_t* gm = ac.masked ? gmask.data() : nullptr;
    gpu->attention_forward(gctx.data(), gprobs.data(), gkeep.data(), gqkv.data(), gm, B, S, H, D, ac.dropout, key);
    gpu->attention_backward(gdqkv.data(), gscratch.data(), gdctx.data(), gqkv.data(), gprobs.data(), gkeep.data(), gm,
                            B, S, H, D, ac.dropout);
    const std::string what = "B=" + std::to_string(B) + " S=" + std::to_string(S) + " p=" + std::to_string(ac.dropout);
    EXPECT_EQ(down(gkeep), keep) << what;
    // Probabilities: a softmax over S keys of scores that are D-long dot products.
    EXPECT_TRUE(close(down(gprobs), probs, 4.0 * (S + D) * kU)) << what;
    // Context and gradients: chains of S- and D-long products.
    const double tol = 8.0 * (S + D) * kU;
    EXPECT_TRUE(close(down(gctx), ctx, tol)) << what;
    EXPECT_TRUE(close(down(gdqkv), dqkv, tol)) << what;
    // Run to run: bitwise.
    DeviceBuffer<float> again(*gpu, nqkv);
    gpu->attention_backward(again.data(), gscratch.data(), gdctx.data(), gqkv.data(), gprobs.data(), gkeep.data(), gm,
                            B, S, H, D, ac.dropout);
    EXPECT_TRUE(bitwise_equal(down(again), down(gdqkv))) << what;
  }
}

// ---- losses and sampling ----

TEST_F(CudaOps, SoftmaxCrossEntropyAndLogSoftmax) {
  for (int V : {1000, 30522}) {
    const int rows = 13;
    const auto logits = cast<float>(random_values(static_cast<size_t>(rows) * V, 1, -8.0, 8.0));
    const auto labels = random_ints(rows, 2, 0, V);
    const auto scale = cast<float>(random_values(rows, 3, 0.1, 2.0));
    // Both sides sum V exponentials with at most ~V/16 + 256 sequential additions.
    const double rtol = (V / 16.0 + 256.0) * kU;
    std::vector<float> loss(rows), dlogits(logits.size()), lsm(logits.size());
    std::vector<int32_t> argmax(rows);
    cpu->softmax_cross_entropy(loss.data(), dlogits.data(), argmax.data(), logits.data(), labels.data(), scale.data(),
                               rows, V);
    cpu->log_softmax(lsm.data(), logits.data(), rows, V);
    auto glogits = up(logits);
    auto glabels = up(labels);
    auto gscale = up(scale);
    DeviceBuffer<float> gloss(*gpu, rows), gd(*gpu, logits.size()), glsm(*gpu, logits.size());
    DeviceBuffer<float, int32_t> gargmax(*gpu, rows);
    gpu->softmax_cross_entropy(gloss.data(), gd.data(), gargmax.data(), glogits.data(), glabels.data(), gscale.data(),
                               rows, V);
    gpu->log_softmax(glsm.data(), glogits.data(), rows, V);
    EXPECT_TRUE(all_near(down(gloss), to_double(loss), rtol, rtol * 10)) << "V " << V;
    EXPECT_TRUE(close(down(gd), dlogits, rtol)) << "V " << V;
    EXPECT_EQ(down(gargmax), argmax);
    EXPECT_TRUE(all_near(down(glsm), to_double(lsm), rtol, rtol * 10));
    // dlogits aliasing logits, no loss / argmax / grad_scale.
    std::vector<float> d2 = logits;
    cpu->softmax_cross_entropy(nullptr, d2.data(), nullptr, d2.data(), labels.data(), nullptr, rows, V);
    auto inplace = up(logits);
    gpu->softmax_cross_entropy(nullptr, inplace.data(), nullptr, inplace.data(), glabels.data(), nullptr, rows, V);
    EXPECT_TRUE(close(down(inplace), d2, rtol));
    auto lsm_inplace = up(logits);
    gpu->log_softmax(lsm_inplace.data(), lsm_inplace.data(), rows, V);
    EXPECT_TRUE(all_near(down(lsm_inplace), to_double(lsm), rtol, rtol * 10));
  }
}

TEST_F(CudaOps, SigmoidCrossEntropy) {
  const size_t n = 1001;
  const auto logit = cast<float>(random_values(n, 1, -30.0, 30.0));
  const auto label = random_ints(n, 2, 0, 2);
  const auto scale = cast<float>(random_values(n, 3, 0.0, 2.0));
  std::vector<float> loss(n), d(n);
  cpu->sigmoid_cross_entropy(loss.data(), d.data(), logit.data(), label.data(), scale.data(), n);
  auto glogit = up(logit);
  auto glabel = up(label);
  auto gscale = up(scale);
  DeviceBuffer<float> gloss(*gpu, n), gd(*gpu, n);
  gpu->sigmoid_cross_entropy(gloss.data(), gd.data(), glogit.data(), glabel.data(), gscale.data(), n);
  // CUDA's expf / log1pf are within 2 ulps of glibc's.
  EXPECT_TRUE(all_near(down(gloss), to_double(loss), 1e-6, 1e-7));
  EXPECT_TRUE(all_near(down(gd), to_double(d), 1e-6, 1e-7));
  gpu->sigmoid_cross_entropy(nullptr, gd.data(), glogit.data(), glabel.data(), nullptr, n);
  cpu->sigmoid_cross_entropy(nullptr, d.data(), logit.data(), label.data(), nullptr, n);
  EXPECT_TRUE(all_near(down(gd), to_double(d), 1e-6, 1e-7));
}

TEST_F(CudaOps, GumbelSamplesAreTheCpus) { expect_gumbel_samples_are_the_cpus(); }

// ---- reductions and optimizer ----

TEST_F(CudaOps, SumSquaresInDouble) {
  for (size_t n : {size_t{0}, size_t{5}, size_t{1'000'003}}) {
    const auto x = cast<float>(random_values(n, 1, -3.0, 3.0));
    const double want = cpu->sum_squares(x.data(), n);
    auto gx = up(x);
    const double got = gpu->sum_squares(gx.data(), n);
    // Exact squares, summed in double in different orders: n 2^-53 relative at worst.
    EXPECT_NEAR(got, want, 2.0 * static_cast<double>(n) * 1.1102230246251565e-16 * want) << n;
    EXPECT_EQ(gpu->sum_squares(gx.data(), n), got);  // deterministic
  }
}

TEST_F(CudaOps, AdamwBothModes) {
  const size_t n = 100003;
  for (bool bias_correction : {true, false}) {
    auto p = cast<float>(random_values(n, 1)), m = std::vector<float>(n, 0.0f), v = m;
    auto gp = up(p);
    auto gm = up(m);
    auto gv = up(v);
    for (long long t = 1; t <= 3; ++t) {
      const auto g = cast<float>(random_values(n, 10 + t, -2.0, 2.0));
      auto gg = up(g);
      cpu->adamw_step(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, t, 0.5f,
                      bias_correction);
      gpu->adamw_step(gp.data(), gg.data(), gm.data(), gv.data(), n, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, t, 0.5f,
                      bias_correction);
    }
    EXPECT_TRUE(all_near(down(gp), to_double(p), 1e-6, 1e-9)) << bias_correction;
    // m cancels (b1 m + (1 - b1) g with g of either sign): an absolute term at the scale of |m|.
    EXPECT_TRUE(all_near(down(gm), to_double(m), 1e-6, 1e-6 * max_abs(to_double(m))));
    EXPECT_TRUE(all_near(down(gv), to_double(v), 1e-6, 1e-12));
  }
  EXPECT_THROW(gpu->adamw_step(nullptr, nullptr, nullptr, nullptr, 0, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.0f, 0, 1.0f, true),
               Error);
}

TEST_F(CudaOps, Tf32OptionIsCloseButNotExact) {
  auto tf32 = make_cuda_backend(0, CudaBackendOptions{.tf32 = true});
  EXPECT_EQ(tf32->name(), "cuda-float-tf32");
  const int n = 256;
  const auto a = cast<float>(random_values(n * n, 1)), b = cast<float>(random_values(n * n, 2));
  std::vector<float> want(n * n, 0.0f);
  cpu->gemm(Transpose::kNo, Transpose::kNo, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, want.data(), n);
  DeviceBuffer<float> ga(*tf32, a.size()), gb(*tf32, b.size()), gc(*tf32, want.size());
  tf32->copy_from_host(ga.data(), a.data(), a.size());
  tf32->copy_from_host(gb.data(), b.data(), b.size());
  tf32->gemm(Transpose::kNo, Transpose::kNo, n, n, n, 1.0f, ga.data(), n, gb.data(), n, 0.0f, gc.data(), n);
  std::vector<float> got(want.size());
  tf32->copy_to_host(got.data(), gc.data(), got.size());
  const auto abs_sum = gemm_abs(false, false, n, n, n, 1.0, a, n, b, n, 0.0, want, n);
  size_t beyond_fp32 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    // TF32 keeps 10 explicit mantissa bits of each input (2^-10 relative per product at worst, with
    // truncation), then accumulates in fp32.
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    ASSERT_LE(err, 4.0 * std::ldexp(1.0, -10) * abs_sum[i]) << i;
    if (err > 2.0 * n * kU * abs_sum[i]) ++beyond_fp32;
  }
  // TF32 really is in use: many elements are off by more than any fp32 product could be.
  EXPECT_GT(beyond_fp32, got.size() / 10);
}

}  // namespace
}  // namespace electra::test
