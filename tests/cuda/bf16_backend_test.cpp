// The CUDA Backend<bfloat16> (make_cuda_bf16_backend) op by op against the CPU reference
// make_cpu_bf16_backend (widen the bf16 inputs, run the float op, narrow the bf16 outputs) on the same
// random bf16 inputs. Tolerances:
//  - bf16 outputs: relative 1e-2 (a few bf16 ulps: both sides compute in fp32 and round once; fp32
//    summation orders differ) plus 1e-3 of the largest magnitude for elements that cancel;
//  - fp32 ("wide") outputs: GEMM weight gradients the same bound; sums of the same values in another
//    order (bias, LayerNorm and embedding gradients, statistics, losses) 1e-4;
//  - exact where both sides do the same fp32 arithmetic and one rounding (add, dropout, embeddings,
//    gathers, scatter-adds); dropout keep masks, Gumbel samples, argmax and token ids bitwise;
//  - attention: the probabilities, stats and keep bits as above; context and dqkv norm-wise 1e-2, and
//    elementwise with the floor kOperandFloor: both our kernels and cuDNN SDPA round the probabilities
//    (and score gradients) to bf16 as GEMM operands, which the reference keeps in fp32 (see
//    kOperandFloor; tests/cuda/attention_bf16_emulation_test.cpp checks these bounds on the CPU).
// Every test but the construction test skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/bfloat16.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"
#include "tests/cuda/attention_masks.h"
#include "tests/cuda/ops_fixture.h"

namespace electra::test {
namespace {

using Bf16 = std::vector<bfloat16>;

// fp32 outputs that both sides sum from the same values in different orders (column sums, statistics,
// losses, segment sums): relative and floor tolerance.
constexpr double kSumTol = 1e-4;

// Attention outputs of a product whose operand (probabilities, score gradients) is rounded to bf16 inside
// the op: rounding the weights of a row (summing to 1 / (1 - dropout)) moves an output by up to 2^-9 of
// the row's largest value term, which cancellation can leave large next to the element itself; the CPU
// emulation needs about 1.2e-3 of max|want|, so 5e-3 leaves room for the GPU's summation orders.
constexpr double kOperandFloor = 5e-3;

Bf16 to_bf16(const std::vector<double>& x) { return storage_values<bfloat16>(x); }

// |got - want| <= rtol |want| + floor * max|want| per element.
template <typename A, typename B>
::testing::AssertionResult close(const std::vector<A>& got, const std::vector<B>& want, double rtol = 1e-2,
                                 double floor = 1e-3) {
  const auto w = values(want);
  return all_near(values(got), w, rtol, floor * std::max(1e-30, max_abs(w)));
}

// ||got - want|| / ||want|| <= tol
template <typename A, typename B>
::testing::AssertionResult normwise(const std::vector<A>& got, const std::vector<B>& want, double tol) {
  const auto g = values(got), w = values(want);
  if (g.size() != w.size()) return ::testing::AssertionFailure() << "sizes differ";
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < w.size(); ++i) {
    diff += (g[i] - w[i]) * (g[i] - w[i]);
    norm += w[i] * w[i];
  }
  const double err = std::sqrt(diff) / std::max(1e-300, std::sqrt(norm));
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "norm-wise error " << err << " > " << tol;
}

// Runs without a GPU: the factory refuses a backend that is not CUDA, naming it.
TEST(CudaBf16Backend, RefusesABackendThatIsNotCuda) {
  auto cpu = make_cpu_backend<float>();
  try {
    make_cuda_bf16_backend(*cpu);
    FAIL() << "a CPU backend was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a CUDA backend"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(cpu->name()), std::string::npos) << e.what();
  }
}

class CudaBf16Ops : public CudaOpsFixture<bfloat16> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    gpu_float =
        make_cuda_backend(0, CudaBackendOptions{.precision = CudaPrecision::kBf16, .arena_bytes = size_t{1} << 30});
    gpu = make_cuda_bf16_backend(*gpu_float);
    cpu_float = make_cpu_backend<float>();
    cpu = make_cpu_bf16_backend(*cpu_float);
  }

  // The fixture's copies, and fp32 ("wide") buffers on the float backend.
  using CudaOpsFixture<bfloat16>::up;
  using CudaOpsFixture<bfloat16>::down;
  DeviceBuffer<float> up(const std::vector<float>& h) {
    DeviceBuffer<float> d(*gpu_float, h.size());
    gpu_float->copy_from_host(d.data(), h.data(), h.size());
    return d;
  }
  std::vector<float> down(const DeviceBuffer<float>& d) {
    std::vector<float> h(d.size());
    gpu_float->copy_to_host(h.data(), d.data(), h.size());
    return h;
  }
};

