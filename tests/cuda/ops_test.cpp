// The CUDA backend beyond parity: every op against the CPU backend on the same random inputs, forward and
// backward, is the parity table's cuda_float column (tests/backend/parity, with these tests' tolerances).
// Here: name and device, byte copies refused for another backend, missing devices and contradicting
// options named, argument errors (at once, or at the next waiting call for indices found on the device),
// embeddings with the position ids of packed rows, and the TF32 option. Every test but CudaBackendErrors
// skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

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

TEST_F(CudaOps, NameDeviceAndByteCopies) {
  EXPECT_EQ(gpu->device(), DeviceKind::kCuda);
  EXPECT_EQ(gpu->name(), "cuda-float");
  EXPECT_EQ(gpu->allocate(0), nullptr);
  gpu->deallocate(nullptr);
  std::vector<uint8_t> b(37);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7);
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

TEST_F(CudaOps, ArgumentErrorsAreThrownAtOnce) {
  const int m = 4, n = 5, k = 3;
  DeviceBuffer<float> a(*gpu, m * k), b(*gpu, k * n), c(*gpu, m * n);
  EXPECT_THROW(
      gpu->gemm(Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, a.data(), k - 1, b.data(), n, 0.0f, c.data(), n), Error);
  const size_t count = 10007;
  DeviceBuffer<float> x(*gpu, count), y(*gpu, count);
  auto keep = bytes(count);
  EXPECT_THROW(gpu->dropout_forward(y.data(), keep.data(), x.data(), count, 1.0f, DropoutKey{}), Error);
  EXPECT_THROW(gpu->adamw_step(nullptr, nullptr, nullptr, nullptr, 0, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.0f, 0, 1.0f, true),
               Error);  // t must be >= 1
}

