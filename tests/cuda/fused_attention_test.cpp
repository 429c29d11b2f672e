// The CUDA backend's fused attention against the CPU backend's (skips without a GPU): our kernels in the
// fp32 mode (forward context and stats, backward dqkv; dropout off and on, which also proves the same
// keep bits; right padding, a [CLS]-only example and, for our kernels, an empty one), and in the bf16
// mode both paths: cuDNN SDPA (dropout 0) and our kernels (dropout > 0, which cuDNN does not serve).
// Packed rows (block-diagonal masks): our kernels, fused and materialised, in fp32 and bf16 mode, and
// cuDNN SDPA's refusal. Tolerances: fp32 relative 1e-5 of the largest element; bf16 relative 1e-2.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/backend/cuda/sdpa_cudnn.h"
#include "lib/core/error.h"
#include "lib/model/attention_impl.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

struct FusedResult {
  std::vector<float> context, stats, dqkv;
};

FusedResult run_fused(Backend<float>& be, const std::vector<float>& qkv, const std::vector<float>& dctx,
                      const std::vector<int32_t>& mask, int B, int S, int H, int D, float dropout,
                      const DropoutKey& key) {
  DeviceBuffer<float> d_qkv(be, qkv.size()), d_dctx(be, dctx.size()), d_ctx(be, dctx.size()),
      d_stats(be, static_cast<size_t>(B) * H * S), d_dqkv(be, qkv.size());
  DeviceBuffer<float, int32_t> d_mask(be, mask.size());
  be.copy_from_host(d_qkv.data(), qkv.data(), qkv.size());
  be.copy_from_host(d_dctx.data(), dctx.data(), dctx.size());
  be.copy_ints_from_host(d_mask.data(), mask.data(), mask.size());
  be.fill(d_dqkv.data(), d_dqkv.size(), 123.0f);  // overwritten
  be.fused_attention_forward(d_ctx.data(), d_stats.data(), d_qkv.data(), d_mask.data(), B, S, H, D, dropout, key);
  be.fused_attention_backward(d_dqkv.data(), d_dctx.data(), d_qkv.data(), d_ctx.data(), d_stats.data(), d_mask.data(),
                              B, S, H, D, dropout, key);
  FusedResult r{std::vector<float>(d_ctx.size()), std::vector<float>(d_stats.size()),
                std::vector<float>(d_dqkv.size())};
  be.copy_to_host(r.context.data(), d_ctx.data(), r.context.size());
  be.copy_to_host(r.stats.data(), d_stats.data(), r.stats.size());
  be.copy_to_host(r.dqkv.data(), d_dqkv.data(), r.dqkv.size());
  return r;
}

// attention_forward then attention_backward: context, probabilities [B,H,S,S] and dqkv.
struct MaterialisedResult {
  std::vector<float> context, probs, dqkv;
};

MaterialisedResult run_materialised(Backend<float>& be, const std::vector<float>& qkv, const std::vector<float>& dctx,
                                    const std::vector<int32_t>& mask, int B, int S, int H, int D, float dropout,
                                    const DropoutKey& key) {
  const size_t np = static_cast<size_t>(B) * H * S * S;
  DeviceBuffer<float> d_qkv(be, qkv.size()), d_dctx(be, dctx.size()), d_ctx(be, dctx.size()), d_probs(be, np),
      d_scratch(be, np), d_dqkv(be, qkv.size());
  DeviceBuffer<float, uint8_t> d_keep(be, np);
  DeviceBuffer<float, int32_t> d_mask(be, mask.size());
  be.copy_from_host(d_qkv.data(), qkv.data(), qkv.size());
  be.copy_from_host(d_dctx.data(), dctx.data(), dctx.size());
  be.copy_ints_from_host(d_mask.data(), mask.data(), mask.size());
  be.attention_forward(d_ctx.data(), d_probs.data(), d_keep.data(), d_qkv.data(), d_mask.data(), B, S, H, D, dropout,
                       key);
  be.attention_backward(d_dqkv.data(), d_scratch.data(), d_dctx.data(), d_qkv.data(), d_probs.data(), d_keep.data(),
                        d_mask.data(), B, S, H, D, dropout);
  MaterialisedResult r{std::vector<float>(d_ctx.size()), std::vector<float>(np), std::vector<float>(d_dqkv.size())};
  be.copy_to_host(r.context.data(), d_ctx.data(), r.context.size());
  be.copy_to_host(r.probs.data(), d_probs.data(), r.probs.size());
  be.copy_to_host(r.dqkv.data(), d_dqkv.data(), r.dqkv.size());
  return r;
}

::testing::AssertionResult near(const std::vector<float>& got, const std::vector<float>& want, double rel) {
  const auto expected = to_double(want);
  return all_near(got, expected, rel, rel * max_abs(expected));
}

