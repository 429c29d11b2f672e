// The CUDA backends' fused post-LN residual block (dropout_add_layernorm_forward,
// layernorm_dropout_backward; layernorm_fused.cu) on a GPU, on the cases of
// tests/backend/fused_layernorm_cases.h: against the CPU backends (fp32: norm-wise relative error <= 1e-5;
// bf16 storage against the CPU bf16 reference: <= 1e-2; keep masks and res bitwise in both, as both sides
// round each stored value once), and bitwise against the unfused CUDA op sequence they replace (fp32 and
// bf16). Skips without a GPU; the kernels' arithmetic is also checked on the CPU by
// fused_layernorm_math_test.cpp (CudaFusedLayerNormMath).
#include <gtest/gtest.h>

#include <cmath>
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

template <typename V>
std::vector<double> widened(const std::vector<V>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

// ||a - b|| / ||b|| <= tol
template <typename V>
::testing::AssertionResult norm_close(const std::vector<V>& a, const std::vector<V>& b, double tol, const char* what) {
  const std::vector<double> x = widened(a), y = widened(b);
  if (x.size() != y.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double d2 = 0.0, y2 = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    d2 += (x[i] - y[i]) * (x[i] - y[i]);
    y2 += y[i] * y[i];
  }
  const double rel = y2 > 0.0 ? std::sqrt(d2 / y2) : std::sqrt(d2);
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": relative error " << rel << " > " << tol;
}

template <typename T>
void expect_close_to_cpu(const FusedLayerNormRun<T>& gpu, const FusedLayerNormRun<T>& cpu, double tol) {
  EXPECT_TRUE(same_bits(gpu.keep, cpu.keep)) << "keep";
  EXPECT_TRUE(same_bits(gpu.res, cpu.res)) << "res";
  EXPECT_TRUE(norm_close(gpu.y, cpu.y, tol, "y"));
  EXPECT_TRUE(norm_close(gpu.mean, cpu.mean, tol, "mean"));
  EXPECT_TRUE(norm_close(gpu.rstd, cpu.rstd, tol, "rstd"));
  EXPECT_TRUE(norm_close(gpu.d_res, cpu.d_res, tol, "d_res"));
  EXPECT_TRUE(norm_close(gpu.dx, cpu.dx, tol, "dx"));
  EXPECT_TRUE(norm_close(gpu.dgamma, cpu.dgamma, tol, "dgamma"));
  EXPECT_TRUE(norm_close(gpu.dbeta, cpu.dbeta, tol, "dbeta"));
}

class CudaFusedLayerNorm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
    gpu = make_cuda_backend(0, CudaBackendOptions{.arena_bytes = size_t{256} << 20});
    gpu_bf16_wide =
        make_cuda_backend(0, CudaBackendOptions{.precision = CudaPrecision::kBf16, .arena_bytes = size_t{256} << 20});
    gpu_bf16 = make_cuda_bf16_backend(*gpu_bf16_wide);
    cpu = make_cpu_backend<float>();
    cpu_bf16 = make_cpu_bf16_backend(*cpu);
  }
  ByteDownload download_from(Backend<float>& backend) {
    return [&backend](void* host, const void* src, size_t n) { cuda_copy_bytes_to_host(backend, host, src, n); };
  }

  std::unique_ptr<Backend<float>> gpu, gpu_bf16_wide, cpu;
  std::unique_ptr<Backend<bfloat16>> gpu_bf16, cpu_bf16;
};

TEST_F(CudaFusedLayerNorm, FloatMatchesCpu) {
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    SCOPED_TRACE(describe(c));
    expect_close_to_cpu(run_residual_layernorm(*gpu, download_from(*gpu), c, true),
                        run_residual_layernorm(*cpu, host_bytes, c, true), 1e-5);
  }
}

TEST_F(CudaFusedLayerNorm, Bf16MatchesCpuReference) {
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    SCOPED_TRACE(describe(c));
    expect_close_to_cpu(run_residual_layernorm(*gpu_bf16, download_from(*gpu_bf16_wide), c, true),
                        run_residual_layernorm(*cpu_bf16, host_bytes, c, true), 1e-2);
  }
}

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
