// cuDNN SDPA (lib/backend/cuda/sdpa_cudnn.h) against the CPU backend's materialised attention with
// dropout 0, in bf16 and fp16, with right padding: context, stats (checked against a double-precision
// log-sum-exp) and dqkv agree norm-wise to 1e-2 (inputs are rounded to 8 or 11 mantissa bits inside);
// masks it cannot express (holes, empty rows, packed rows) are flagged. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/backend/cuda/sdpa_cudnn.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

// ||got - want|| / ||want||
double normwise_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += want[i] * want[i];
  }
  return std::sqrt(diff) / std::sqrt(norm);
}

// Per query row, log-sum-exp of the masked scaled scores, in double: [B,H,S].
std::vector<double> reference_stats(const std::vector<float>& qkv, const std::vector<int32_t>& mask, int B, int S,
                                    int H, int D) {
  std::vector<double> stats(static_cast<size_t>(B) * H * S);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto at = [&](int b, int s, int which, int h, int d) {
    return static_cast<double>(qkv[(((static_cast<size_t>(b) * S + s) * 3 + which) * H + h) * D + d]);
  };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < S; ++i) {
        std::vector<double> scores;
        for (int j = 0; j < S; ++j) {
          if (mask[static_cast<size_t>(b) * S + j] == 0) continue;
          double dot = 0.0;
          for (int d = 0; d < D; ++d) dot += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          scores.push_back(dot * scale);
        }
        double top = -INFINITY;
        for (double x : scores) top = std::max(top, x);
        double sum = 0.0;
        for (double x : scores) sum += std::exp(x - top);
        stats[(static_cast<size_t>(b) * H + h) * S + i] = top + std::log(sum);
      }
  return stats;
}