// ---- construction, memory, conversions ----

TEST_F(CudaBf16Ops, SharesTheFloatBackendAndRefusesOtherPrecisions) {
  EXPECT_EQ(gpu->name(), "cuda-bf16");
  EXPECT_EQ(gpu->device(), DeviceKind::kCuda);
  EXPECT_EQ(&gpu->wide(), gpu_float.get());
  for (CudaPrecision p : {CudaPrecision::kFp32, CudaPrecision::kTf32, CudaPrecision::kFp16}) {
    auto other = make_cuda_backend(0, CudaBackendOptions{.precision = p, .arena_bytes = size_t{64} << 20});
    try {
      make_cuda_bf16_backend(*other);
      FAIL() << "precision " << to_string(p) << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("has precision " + to_string(p)), std::string::npos) << e.what();
    }
  }
}

TEST_F(CudaBf16Ops, MemoryFillsAndConversions) {
  EXPECT_EQ(gpu->allocate(0), nullptr);
  gpu->deallocate(nullptr);
  const size_t n = 100003;
  const auto src = to_bf16(random_values(n, 1, -100.0, 100.0));
  auto buf = up(src);
  EXPECT_TRUE(bitwise(down(buf), src));
  DeviceBuffer<bfloat16> other(*gpu, n);
  gpu->copy(other.data(), buf.data(), n);
  EXPECT_TRUE(bitwise(down(other), src));
  for (float v : {0.0f, 2.5f, -0.0f, -3.0e38f}) {
    gpu->fill(other.data(), n, bfloat16(v));
    EXPECT_TRUE(bitwise(down(other), Bf16(n, bfloat16(v)))) << v;
  }
  // widen is exact; narrow rounds to nearest-even as the host conversion (random floats hit ties too).
  DeviceBuffer<float> wide(*gpu_float, n);
  gpu->widen(wide.data(), buf.data(), n);
  std::vector<float> want_wide(n);
  widen_bfloat16(want_wide.data(), src.data(), n);
  EXPECT_TRUE(bitwise(down(wide), want_wide));
  auto floats = cast<float>(random_values(n, 2, -1e3, 1e3));
  for (size_t i = 0; i < 1000; ++i) {  // exact ties: halfway between two bf16 values
    const uint32_t tie = (static_cast<uint32_t>(0x3f80 + i) << 16) | 0x8000u;
    std::memcpy(&floats[i], &tie, sizeof(tie));
  }
  auto gfloats = up(floats);
  gpu->narrow(other.data(), gfloats.data(), n);
  Bf16 want_narrow(n);
  narrow_to_bfloat16(want_narrow.data(), floats.data(), n);
  EXPECT_TRUE(bitwise(down(other), want_narrow));
}

// ---- matrix products ----

TEST_F(CudaBf16Ops, GemmAllTransposesWithLeadingDimensions) {
  for (auto [m, n, k] : {std::tuple{7, 9, 11}, std::tuple{70, 90, 400}, std::tuple{128, 64, 32}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
        const auto a = to_bf16(random_values(static_cast<size_t>(ta ? k : m) * lda, 1));
        const auto b = to_bf16(random_values(static_cast<size_t>(tb ? n : k) * ldb, 2));
        const auto c = to_bf16(random_values(static_cast<size_t>(m) * ldc, 3));
        const Transpose tra = ta ? Transpose::kYes : Transpose::kNo, trb = tb ? Transpose::kYes : Transpose::kNo;
        auto want = c;
        cpu->gemm(tra, trb, m, n, k, 0.75f, a.data(), lda, b.data(), ldb, -0.5f, want.data(), ldc);
        auto da = up(a), db = up(b), dc = up(c);
        gpu->gemm(tra, trb, m, n, k, 0.75f, da.data(), lda, db.data(), ldb, -0.5f, dc.data(), ldc);
        EXPECT_TRUE(close(down(dc), want)) << "ta=" << ta << " tb=" << tb << " m=" << m;
      }
    }
  }
}

TEST_F(CudaBf16Ops, GemmStridedBatched) {
  const int m = 33, n = 17, k = 61, batch = 3;
  const int lda = m, ldb = k, ldc = n;  // A and B transposed
  const long long sa = static_cast<long long>(k) * lda + 7, sb = static_cast<long long>(n) * ldb + 3,
                  sc = static_cast<long long>(m) * ldc + 1;
  const auto a = to_bf16(random_values(sa * batch, 4)), b = to_bf16(random_values(sb * batch, 5));
  const auto c = to_bf16(random_values(sc * batch, 6));
  auto want = c;
  cpu->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, a.data(), lda, sa, b.data(), ldb, sb,
                            0.25f, want.data(), ldc, sc, batch);
  auto da = up(a), db = up(b), dc = up(c);
  gpu->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, da.data(), lda, sa, db.data(), ldb, sb,
                            0.25f, dc.data(), ldc, sc, batch);
  EXPECT_TRUE(close(down(dc), want));
}