TEST_F(CudaOps, InvalidIndicesAreReportedAtTheNextWait) {
  const int B = 1, S = 4, E = 8;
  const std::vector<int32_t> ids = {1, -1, 2, 0}, positions = {0, 9};
  auto gids = up(ids);
  auto gpos = up(positions);
  auto table = up(cast<float>(random_values(4 * E, 1)));
  DeviceBuffer<float> out(*gpu, B * S * E);
  gpu->embedding_forward(out.data(), gids.data(), nullptr, nullptr, table.data(), nullptr, nullptr, B, S, E);
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

// Packed rows: the position of token (b, s) is position_ids[b, s]. Forward is bitwise the CPU's (one sum
// per element in the same order); position_ids equal to s give bitwise the null-position_ids result. The
// table gradients agree with the CPU to float rounding (sorted scatter-adds, segment_sum.h; the
// position table is now one too) and are bitwise the same from run to run. A negative position id is
// reported at the next wait.
TEST_F(CudaOps, EmbeddingWithPositionIdsMatchesTheCpu) {
  const int B = 5, S = 48, E = 24, V = 40, P = 64;  // P position rows
  const PackedRows packed = packed_rows(B, S);
  const auto ids = random_ints(B * S, 51, 0, V), type_ids = random_ints(B * S, 52, 0, 2);
  const auto word = cast<float>(random_values(static_cast<size_t>(V) * E, 53));
  const auto position = cast<float>(random_values(static_cast<size_t>(P) * E, 54));
  const auto type = cast<float>(random_values(2 * static_cast<size_t>(E), 55));
  const auto dout = cast<float>(random_values(static_cast<size_t>(B) * S * E, 56));
  auto g_ids = up(ids), g_types = up(type_ids), g_positions = up(packed.position_ids);
  auto g_word = up(word), g_position = up(position), g_type = up(type), g_dout = up(dout);
  DeviceBuffer<float> g_out(*gpu, dout.size());

  std::vector<float> want(dout.size());
  cpu->embedding_forward(want.data(), ids.data(), type_ids.data(), packed.position_ids.data(), word.data(),
                         position.data(), type.data(), B, S, E);
  gpu->embedding_forward(g_out.data(), g_ids.data(), g_types.data(), g_positions.data(), g_word.data(),
                         g_position.data(), g_type.data(), B, S, E);
  EXPECT_TRUE(bitwise(down(g_out), want));

  std::vector<int32_t> plain(B * S);
  for (int t = 0; t < B * S; ++t) plain[t] = t % S;
  auto g_plain = up(plain);
  gpu->embedding_forward(g_out.data(), g_ids.data(), g_types.data(), nullptr, g_word.data(), g_position.data(),
                         g_type.data(), B, S, E);
  const std::vector<float> null_positions = down(g_out);
  gpu->embedding_forward(g_out.data(), g_ids.data(), g_types.data(), g_plain.data(), g_word.data(), g_position.data(),
                         g_type.data(), B, S, E);
  EXPECT_TRUE(bitwise(down(g_out), null_positions));

  // Gradients accumulate onto the tables' values (word, position, type as initial values).
  auto want_word = word, want_position = position, want_type = type;
  cpu->embedding_backward(want_word.data(), want_position.data(), want_type.data(), dout.data(), ids.data(),
                          type_ids.data(), packed.position_ids.data(), B, S, E);
  auto backward = [&]() {
    auto d_word = up(word), d_position = up(position), d_type = up(type);
    gpu->embedding_backward(d_word.data(), d_position.data(), d_type.data(), g_dout.data(), g_ids.data(),
                            g_types.data(), g_positions.data(), B, S, E);
    return std::vector<std::vector<float>>{down(d_word), down(d_position), down(d_type)};
  };
  const auto got = backward(), again = backward();
  const std::vector<float>* wants[] = {&want_word, &want_position, &want_type};
  const char* names[] = {"word", "position", "type"};
  for (int k = 0; k < 3; ++k) {
    const auto w = to_double(*wants[k]);
    EXPECT_TRUE(all_near(got[k], w, 1e-5, 1e-5 * max_abs(w))) << names[k];
    EXPECT_TRUE(bitwise(again[k], got[k])) << names[k] << " differs between runs";
  }
  // Only the position gradient (the one table that needs the sort workspace just for position ids).
  auto d_position = up(position);
  gpu->embedding_backward(nullptr, d_position.data(), nullptr, g_dout.data(), g_ids.data(), nullptr, g_positions.data(),
                          B, S, E);
  EXPECT_TRUE(bitwise(down(d_position), got[1]));

  auto bad = packed.position_ids;
  bad[7] = -1;
  auto g_bad = up(bad);
  gpu->embedding_forward(g_out.data(), g_ids.data(), nullptr, g_bad.data(), g_word.data(), g_position.data(), nullptr,
                         B, S, E);
  try {
    gpu->synchronize();
    FAIL() << "a negative position id was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position id"), std::string::npos) << e.what();
  }
}

TEST_F(CudaOps, Tf32PrecisionIsCloseButNotExact) {
  auto tf32 = make_cuda_backend(0, CudaBackendOptions{.precision = CudaPrecision::kTf32});
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
  size_t beyond_fp32 = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      double abs_sum = 0.0;  // sum_k |a[i,k] b[k,j]|
      for (int p = 0; p < n; ++p) abs_sum += std::abs(static_cast<double>(a[i * n + p]) * b[p * n + j]);
      // TF32 keeps 10 explicit mantissa bits of each input (2^-10 relative per product at worst, with
      // truncation), then accumulates in fp32.
      const size_t e = static_cast<size_t>(i) * n + j;
      const double err = std::abs(static_cast<double>(got[e]) - want[e]);
      ASSERT_LE(err, 4.0 * std::ldexp(1.0, -10) * abs_sum) << e;
      if (err > 2.0 * n * kU * abs_sum) ++beyond_fp32;
    }
  }
  // TF32 really is in use: many elements are off by more than any fp32 product could be.
  EXPECT_GT(beyond_fp32, got.size() / 10);
}

}  // namespace
}  // namespace electra::test