class CudaSdpa : public ::testing::TestWithParam<CudaPrecision> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    CudaBackendOptions options;
    options.precision = GetParam();
    gpu = make_cuda_backend(0, options);
    cpu = make_cpu_backend<float>();
    stream = static_cast<cudaStream_t>(cuda_stream_of(*gpu));
  }

  DeviceBuffer<float> up(const std::vector<float>& h) {
    DeviceBuffer<float> d(*gpu, h.size());
    gpu->copy_from_host(d.data(), h.data(), h.size());
    return d;
  }
  DeviceBuffer<float, int32_t> up(const std::vector<int32_t>& h) {
    DeviceBuffer<float, int32_t> d(*gpu, h.size());
    gpu->copy_ints_from_host(d.data(), h.data(), h.size());
    return d;
  }
  std::vector<float> down(const DeviceBuffer<float>& d) {
    std::vector<float> h(d.size());
    gpu->copy_to_host(h.data(), d.data(), h.size());
    return h;
  }

  // Forward and backward on both backends; checks the three outputs norm-wise and the padding keys'
  // gradients exactly.
  // stats_offset > 0 puts stats off cuDNN's 16-byte alignment (the class stages it through a copy).
  void compare(int B, int S, int H, int D, const std::vector<int>& lengths, uint64_t seed, size_t stats_offset = 0) {
    SCOPED_TRACE(testing::Message() << "B=" << B << " S=" << S << " H=" << H << " D=" << D << " "
                                    << to_string(GetParam()));
    cuda::CudnnSdpa sdpa(stream, GetParam());
    ASSERT_TRUE(sdpa.supported(B, S, H, D, 0.0f)) << "forward: " << sdpa.why_unsupported(false, B, S, H, D, 0.0f)
                                                  << "; backward: " << sdpa.why_unsupported(true, B, S, H, D, 0.0f);
    const size_t qkv_n = 3ull * B * S * H * D, ctx_n = qkv_n / 3, stats_n = static_cast<size_t>(B) * H * S;
    const std::vector<float> qkv = cast<float>(random_values(qkv_n, seed, -2.0, 2.0));
    const std::vector<float> dcontext = cast<float>(random_values(ctx_n, seed + 1));
    std::vector<int32_t> mask(static_cast<size_t>(B) * S, 0);
    for (int b = 0; b < B; ++b)
      for (int s = 0; s < lengths[b]; ++s) mask[static_cast<size_t>(b) * S + s] = 1;

    // CPU: the materialised reference.
    std::vector<float> context_ref(ctx_n), probs(static_cast<size_t>(B) * H * S * S), dqkv_ref(qkv_n),
        scratch(probs.size());
    const DropoutKey key{};
    cpu->attention_forward(context_ref.data(), probs.data(), nullptr, qkv.data(), mask.data(), B, S, H, D, 0.0f, key);
    cpu->attention_backward(dqkv_ref.data(), scratch.data(), dcontext.data(), qkv.data(), probs.data(), nullptr,
                            mask.data(), B, S, H, D, 0.0f);
    const std::vector<double> stats_ref = reference_stats(qkv, mask, B, S, H, D);

    // GPU: cuDNN.
    DeviceBuffer<float> d_qkv = up(qkv), d_dcontext = up(dcontext);
    DeviceBuffer<float, int32_t> d_mask = up(mask);
    DeviceBuffer<float> d_context(*gpu, ctx_n), d_stats_buffer(*gpu, stats_n + stats_offset), d_dqkv(*gpu, qkv_n);
    float* d_stats = d_stats_buffer.data() + stats_offset;
    sdpa.forward(d_context.data(), d_stats, d_qkv.data(), d_mask.data(), B, S, H, D, 0.0f, key);
    sdpa.backward(d_dqkv.data(), d_dcontext.data(), d_qkv.data(), d_context.data(), d_stats, d_mask.data(), B, S, H, D,
                  0.0f, key);
    EXPECT_NO_THROW(sdpa.check_errors());  // the masks are right padding
    const std::vector<float> context = down(d_context), dqkv = down(d_dqkv);
    std::vector<float> stats = down(d_stats_buffer);
    stats.erase(stats.begin(), stats.begin() + static_cast<std::ptrdiff_t>(stats_offset));

    EXPECT_LE(normwise_error(context, to_double(context_ref)), 1e-2);
    EXPECT_LE(normwise_error(stats, stats_ref), 1e-2);
    EXPECT_LE(normwise_error(dqkv, to_double(dqkv_ref)), 1e-2);
    // Key and value gradients of padding keys are exactly 0, as on the CPU.
    for (int b = 0; b < B; ++b)
      for (int s = lengths[b]; s < S; ++s)
        for (size_t e = static_cast<size_t>(H) * D; e < 3ull * H * D; ++e) {
          ASSERT_EQ(dqkv[(static_cast<size_t>(b) * S + s) * 3 * H * D + e], 0.0f) << "b=" << b << " s=" << s;
        }

    // Same inputs, same plan: the same bits.
    DeviceBuffer<float> d_dqkv2(*gpu, qkv_n);
    sdpa.backward(d_dqkv2.data(), d_dcontext.data(), d_qkv.data(), d_context.data(), d_stats, d_mask.data(), B, S, H, D,
                  0.0f, key);
    const std::vector<float> dqkv2 = down(d_dqkv2);
    EXPECT_EQ(std::memcmp(dqkv.data(), dqkv2.data(), qkv_n * sizeof(float)), 0) << "backward is not reproducible";
  }

  std::unique_ptr<Backend<float>> gpu, cpu;
  cudaStream_t stream = nullptr;
};

TEST_P(CudaSdpa, MatchesCpuWithoutPadding) { compare(2, 32, 2, 32, {32, 32}, 11); }

TEST_P(CudaSdpa, MatchesCpuWithPadding) { compare(3, 77, 4, 64, {77, 40, 1}, 21); }

TEST_P(CudaSdpa, MatchesCpuWithUnalignedStats) { compare(2, 48, 2, 32, {48, 30}, 51, /*stats_offset=*/1); }

TEST_P(CudaSdpa, MatchesCpuAtElectraSmallShape) { compare(4, 128, 4, 64, {128, 100, 17, 64}, 31); }

TEST_P(CudaSdpa, MatchesCpuAtHeadSize128) { compare(2, 64, 2, 128, {50, 64}, 41); }

TEST_P(CudaSdpa, SupportRules) {
  cuda::CudnnSdpa sdpa(stream, GetParam());
  EXPECT_TRUE(sdpa.supported(2, 128, 4, 64, 0.0f)) << sdpa.why_unsupported(true, 2, 128, 4, 64, 0.0f);
  EXPECT_EQ(sdpa.why_unsupported(false, 2, 128, 4, 64, 0.0f), "");
  EXPECT_NE(sdpa.why_unsupported(false, 2, 128, 4, 64, 0.1f).find("dropout"), std::string::npos);
  EXPECT_TRUE(sdpa.forward_supported(2, 128, 4, 64, 0.0f));
  EXPECT_TRUE(sdpa.backward_supported(2, 128, 4, 64, 0.0f));
  EXPECT_FALSE(sdpa.forward_supported(2, 128, 4, 64, 0.1f));
  EXPECT_FALSE(sdpa.backward_supported(2, 128, 4, 64, 0.1f));
  EXPECT_FALSE(sdpa.supported(2, 128, 4, 64, 0.1f));  // no dropout in the unified SDPA operation
  EXPECT_FALSE(sdpa.supported(2, 128, 4, 60, 0.0f));  // head size not a multiple of 8
  EXPECT_FALSE(sdpa.supported(2, 128, 4, 256, 0.0f));
  // A call the rules refuse fails, naming the shape.
  DeviceBuffer<float> buffer(*gpu, 3 * 2 * 128 * 4 * 64);
  try {
    sdpa.forward(buffer.data(), buffer.data(), buffer.data(), nullptr, 2, 128, 4, 64, 0.1f, DropoutKey{});
    FAIL() << "dropout 0.1 was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("dropout"), std::string::npos) << error.what();
  }
}