// Forward with an aligned bias (cuBLASLt's bias epilogue on a bf16 bias) and a 2-byte aligned one (the
// GEMM onto broadcast bias rows), backward with dW and dbias accumulated in fp32.
TEST_F(CudaBf16Ops, LinearForwardBackwardAccumulatesInFloat) {
  const int rows = 300, in = 64, out = 48;  // rows > one column-sum block (128)
  const auto x = to_bf16(random_values(rows * in, 1)), w = to_bf16(random_values(out * in, 2));
  const auto bias = to_bf16(random_values(out + 1, 3)), dy = to_bf16(random_values(rows * out, 4));
  const auto dw0 = cast<float>(random_values(out * in, 5)), db0 = cast<float>(random_values(out, 6));
  auto gx = up(x), gw = up(w), gbias = up(bias), gdy = up(dy);
  for (int bias_offset : {0, 1}) {
    for (bool with_bias : {true, false}) {
      Bf16 y(rows * out);
      cpu->linear_forward(y.data(), x.data(), w.data(), with_bias ? bias.data() + bias_offset : nullptr, rows, in, out);
      DeviceBuffer<bfloat16> gy(*gpu, y.size());
      gpu->linear_forward(gy.data(), gx.data(), gw.data(), with_bias ? gbias.data() + bias_offset : nullptr, rows, in,
                          out);
      EXPECT_TRUE(close(down(gy), y)) << "bias " << with_bias << " offset " << bias_offset;
    }
  }
  Bf16 dx(rows * in);
  std::vector<float> dw = dw0, db = db0;
  cpu->linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), rows, in, out);
  DeviceBuffer<bfloat16> gdx(*gpu, dx.size());
  auto gdw = up(dw0);
  auto gdb = up(db0);
  gpu->linear_backward(gdx.data(), gdw.data(), gdb.data(), gdy.data(), gx.data(), gw.data(), rows, in, out);
  EXPECT_TRUE(close(down(gdx), dx));
  EXPECT_TRUE(close(down(gdw), dw));
  EXPECT_TRUE(close(down(gdb), db, kSumTol, kSumTol));  // fp32 sums of the same bf16 values
  // Null dx and dbias are skipped; dW accumulates again.
  gpu->linear_backward(nullptr, gdw.data(), nullptr, gdy.data(), gx.data(), gw.data(), rows, in, out);
  cpu->linear_backward(nullptr, dw.data(), nullptr, dy.data(), x.data(), w.data(), rows, in, out);
  EXPECT_TRUE(close(down(gdw), dw));
  EXPECT_TRUE(close(down(gdb), db, kSumTol, kSumTol));
}

// ---- elementwise ----

TEST_F(CudaBf16Ops, ActivationsForwardBackward) {
  expect_activations_are_the_cpus([](const Bf16& got, const Bf16& want) { return close(got, want); });
}

TEST_F(CudaBf16Ops, AddAccumulateScaleRoundOnce) {
  const size_t n = 70001;
  const auto a = to_bf16(random_values(n, 1)), b = to_bf16(random_values(n, 2, -1e-2, 1e-2));
  auto ga = up(a);
  auto gb = up(b);
  DeviceBuffer<bfloat16> out(*gpu, n);
  gpu->add(out.data(), ga.data(), gb.data(), n);
  Bf16 want(n);
  cpu->add(want.data(), a.data(), b.data(), n);
  EXPECT_TRUE(bitwise(down(out), want));
  gpu->add(ga.data(), ga.data(), gb.data(), n);  // out aliases a
  EXPECT_TRUE(bitwise(down(ga), want));
  auto acc = a;
  cpu->accumulate(acc.data(), b.data(), n);
  auto gacc = up(a);
  gpu->accumulate(gacc.data(), gb.data(), n);
  EXPECT_TRUE(bitwise(down(gacc), acc));
  auto scaled = a;
  cpu->scale(scaled.data(), n, 0.3f);
  auto gscaled = up(a);
  gpu->scale(gscaled.data(), n, 0.3f);
  EXPECT_TRUE(bitwise(down(gscaled), scaled));
}

TEST_F(CudaBf16Ops, DropoutKeepMasksAreTheCpus) { expect_dropout_is_the_cpus(); }

// ---- normalisation ----

