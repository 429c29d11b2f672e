// The CUDA backend's linear layers (cuBLASLt, bias epilogue: lib/backend/cuda/lt_matmul.h) against the
// CPU backend in every precision mode: forward y = x W^T + b, backward dx, dW += dy^T x and db += sum(dy)
// onto non-zero gradients, on aligned and odd shapes and on pointers that are only 4-byte aligned (views
// into flat buffers). Norm-wise relative error ||gpu - cpu|| / ||cpu||: fp32 <= 1e-5, tf32 / bf16 / fp16
// (inputs rounded inside the tensor cores, fp32 accumulation) <= 1e-2. Skips without a GPU, except
// CudaLtMatmul.PointerAlignment, which is plain arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/backend/cuda/lt_matmul.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

TEST(CudaLtMatmul, PointerAlignment) {
  alignas(256) static unsigned char buffer[1024];
  EXPECT_EQ(cuda::pointer_alignment(buffer), 256u);
  EXPECT_EQ(cuda::pointer_alignment(buffer + 512), 256u);  // capped at cuBLASLt's default
  EXPECT_EQ(cuda::pointer_alignment(buffer + 128), 128u);
  EXPECT_EQ(cuda::pointer_alignment(buffer + 4), 4u);
  EXPECT_EQ(cuda::pointer_alignment(buffer + 12), 4u);
  EXPECT_EQ(cuda::pointer_alignment(buffer + 48), 16u);
  EXPECT_EQ(cuda::pointer_alignment(buffer + 1), 1u);
}

struct LinearCase {
  int rows, in, out;
  bool bias;
  size_t offset;  // floats before every buffer: 0 keeps 256-byte alignment, 1 leaves 4 bytes
};

struct LinearResult {
  std::vector<float> y, dx, dweight, dbias;
};

// Forward and backward of one case on `backend` (host or device memory alike).
LinearResult run_linear(Backend<float>& backend, const LinearCase& c, uint64_t seed) {
  const size_t nx = static_cast<size_t>(c.rows) * c.in, nw = static_cast<size_t>(c.out) * c.in,
               ny = static_cast<size_t>(c.rows) * c.out;
  const std::vector<float> x = cast<float>(random_values(nx, seed));
  const std::vector<float> w = cast<float>(random_values(nw, seed + 1, -0.5, 0.5));
  const std::vector<float> b = cast<float>(random_values(c.out, seed + 2));
  const std::vector<float> dy = cast<float>(random_values(ny, seed + 3));
  const std::vector<float> dw0 = cast<float>(random_values(nw, seed + 4));  // gradients accumulate onto these
  const std::vector<float> db0 = cast<float>(random_values(c.out, seed + 5));
  std::vector<float*> owned;
  const auto buffer = [&](const std::vector<float>* init, size_t n) {
    float* base = backend.allocate(n + c.offset);
    owned.push_back(base);
    if (init != nullptr) backend.copy_from_host(base + c.offset, init->data(), n);
    return base + c.offset;
  };
  float* dx_ = buffer(nullptr, nx);
  float* y_ = buffer(nullptr, ny);
  float* x_ = buffer(&x, nx);
  float* w_ = buffer(&w, nw);
  float* b_ = c.bias ? buffer(&b, c.out) : nullptr;
  float* dy_ = buffer(&dy, ny);
  float* dw_ = buffer(&dw0, nw);
  float* db_ = c.bias ? buffer(&db0, c.out) : nullptr;
  backend.linear_forward(y_, x_, w_, b_, c.rows, c.in, c.out);
  backend.linear_backward(dx_, dw_, db_, dy_, x_, w_, c.rows, c.in, c.out);
  LinearResult r;
  r.y.resize(ny);
  r.dx.resize(nx);
  r.dweight.resize(nw);
  backend.copy_to_host(r.y.data(), y_, ny);
  backend.copy_to_host(r.dx.data(), dx_, nx);
  backend.copy_to_host(r.dweight.data(), dw_, nw);
  if (c.bias) {
    r.dbias.resize(c.out);
    backend.copy_to_host(r.dbias.data(), db_, c.out);
  }
  for (float* p : owned) backend.deallocate(p);
  return r;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    diff += std::pow(static_cast<double>(got[i]) - want[i], 2);
    norm += std::pow(static_cast<double>(want[i]), 2);
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

const std::vector<LinearCase> kCases = {
    {64, 256, 128, true, 0},   // aligned, bias epilogue
    {37, 70, 45, true, 1},     // odd sizes, 4-byte-aligned pointers
    {128, 64, 192, false, 0},  // no bias
    {5, 33, 1, true, 1},       // one output (the discriminator head)
    {256, 128, 384, true, 0},  // a fused QKV shape
};

class CudaLinearPrecision : public ::testing::TestWithParam<CudaPrecision> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
  }
};

TEST_P(CudaLinearPrecision, ForwardAndBackwardMatchTheCpu) {
  CudaBackendOptions options;
  options.precision = GetParam();
  auto gpu = make_cuda_backend(0, options);
  auto cpu = make_cpu_backend<float>();
  const double tolerance = GetParam() == CudaPrecision::kFp32 ? 1e-5 : 1e-2;
  uint64_t seed = 100;
  for (const LinearCase& c : kCases) {
    SCOPED_TRACE(to_string(GetParam()) + " rows=" + std::to_string(c.rows) + " in=" + std::to_string(c.in) + " out=" +
                 std::to_string(c.out) + " bias=" + std::to_string(c.bias) + " offset=" + std::to_string(c.offset));
    const LinearResult want = run_linear(*cpu, c, seed);
    const LinearResult got = run_linear(*gpu, c, seed);
    EXPECT_LE(relative_error(got.y, want.y), tolerance) << "y";
    EXPECT_LE(relative_error(got.dx, want.dx), tolerance) << "dx";
    EXPECT_LE(relative_error(got.dweight, want.dweight), tolerance) << "dW (accumulated)";
    if (c.bias) {
      EXPECT_LE(relative_error(got.dbias, want.dbias), tolerance) << "db (accumulated)";
    }
    // The same shape runs the same cached algorithm: bitwise the same results again.
    const LinearResult again = run_linear(*gpu, c, seed);
    EXPECT_EQ(std::memcmp(again.y.data(), got.y.data(), got.y.size() * sizeof(float)), 0) << "y not reproducible";
    EXPECT_EQ(std::memcmp(again.dweight.data(), got.dweight.data(), got.dweight.size() * sizeof(float)), 0)
        << "dW not reproducible";
    seed += 10;
  }
}

INSTANTIATE_TEST_SUITE_P(CudaModes, CudaLinearPrecision,
                         ::testing::Values(CudaPrecision::kFp32, CudaPrecision::kTf32, CudaPrecision::kBf16,
                                           CudaPrecision::kFp16),
                         [](const ::testing::TestParamInfo<CudaPrecision>& info) { return to_string(info.param); });

}  // namespace
}  // namespace electra::test