TEST_P(CudaSdpa, FlagsMasksThatAreNotRightPadding) {
  const int B = 2, S = 16, H = 1, D = 16;
  cuda::CudnnSdpa sdpa(stream, GetParam());  // with its own error word, read by check_errors
  ASSERT_TRUE(sdpa.forward_supported(B, S, H, D, 0.0f)) << sdpa.why_unsupported(false, B, S, H, D, 0.0f);
  DeviceBuffer<float> qkv = up(cast<float>(random_values(3ull * B * S * H * D, 5)));
  DeviceBuffer<float> context(*gpu, static_cast<size_t>(B) * S * H * D), stats(*gpu, static_cast<size_t>(B) * H * S);
  std::vector<int32_t> good(B * S, 1), holed(B * S, 1);
  holed[S + 3] = 0;  // sequence 1 has a hole
  DeviceBuffer<float, int32_t> good_mask = up(good), holed_mask = up(holed);

  sdpa.forward(context.data(), stats.data(), qkv.data(), good_mask.data(), B, S, H, D, 0.0f, DropoutKey{});
  EXPECT_NO_THROW(sdpa.check_errors());
  sdpa.forward(context.data(), stats.data(), qkv.data(), holed_mask.data(), B, S, H, D, 0.0f, DropoutKey{});
  EXPECT_THROW(sdpa.check_errors(), Error);
  EXPECT_NO_THROW(sdpa.check_errors()) << "the flag is cleared once reported";
  std::vector<int32_t> empty(B * S, 1);
  for (int s = 0; s < S; ++s) empty[s] = 0;  // sequence 0 attends to nothing
  DeviceBuffer<float, int32_t> empty_mask = up(empty);
  sdpa.forward(context.data(), stats.data(), qkv.data(), empty_mask.data(), B, S, H, D, 0.0f, DropoutKey{});
  EXPECT_THROW(sdpa.check_errors(), Error);
}

// A packed row (several examples: block-diagonal attention) has no key length: flagged as packed, and
// named so in the error.
TEST_P(CudaSdpa, FlagsPackedMasks) {
  const int B = 2, S = 16, H = 1, D = 16;
  cuda::CudnnSdpa sdpa(stream, GetParam());
  ASSERT_TRUE(sdpa.forward_supported(B, S, H, D, 0.0f)) << sdpa.why_unsupported(false, B, S, H, D, 0.0f);
  DeviceBuffer<float> qkv = up(cast<float>(random_values(3ull * B * S * H * D, 6)));
  DeviceBuffer<float> context(*gpu, static_cast<size_t>(B) * S * H * D), stats(*gpu, static_cast<size_t>(B) * H * S);
  DeviceBuffer<float, int32_t> packed = up(packed_rows({{5, 7}, {16}}, S).mask);
  sdpa.forward(context.data(), stats.data(), qkv.data(), packed.data(), B, S, H, D, 0.0f, DropoutKey{});
  try {
    sdpa.check_errors();
    FAIL() << "a packed mask was not flagged";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("packed"), std::string::npos) << error.what();
  }
  // One example numbered 1 throughout is plain right padding.
  DeviceBuffer<float, int32_t> single = up(packed_rows({{9}, {16}}, S).mask);
  sdpa.forward(context.data(), stats.data(), qkv.data(), single.data(), B, S, H, D, 0.0f, DropoutKey{});
  EXPECT_NO_THROW(sdpa.check_errors());
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaSdpa, ::testing::Values(CudaPrecision::kBf16, CudaPrecision::kFp16),
                         [](const ::testing::TestParamInfo<CudaPrecision>& info) { return to_string(info.param); });

}  // namespace
}  // namespace electra::test