TEST_F(CudaBf16Ops, LayerNormForwardBackward) {
  for (auto [rows, cols] : {std::pair{300, 256}, std::pair{7, 1000}, std::pair{129, 33}}) {
    const size_t n = static_cast<size_t>(rows) * cols;
    const auto x = to_bf16(random_values(n, 1, -3.0, 5.0)), dy = to_bf16(random_values(n, 2));
    const auto gamma = to_bf16(random_values(cols, 3, 0.5, 1.5)), beta = to_bf16(random_values(cols, 4));
    const auto dgamma0 = cast<float>(random_values(cols, 5)), dbeta0 = cast<float>(random_values(cols, 6));
    Bf16 y(n), dx(n);
    std::vector<float> mean(rows), rstd(rows), dgamma = dgamma0, dbeta = dbeta0;
    cpu->layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, cols, 1e-12f);
    cpu->layernorm_backward(dx.data(), dgamma.data(), dbeta.data(), dy.data(), x.data(), mean.data(), rstd.data(),
                            gamma.data(), rows, cols);
    auto gx = up(x), gdy = up(dy), ggamma = up(gamma), gbeta = up(beta);
    DeviceBuffer<bfloat16> gy(*gpu, n), gdx(*gpu, n);
    DeviceBuffer<float> gmean(*gpu_float, rows), grstd(*gpu_float, rows);
    auto gdgamma = up(dgamma0), gdbeta = up(dbeta0);
    gpu->layernorm_forward(gy.data(), gmean.data(), grstd.data(), gx.data(), ggamma.data(), gbeta.data(), rows, cols,
                           1e-12f);
    // Backward from the CPU's statistics, so that it is compared on equal inputs.
    auto cmean = up(mean), crstd = up(rstd);
    gpu->layernorm_backward(gdx.data(), gdgamma.data(), gdbeta.data(), gdy.data(), gx.data(), cmean.data(),
                            crstd.data(), ggamma.data(), rows, cols);
    const std::string what = "rows " + std::to_string(rows) + " cols " + std::to_string(cols);
    EXPECT_TRUE(close(down(gy), y)) << what;
    EXPECT_TRUE(close(down(gmean), mean, kSumTol, kSumTol)) << what;
    EXPECT_TRUE(close(down(grstd), rstd, kSumTol, kSumTol)) << what;
    EXPECT_TRUE(close(down(gdx), dx)) << what;
    EXPECT_TRUE(close(down(gdgamma), dgamma)) << what;
    EXPECT_TRUE(close(down(gdbeta), dbeta, kSumTol, kSumTol)) << what;
  }
}

// ---- embeddings ----

TEST_F(CudaBf16Ops, EmbeddingForwardIsExactAndBackwardIsFloat) {
  const int B = 3, S = 50, E = 40, V = 17, T = 2;  // few ids: long runs cross the segment chunks
  const auto word = to_bf16(random_values(V * E, 1)), pos = to_bf16(random_values(S * E, 2));
  const auto type = to_bf16(random_values(T * E, 3)), dout = to_bf16(random_values(B * S * E, 4));
  const auto ids = random_ints(B * S, 5, 0, V), type_ids = random_ints(B * S, 6, 0, T);
  Bf16 out(B * S * E);
  cpu->embedding_forward(out.data(), ids.data(), type_ids.data(), word.data(), pos.data(), type.data(), B, S, E);
  auto gword = up(word), gpos = up(pos), gtype = up(type), gdout = up(dout);
  auto gids = up(ids), gtype_ids = up(type_ids);
  DeviceBuffer<bfloat16> gout(*gpu, out.size());
  gpu->embedding_forward(gout.data(), gids.data(), gtype_ids.data(), gword.data(), gpos.data(), gtype.data(), B, S, E);
  EXPECT_TRUE(bitwise(down(gout), out));

  const auto dword0 = cast<float>(random_values(V * E, 7)), dpos0 = cast<float>(random_values(S * E, 8));
  const auto dtype0 = cast<float>(random_values(T * E, 9));
  auto dword = dword0, dpos = dpos0, dtype = dtype0;
  cpu->embedding_backward(dword.data(), dpos.data(), dtype.data(), dout.data(), ids.data(), type_ids.data(), B, S, E);
  auto gdword = up(dword0), gdpos = up(dpos0), gdtype = up(dtype0);
  gpu->embedding_backward(gdword.data(), gdpos.data(), gdtype.data(), gdout.data(), gids.data(), gtype_ids.data(), B, S,
                          E);
  EXPECT_TRUE(close(down(gdword), dword, kSumTol, kSumTol));
  EXPECT_TRUE(bitwise(down(gdpos), dpos));  // the same order as the CPU
  EXPECT_TRUE(close(down(gdtype), dtype, kSumTol, kSumTol));
}

