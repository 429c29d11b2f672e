// The CUDA backends' fused post-LN residual block (dropout_add_layernorm_forward,
// layernorm_dropout_backward; layernorm_fused.cu) on a GPU, on the cases of
// tests/backend/fused_layernorm_cases.h: bitwise against the unfused CUDA op sequence they replace (fp32 and
// bf16), and their refusals. Skips without a GPU. Against the CPU backends they are the parity table's
// cuda_float and cuda_bf16 columns (tests/backend/parity/cases_normalisation.cpp); the kernels' arithmetic is
// also checked on the CPU by fused_layernorm_math_test.cpp (CudaFusedLayerNormMath).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/fused_layernorm_cases.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

class CudaFusedLayerNorm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    gpu = make_cuda_backend(0, CudaBackendOptions{.arena_bytes = size_t{256} << 20});
    gpu_bf16_wide =
        make_cuda_backend(0, CudaBackendOptions{.precision = CudaPrecision::kBf16, .arena_bytes = size_t{256} << 20});
    gpu_bf16 = make_cuda_bf16_backend(*gpu_bf16_wide);
  }
  ByteDownload download_from(Backend<float>& backend) {
    return [&backend](void* host, const void* src, size_t n) { cuda_copy_bytes_to_host(backend, host, src, n); };
  }

  std::unique_ptr<Backend<float>> gpu, gpu_bf16_wide;
  std::unique_ptr<Backend<bfloat16>> gpu_bf16;
};

// The fused kernels keep the unfused kernels' lane order, reductions and roundings (layernorm_fused.cu).
TEST_F(CudaFusedLayerNorm, FloatMatchesUnfusedCudaBitwise) {
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    EXPECT_TRUE(runs_bitwise_equal(run_residual_layernorm(*gpu, download_from(*gpu), c, true),
                                   run_residual_layernorm(*gpu, download_from(*gpu), c, false)))
        << describe(c);
  }
}

TEST_F(CudaFusedLayerNorm, Bf16MatchesUnfusedCudaBitwise) {
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    EXPECT_TRUE(runs_bitwise_equal(run_residual_layernorm(*gpu_bf16, download_from(*gpu_bf16_wide), c, true),
                                   run_residual_layernorm(*gpu_bf16, download_from(*gpu_bf16_wide), c, false)))
        << describe(c);
  }
}

TEST_F(CudaFusedLayerNorm, RejectsBadArguments) {
  const int rows = 2, cols = 8;
  DeviceBuffer<float> a(*gpu, rows * cols), b(*gpu, rows * cols), y(*gpu, rows * cols), stats(*gpu, 2 * rows);
  DeviceBuffer<float, uint8_t> keep(*gpu, rows * cols);
  const DropoutKey key{.elements_per_example = cols};
  auto forward = [&](uint8_t* k, float p, int r, int c) {
    gpu->dropout_add_layernorm_forward(y.data(), b.data(), k, stats.data(), stats.data() + rows, a.data(), a.data(),
                                       a.data(), a.data(), r, c, p, key, 1e-5f);
  };
  EXPECT_THROW(forward(keep.data(), 1.0f, rows, cols), Error);
  EXPECT_THROW(forward(nullptr, 0.1f, rows, cols), Error);
  EXPECT_THROW(forward(keep.data(), 0.1f, rows, 0), Error);
  EXPECT_THROW(gpu->layernorm_dropout_backward(y.data(), b.data(), nullptr, nullptr, a.data(), a.data(), stats.data(),
                                               stats.data() + rows, a.data(), nullptr, rows, cols, 0.1f),
               Error);
  gpu->synchronize();
}

}  // namespace
}  // namespace electra::test