// Right padding of several lengths; example 2 is [CLS] only; with `empty_row`, example 3 attends to
// nothing (our kernels handle it; cuDNN wants at least one key).
std::vector<int32_t> padding_mask(int B, int S, bool empty_row) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 1);
  for (int b = 0; b < B; ++b) {
    const int length = b == 2 ? 1 : (b == 3 && empty_row) ? 0 : S - 5 * b;
    for (int s = length; s < S; ++s) mask[static_cast<size_t>(b) * S + s] = 0;
  }
  return mask;
}

class CudaFusedAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    cpu = make_cpu_backend<float>();
  }
  std::unique_ptr<Backend<float>> cpu;
};

// S = 150: more keys than one pass of a warp's lanes (128), and not a multiple of four.
TEST_F(CudaFusedAttention, OwnKernelsMatchTheCpuInFp32) {
  auto gpu = make_cuda_backend(0);
  ASSERT_TRUE(gpu->fused_attention_supported(4, 150, 3, 16, 0.1f));
  EXPECT_TRUE(use_fused_attention(*gpu, AttentionImpl::kAuto, 4, 150, 3, 16, 0.1f));  // kAuto's choice on a GPU
  const int B = 4, S = 150, H = 3, D = 16;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 31, -2.0, 2.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 32));
  const auto mask = padding_mask(B, S, /*empty_row=*/true);
  const DropoutKey key{.seed = 7, .step = 3, .lane = 0x10011, .first_example = 64, .elements_per_example = H * S * S};
  for (float dropout : {0.0f, 0.1f}) {
    const FusedResult want = run_fused(*cpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    const FusedResult got = run_fused(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    EXPECT_TRUE(near(got.context, want.context, 1e-5)) << "context, dropout " << dropout;
    EXPECT_TRUE(near(got.dqkv, want.dqkv, 1e-5)) << "dqkv, dropout " << dropout;
    for (size_t r = 0; r < want.stats.size(); ++r) {
      if (std::isinf(want.stats[r])) {
        ASSERT_EQ(got.stats[r], want.stats[r]) << "row " << r;
      } else {
        ASSERT_NEAR(got.stats[r], want.stats[r], 1e-5 * (1.0 + std::abs(want.stats[r]))) << "row " << r;
      }
    }
  }
}

// The CUDA backend's own materialised attention and its fused attention agree (same keep bits).
TEST_F(CudaFusedAttention, FusedMatchesMaterialisedOnTheGpu) {
  auto gpu = make_cuda_backend(0);
  const int B = 3, S = 64, H = 4, D = 8;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 33, -2.0, 2.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 34));
  const auto mask = padding_mask(B, S, false);
  const DropoutKey key{.seed = 2, .step = 9, .lane = 5, .first_example = 0, .elements_per_example = H * S * S};
  const float dropout = 0.1f;
  const FusedResult fused = run_fused(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
  const MaterialisedResult materialised = run_materialised(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
  EXPECT_TRUE(near(fused.context, materialised.context, 1e-5));
  EXPECT_TRUE(near(fused.dqkv, materialised.dqkv, 1e-5));
}

// Packed rows: 3, 1 and 3 examples of different lengths with trailing padding (block-diagonal masks).
// S = 150 so that examples straddle a lane's first pass (128 keys) and the four-key groups.
std::vector<int32_t> packed_mask(int S) { return packed_rows({{40, 70, 25}, {120}, {1, 90, 31}}, S).mask; }

// Our kernels on packed rows in fp32, fused and materialised, against the CPU (dropout off and on).
TEST_F(CudaFusedAttention, PackedRowsMatchTheCpuInFp32) {
  auto gpu = make_cuda_backend(0);
  const int B = 3, S = 150, H = 2, D = 16;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 37, -2.0, 2.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 38));
  const auto mask = packed_mask(S);
  const DropoutKey key{.seed = 5, .step = 4, .lane = 9, .first_example = 12, .elements_per_example = H * S * S};
  for (float dropout : {0.0f, 0.1f}) {
    const FusedResult want = run_fused(*cpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    const FusedResult got = run_fused(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    EXPECT_TRUE(near(got.context, want.context, 1e-5)) << "fused context, dropout " << dropout;
    EXPECT_TRUE(near(got.dqkv, want.dqkv, 1e-5)) << "fused dqkv, dropout " << dropout;
    for (size_t r = 0; r < want.stats.size(); ++r) {
      ASSERT_NEAR(got.stats[r], want.stats[r], 1e-5 * (1.0 + std::abs(want.stats[r]))) << "row " << r;
    }
    const MaterialisedResult m_want = run_materialised(*cpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    const MaterialisedResult m_got = run_materialised(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    EXPECT_TRUE(near(m_got.context, m_want.context, 1e-5)) << "materialised context, dropout " << dropout;
    EXPECT_TRUE(near(m_got.probs, m_want.probs, 1e-5)) << "probabilities, dropout " << dropout;
    EXPECT_TRUE(near(m_got.dqkv, m_want.dqkv, 1e-5)) << "materialised dqkv, dropout " << dropout;
    // Block-diagonal: probability (b, h, i, j) is exactly 0 where query i does not attend key j.
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < S; ++i)
          for (int j = 0; j < S; ++j) {
            if (attends_key(mask[b * S + i], mask[b * S + j])) continue;
            ASSERT_EQ(m_got.probs[((static_cast<size_t>(b) * H + h) * S + i) * S + j], 0.0f)
                << "b " << b << " h " << h << " i " << i << " j " << j;
          }
  }
}

// bf16 mode on packed rows: our kernels serve them (materialised; fused with dropout, which cuDNN does
// not take) within 1e-2 of the CPU; the fused call cuDNN SDPA would serve (dropout 0) cannot express a
// packed row, and the next waiting call says so, naming the setting that runs packed rows.
TEST_F(CudaFusedAttention, Bf16ModeRunsPackedRowsOnItsOwnKernelsAndRefusesThemInCudnn) {
  CudaBackendOptions options;
  options.precision = CudaPrecision::kBf16;
  auto gpu = make_cuda_backend(0, options);
  const int B = 3, S = 150, H = 2, D = 64;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 39, -1.0, 1.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 40));
  const auto mask = packed_mask(S);
  const DropoutKey key{.seed = 6, .step = 1, .lane = 4, .first_example = 3, .elements_per_example = H * S * S};
  for (float dropout : {0.0f, 0.1f}) {
    const MaterialisedResult want = run_materialised(*cpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    const MaterialisedResult got = run_materialised(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    EXPECT_TRUE(near(got.context, want.context, 1e-2)) << "materialised context, dropout " << dropout;
    EXPECT_TRUE(near(got.dqkv, want.dqkv, 1e-2)) << "materialised dqkv, dropout " << dropout;
  }
  const FusedResult want = run_fused(*cpu, qkv, dctx, mask, B, S, H, D, 0.1f, key);
  const FusedResult got = run_fused(*gpu, qkv, dctx, mask, B, S, H, D, 0.1f, key);
  EXPECT_TRUE(near(got.context, want.context, 1e-2)) << "fused context";
  EXPECT_TRUE(near(got.dqkv, want.dqkv, 1e-2)) << "fused dqkv";
  EXPECT_TRUE(near(got.stats, want.stats, 1e-2)) << "fused stats";
  // The backend asks the same of its own CudnnSdpa; a GPU whose cuDNN declines runs our kernels instead.
  cuda::CudnnSdpa probe(static_cast<cudaStream_t>(cuda_stream_of(*gpu)), CudaPrecision::kBf16);
  if (!probe.supported(B, S, H, D, 0.0f)) {
    GTEST_SKIP() << "cuDNN SDPA does not serve this shape here: " << probe.why_unsupported(false, B, S, H, D, 0.0f);
  }
  try {
    run_fused(*gpu, qkv, dctx, mask, B, S, H, D, 0.0f, key);
    FAIL() << "a packed mask went through cuDNN SDPA unreported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("packed attention mask"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("train.attention = materialized"), std::string::npos) << e.what();
  }
  // Reported once; right-padded masks go on through cuDNN.
  const auto padded = padding_mask(B, S, false);
  const FusedResult ok = run_fused(*gpu, qkv, dctx, padded, B, S, H, D, 0.0f, key);
  const FusedResult ok_want = run_fused(*cpu, qkv, dctx, padded, B, S, H, D, 0.0f, key);
  EXPECT_TRUE(near(ok.context, ok_want.context, 1e-2));
}

// bf16 mode: dropout 0 goes to cuDNN SDPA (where this GPU's cuDNN serves D = 64), dropout 0.1 to our
// kernels with bf16 GEMMs; both within 1e-2 of the fp32 CPU backend.
TEST_F(CudaFusedAttention, Bf16ModeMatchesTheCpuOnBothPaths) {
  CudaBackendOptions options;
  options.precision = CudaPrecision::kBf16;
  auto gpu = make_cuda_backend(0, options);
  const int B = 4, S = 128, H = 2, D = 64;
  const auto qkv = cast<float>(random_values(static_cast<size_t>(B) * S * 3 * H * D, 35, -1.0, 1.0));
  const auto dctx = cast<float>(random_values(static_cast<size_t>(B) * S * H * D, 36));
  const auto mask = padding_mask(B, S, false);
  const DropoutKey key{.seed = 4, .step = 2, .lane = 7, .first_example = 8, .elements_per_example = H * S * S};
  for (float dropout : {0.0f, 0.1f}) {
    const FusedResult want = run_fused(*cpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    const FusedResult got = run_fused(*gpu, qkv, dctx, mask, B, S, H, D, dropout, key);
    EXPECT_TRUE(near(got.context, want.context, 1e-2)) << "context, dropout " << dropout;
    EXPECT_TRUE(near(got.dqkv, want.dqkv, 1e-2)) << "dqkv, dropout " << dropout;
    EXPECT_TRUE(near(got.stats, want.stats, 1e-2)) << "stats, dropout " << dropout;
  }
}

}  // namespace
}  // namespace electra::test