TEST_F(CudaBf16Ops, GatherAndScatterRowsRoundOncePerRow) {
  const int B = 3, S = 20, P = 9, C = 33;
  const auto x = to_bf16(random_values(B * S * C, 1)), dout = to_bf16(random_values(B * P * C, 2));
  auto positions = random_ints(B * P, 3, 0, S);
  positions[1] = positions[0];  // duplicates add up
  positions[2] = positions[0];
  Bf16 gathered(B * P * C);
  cpu->gather_rows(gathered.data(), x.data(), positions.data(), B, S, P, C);
  auto gx = up(x), gdout = up(dout);
  auto gpositions = up(positions);
  DeviceBuffer<bfloat16> ggathered(*gpu, gathered.size());
  gpu->gather_rows(ggathered.data(), gx.data(), gpositions.data(), B, S, P, C);
  EXPECT_TRUE(bitwise(down(ggathered), gathered));
  auto dx = x;
  cpu->scatter_add_rows(dx.data(), dout.data(), positions.data(), B, S, P, C);
  gpu->scatter_add_rows(gx.data(), gdout.data(), gpositions.data(), B, S, P, C);
  EXPECT_TRUE(bitwise(down(gx), dx));
}

// ---- attention ----

struct AttentionCase {
  int B, S, H, D;
  float dropout;
};

TEST_F(CudaBf16Ops, AttentionForwardBackward) {
  for (const AttentionCase& ac : {AttentionCase{3, 37, 2, 16, 0.0f}, AttentionCase{3, 37, 2, 16, 0.1f}}) {
    const int B = ac.B, S = ac.S, H = ac.H, D = ac.D;
    const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = static_cast<size_t>(B) * S * H * D,
                 np = static_cast<size_t>(B) * H * S * S;
    const auto qkv = to_bf16(random_values(nqkv, 1, -2.0, 2.0)), dctx = to_bf16(random_values(nctx, 2));
    const auto mask = right_padded_mask(B, S);
    const DropoutKey key{
        .seed = 4, .step = 7, .lane = 2, .first_example = 30, .elements_per_example = static_cast<uint64_t>(H) * S * S};
    Bf16 ctx(nctx), probs(np), dqkv(nqkv), scratch(np);
    std::vector<uint8_t> keep(np);
    cpu->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, ac.dropout, key);
    cpu->attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(),
                            mask.data(), B, S, H, D, ac.dropout);
    auto gqkv = up(qkv), gdctx = up(dctx);
    auto gmask = up(mask);
    DeviceBuffer<bfloat16> gctx(*gpu, nctx), gprobs(*gpu, np), gdqkv(*gpu, nqkv), gscratch(*gpu, np);
    auto gkeep = bytes(np);
    gpu->attention_forward(gctx.data(), gprobs.data(), gkeep.data(), gqkv.data(), gmask.data(), B, S, H, D, ac.dropout,
                           key);
    EXPECT_EQ(down(gkeep), keep) << "p " << ac.dropout;
    EXPECT_TRUE(close(down(gprobs), probs)) << "p " << ac.dropout;
    EXPECT_TRUE(close(down(gctx), ctx, 1e-2, kOperandFloor)) << "p " << ac.dropout;
    EXPECT_TRUE(normwise(down(gctx), ctx, 1e-2)) << "p " << ac.dropout;
    // Backward from the CPU's probabilities (the op's inputs), so that it is compared on equal inputs.
    auto cprobs = up(probs);
    gpu->attention_backward(gdqkv.data(), gscratch.data(), gdctx.data(), gqkv.data(), cprobs.data(), gkeep.data(),
                            gmask.data(), B, S, H, D, ac.dropout);
    EXPECT_TRUE(close(down(gdqkv), dqkv, 1e-2, kOperandFloor)) << "p " << ac.dropout;
    EXPECT_TRUE(normwise(down(gdqkv), dqkv, 1e-2)) << "p " << ac.dropout;
  }
}

// Dropout 0 goes to cuDNN SDPA on the bf16 tensors in place, dropout > 0 and head size 12 (which cuDNN
// does not take) to our fused kernels.
TEST_F(CudaBf16Ops, FusedAttentionForwardBackward) {
  for (const AttentionCase& ac :
       {AttentionCase{3, 64, 2, 32, 0.0f}, AttentionCase{3, 37, 2, 16, 0.1f}, AttentionCase{3, 37, 2, 12, 0.0f}}) {
    const int B = ac.B, S = ac.S, H = ac.H, D = ac.D;
    ASSERT_EQ(gpu->fused_attention_supported(B, S, H, D, ac.dropout),
              gpu_float->fused_attention_supported(B, S, H, D, ac.dropout));
    if (!gpu->fused_attention_supported(B, S, H, D, ac.dropout)) continue;
    const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = static_cast<size_t>(B) * S * H * D,
                 nstats = static_cast<size_t>(B) * H * S;
    const auto qkv = to_bf16(random_values(nqkv, 1, -2.0, 2.0)), dctx = to_bf16(random_values(nctx, 2));
    const auto mask = right_padded_mask(B, S);
    const DropoutKey key{
        .seed = 4, .step = 7, .lane = 2, .first_example = 30, .elements_per_example = static_cast<uint64_t>(H) * S * S};
    Bf16 ctx(nctx), dqkv(nqkv);
    std::vector<float> stats(nstats);
    cpu->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), B, S, H, D, ac.dropout, key);
    cpu->fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), B, S, H,
                                  D, ac.dropout, key);
    auto gqkv = up(qkv), gdctx = up(dctx);
    auto gmask = up(mask);
    DeviceBuffer<bfloat16> gctx(*gpu, nctx), gdqkv(*gpu, nqkv);
    DeviceBuffer<float> gstats(*gpu_float, nstats);
    gpu->fused_attention_forward(gctx.data(), gstats.data(), gqkv.data(), gmask.data(), B, S, H, D, ac.dropout, key);
    gpu->fused_attention_backward(gdqkv.data(), gdctx.data(), gqkv.data(), gctx.data(), gstats.data(), gmask.data(), B,
                                  S, H, D, ac.dropout, key);
    gpu->synchronize();
    const std::string what = "D " + std::to_string(D) + " p " + std::to_string(ac.dropout);
    EXPECT_TRUE(normwise(down(gctx), ctx, 1e-2)) << what;
    EXPECT_TRUE(normwise(down(gstats), stats, 1e-2)) << what;
    EXPECT_TRUE(normwise(down(gdqkv), dqkv, 1e-2)) << what;
    if (ac.dropout > 0.0f || D % 8 != 0) {  // our kernels: the reference's arithmetic, elementwise
      EXPECT_TRUE(close(down(gctx), ctx, 1e-2, kOperandFloor)) << what;
      EXPECT_TRUE(close(down(gdqkv), dqkv, 1e-2, kOperandFloor)) << what;
      EXPECT_TRUE(close(down(gstats), stats, kSumTol, kSumTol)) << what;
    }
  }
}

// cuDNN SDPA reads and writes the caller's bf16 tensors in place when they are 16-byte aligned, and goes
// through aligned copies when they are not: tensors one element (2 bytes) off give the same bits.
TEST_F(CudaBf16Ops, FusedAttentionOnMisalignedTensorsIsTheAlignedResult) {
  const int B = 3, S = 64, H = 2, D = 32;
  ASSERT_TRUE(gpu->fused_attention_supported(B, S, H, D, 0.0f));
  const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = nqkv / 3, nstats = static_cast<size_t>(B) * H * S;
  const Bf16 qkv = to_bf16(random_values(nqkv, 11, -2.0, 2.0)), dctx = to_bf16(random_values(nctx, 12));
  auto mask = up(right_padded_mask(B, S));
  struct Result {
    Bf16 ctx, dqkv;
    std::vector<float> stats;
  };
  auto run = [&](size_t offset) {
    // Every tensor `offset` elements into its buffer (stats: the same number of floats).
    DeviceBuffer<bfloat16> gqkv(*gpu, nqkv + offset), gdctx(*gpu, nctx + offset), gctx(*gpu, nctx + offset),
        gdqkv(*gpu, nqkv + offset);
    DeviceBuffer<float> gstats(*gpu_float, nstats + offset);
    gpu->copy_from_host(gqkv.data() + offset, qkv.data(), nqkv);
    gpu->copy_from_host(gdctx.data() + offset, dctx.data(), nctx);
    const DropoutKey key{};
    gpu->fused_attention_forward(gctx.data() + offset, gstats.data() + offset, gqkv.data() + offset, mask.data(), B, S,
                                 H, D, 0.0f, key);
    gpu->fused_attention_backward(gdqkv.data() + offset, gdctx.data() + offset, gqkv.data() + offset,
                                  gctx.data() + offset, gstats.data() + offset, mask.data(), B, S, H, D, 0.0f, key);
    Result r{Bf16(nctx), Bf16(nqkv), std::vector<float>(nstats)};
    gpu->copy_to_host(r.ctx.data(), gctx.data() + offset, nctx);
    gpu->copy_to_host(r.dqkv.data(), gdqkv.data() + offset, nqkv);
    gpu_float->copy_to_host(r.stats.data(), gstats.data() + offset, nstats);
    return r;
  };
  const Result aligned = run(0), misaligned = run(1);
  EXPECT_TRUE(bitwise(misaligned.ctx, aligned.ctx));
  EXPECT_TRUE(bitwise(misaligned.stats, aligned.stats));
  EXPECT_TRUE(bitwise(misaligned.dqkv, aligned.dqkv));
}

// Native bf16 attention: nothing is widened, so no call takes an fp32 [B,H,S,S] tensor (or an fp32 copy
// of qkv) from the arena; what they take is the workspace of one head's [B,S,S] slices (at most two fp32
// and one bf16, grown with the workspace's 1.5x headroom). The widening version took 4 bytes per element
// of [B,H,S,S] and more. (cuDNN's own workspace is outside the arena, as cuBLAS's.)
TEST_F(CudaBf16Ops, AttentionTakesNoFp32ProbabilityScratch) {
  const int B = 2, S = 128, H = 8, D = 32;
  const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = nqkv / 3, np = static_cast<size_t>(B) * H * S * S,
               nstats = static_cast<size_t>(B) * H * S, bss = static_cast<size_t>(B) * S * S;
  const DropoutKey key{.seed = 1, .step = 2, .lane = 3, .first_example = 0, .elements_per_example = np / B};
  auto qkv = up(to_bf16(random_values(nqkv, 5, -2.0, 2.0))), dctx = up(to_bf16(random_values(nctx, 6)));
  auto mask = up(right_padded_mask(B, S));
  DeviceBuffer<bfloat16> ctx(*gpu, nctx), probs(*gpu, np), dqkv(*gpu, nqkv), scratch(*gpu, np);
  DeviceBuffer<float> stats(*gpu_float, nstats);
  auto keep = bytes(np);
  gpu->synchronize();
  const CudaMemoryStats before = cuda_memory_stats(*gpu_float);
  ASSERT_EQ(before.peak, before.in_use) << "a fresh backend: the peak so far is what the buffers hold";
  for (const float dropout : {0.0f, 0.1f}) {
    gpu->attention_forward(ctx.data(), probs.data(), keep.data(), qkv.data(), mask.data(), B, S, H, D, dropout, key);
    gpu->attention_backward(dqkv.data(), scratch.data(), dctx.data(), qkv.data(), probs.data(), keep.data(),
                            mask.data(), B, S, H, D, dropout);
    gpu->fused_attention_forward(ctx.data(), stats.data(), qkv.data(), mask.data(), B, S, H, D, dropout, key);
    gpu->fused_attention_backward(dqkv.data(), dctx.data(), qkv.data(), ctx.data(), stats.data(), mask.data(), B, S, H,
                                  D, dropout, key);
  }
  gpu->synchronize();
  const size_t taken = cuda_memory_stats(*gpu_float).peak - before.in_use;
  const size_t per_head = 2 * bss * sizeof(float) + bss * sizeof(bfloat16) + 3 * 256;
  EXPECT_LT(taken, np * sizeof(float)) << "an fp32 [B,H,S,S] tensor is " << np * sizeof(float) << " bytes";
  EXPECT_LE(taken, per_head * 3 / 2) << "one head's slices are " << per_head << " bytes";
}

// ---- losses and sampling ----

TEST_F(CudaBf16Ops, SoftmaxCrossEntropyAndLogSoftmax) {
  for (int V : {1000, 30522}) {
    const int rows = 13;
    const size_t n = static_cast<size_t>(rows) * V;
    const auto logits = to_bf16(random_values(n, 1, -8.0, 8.0));
    const auto labels = random_ints(rows, 2, 0, V);
    const auto grad_scale = cast<float>(random_values(rows, 3, 0.0, 2.0));
    std::vector<float> loss(rows);
    Bf16 dlogits(n);
    std::vector<int32_t> argmax(rows);
    cpu->softmax_cross_entropy(loss.data(), dlogits.data(), argmax.data(), logits.data(), labels.data(),
                               grad_scale.data(), rows, V);
    auto glogits = up(logits);
    auto glabels = up(labels);
    auto gscale = up(grad_scale);
    DeviceBuffer<float> gloss(*gpu_float, rows);
    DeviceBuffer<bfloat16> gdlogits(*gpu, n);
    DeviceBuffer<bfloat16, int32_t> gargmax(*gpu, rows);
    gpu->softmax_cross_entropy(gloss.data(), gdlogits.data(), gargmax.data(), glogits.data(), glabels.data(),
                               gscale.data(), rows, V);
    EXPECT_TRUE(close(down(gloss), loss, kSumTol, kSumTol)) << V;
    EXPECT_TRUE(close(down(gdlogits), dlogits)) << V;
    EXPECT_EQ(down(gargmax), argmax) << V;
    // dlogits aliasing logits.
    gpu->softmax_cross_entropy(gloss.data(), glogits.data(), nullptr, glogits.data(), glabels.data(), gscale.data(),
                               rows, V);
    EXPECT_TRUE(close(down(glogits), dlogits)) << V;

    Bf16 y(n);
    cpu->log_softmax(y.data(), logits.data(), rows, V);
    auto gx = up(logits);
    gpu->log_softmax(gx.data(), gx.data(), rows, V);  // in place
    EXPECT_TRUE(close(down(gx), y)) << V;
  }
}

TEST_F(CudaBf16Ops, SigmoidCrossEntropy) {
  const size_t n = 5001;
  const auto logit = to_bf16(random_values(n, 1, -10.0, 10.0));
  const auto label = random_ints(n, 2, 0, 2);
  const auto grad_scale = cast<float>(random_values(n, 3, 0.0, 2.0));
  std::vector<float> loss(n);
  Bf16 dlogit(n);
  cpu->sigmoid_cross_entropy(loss.data(), dlogit.data(), logit.data(), label.data(), grad_scale.data(), n);
  auto glogit = up(logit);
  auto glabel = up(label);
  auto gscale = up(grad_scale);
  DeviceBuffer<float> gloss(*gpu_float, n);
  DeviceBuffer<bfloat16> gdlogit(*gpu, n);
  gpu->sigmoid_cross_entropy(gloss.data(), gdlogit.data(), glogit.data(), glabel.data(), gscale.data(), n);
  EXPECT_TRUE(close(down(gloss), loss, kSumTol, kSumTol));
  EXPECT_TRUE(close(down(gdlogit), dlogit));
}

TEST_F(CudaBf16Ops, GumbelSamplesAreTheCpus) { expect_gumbel_samples_are_the_cpus(); }

TEST_F(CudaBf16Ops, ReplaceMaskedTokensIsTheCpus) {
  const int B = 4, S = 30, P = 6;
  const auto original = random_ints(B * S, 1, 0, 50), input_mask = random_ints(B * S, 2, 0, 2);
  const auto positions = random_ints(B * P, 3, 0, S), samples = random_ints(B * P, 4, 0, 50);
  const auto weights = cast<float>(random_values(B * P, 5, -0.5, 1.0));
  std::vector<int32_t> corrupted(B * S), label(B * S);
  cpu->replace_masked_tokens(corrupted.data(), label.data(), original.data(), input_mask.data(), positions.data(),
                             weights.data(), samples.data(), B, S, P);
  auto goriginal = up(original), gmask = up(input_mask), gpositions = up(positions), gsamples = up(samples);
  auto gweights = up(weights);
  DeviceBuffer<bfloat16, int32_t> gcorrupted(*gpu, B * S), glabel(*gpu, B * S);
  gpu->replace_masked_tokens(gcorrupted.data(), glabel.data(), goriginal.data(), gmask.data(), gpositions.data(),
                             gweights.data(), gsamples.data(), B, S, P);
  EXPECT_EQ(down(gcorrupted), corrupted);
  EXPECT_EQ(down(glabel), label);
}

// ---- reductions and optimizer ----

TEST_F(CudaBf16Ops, SumSquaresOfWidenedValues) {
  for (size_t n : {size_t{0}, size_t{5}, size_t{100003}}) {
    const auto x = to_bf16(random_values(n, 1, -3.0, 3.0));
    auto gx = up(x);
    const double want = cpu->sum_squares(x.data(), n);
    EXPECT_NEAR(gpu->sum_squares(gx.data(), n), want, 1e-12 * std::max(1.0, want)) << n;
  }
}

TEST_F(CudaBf16Ops, OptimizerRunsOnWide) {
  DeviceBuffer<bfloat16> p(*gpu, 4);
  try {
    gpu->adamw_step(p.data(), p.data(), p.data(), p.data(), 4, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, 1, 1.0f, true);
    FAIL() << "adamw_step ran on bf16 storage";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("wide()"), std::string::npos) << e.what();
  }
  const Backend<bfloat16>::AdamWRun run{0, 4, 0.01f};
  EXPECT_THROW(
      gpu->adamw_step_runs(p.data(), p.data(), p.data(), p.data(), &run, 1, 1e-3f, 0.9f, 0.999f, 1e-6f, 1, 1.0f, true),
      Error);
}

}  // namespace
}  // namespace electra::test
