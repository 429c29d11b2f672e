// The CUDA backend's fused post-LN residual block kernels (layernorm_fused.cu), emulated on the CPU: the
// warp-per-row algorithm (lane l owns columns l + 32 j, keep bits drawn four per lane per 128 columns and
// fetched by their owners, 32 lane sums combined by an xor butterfly) written as host loops around
// layernorm_fused_math.h's functions, against the CPU backends (float and the bf16 reference) running the
// same cases (tests/backend/fused_layernorm_cases.h). Runs everywhere (no GPU needed): it checks the
// arithmetic, the storage roundings and the keep-bit ownership the kernels use;
// tests/cuda/fused_layernorm_test.cpp runs the kernels themselves where there is a GPU.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/elementwise_math.h"
#include "lib/backend/cuda/layernorm_fused_math.h"
#include "tests/backend/fused_layernorm_cases.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

namespace m = cuda::math;
constexpr int kLanes = m::kRowLanes;

// A value as the storage type T keeps it (from_float then to_float in the kernels).
template <typename T>
float stored(float v) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    return static_cast<float>(bfloat16(v));
  } else {
    return v;
  }
}
template <typename T>
std::vector<float> as_float(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

// warp_reduce(SumOp): for m = 16, 8, 4, 2, 1 every lane adds the value of lane l ^ m.
float warp_sum(std::array<float, kLanes> v) {
  for (int mask = kLanes / 2; mask > 0; mask >>= 1) {
    std::array<float, kLanes> next{};
    for (int l = 0; l < kLanes; ++l) next[l] = v[l] + v[l ^ mask];
    v = next;
  }
  return v[0];
}

// The keep bit of column c of a row as the fused forward gets it: drawn in the group of lane
// keep_group_lane(c) of c's 128-column round.
uint8_t kernel_keep_bit(const DropoutKey& key, size_t row_offset, int c, int cols, float p) {
  const int round_start = c / (m::kKeepGroup * kLanes) * (m::kKeepGroup * kLanes);
  const int first = round_start + m::kKeepGroup * m::keep_group_lane(c);
  const int count = std::min(m::kKeepGroup, cols - first);
  uint8_t bits[m::kKeepGroup] = {1, 1, 1, 1};
  m::dropout_keep_group(bits, key, row_offset + first, count, p);
  return bits[m::keep_group_bit(c)];
}

struct Emulated {
  std::vector<float> y, res, mean, rstd, d_res, dx;
  std::vector<uint8_t> keep;
};

// dropout_add_layernorm_forward_kernel and layernorm_dropout_backward_kernel for storage type T.
template <typename T>
Emulated emulate(const FusedLayerNormCase& c) {
  const FusedLayerNormInputs in = inputs_of(c);
  const std::vector<float> x = as_float(values_as<T>(in.x)), residual = as_float(values_as<T>(in.residual));
  const std::vector<float> gamma = as_float(values_as<T>(in.gamma)), beta = as_float(values_as<T>(in.beta));
  const std::vector<float> dy = as_float(values_as<T>(in.dy));
  const DropoutKey key = key_of(c);
  const int rows = c.rows, cols = c.cols;
  const size_t n = static_cast<size_t>(rows) * cols;
  const float keep_scale = c.p > 0.0f ? 1.0f / (1.0f - c.p) : 1.0f;
  Emulated e{std::vector<float>(n), std::vector<float>(n), std::vector<float>(rows), std::vector<float>(rows),
             std::vector<float>(n), std::vector<float>(n), std::vector<uint8_t>(n)};
  for (int r = 0; r < rows; ++r) {
    const size_t off = static_cast<size_t>(r) * cols;
    // Forward pass 1: res, keep and the lane sums.
    std::array<float, kLanes> lane_sum{};
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int col = lane; col < cols; col += kLanes) {
        const size_t i = off + col;
        const uint8_t bit = c.p > 0.0f ? kernel_keep_bit(key, off, col, cols, c.p) : 1;
        const float dropped = stored<T>(m::dropped(x[i], bit, keep_scale));
        e.res[i] = stored<T>(dropped + residual[i]);
        e.keep[i] = bit;
        lane_sum[lane] += e.res[i];
      }
    }
    const float mu = m::layernorm_mean(warp_sum(lane_sum), cols);
    std::array<float, kLanes> lane_sq{};
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int col = lane; col < cols; col += kLanes) {
        const float d = e.res[off + col] - mu;
        lane_sq[lane] += d * d;
      }
    }
    const float rs = m::layernorm_rstd(warp_sum(lane_sq), cols, 1e-5f);
    e.mean[r] = mu;
    e.rstd[r] = rs;
    for (int col = 0; col < cols; ++col) {
      const float v = m::layernorm_scaled(e.res[off + col], mu, rs, gamma[col]);
      e.y[off + col] = stored<T>(c.with_beta ? v + beta[col] : v);
    }
    // Backward: lane sums of g and g * xhat, then d_res and dx.
    std::array<float, kLanes> lane_g{}, lane_gx{};
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int col = lane; col < cols; col += kLanes) {
        const size_t i = off + col;
        const float g = dy[i] * gamma[col];
        lane_g[lane] += g;
        lane_gx[lane] += g * (e.res[i] - mu) * rs;
      }
    }
    const float mean_g = warp_sum(lane_g) / static_cast<float>(cols);
    const float mean_gx = warp_sum(lane_gx) / static_cast<float>(cols);
    for (int col = 0; col < cols; ++col) {
      const size_t i = off + col;
      const float xhat = (e.res[i] - mu) * rs;
      e.d_res[i] = stored<T>(m::layernorm_input_gradient(dy[i], gamma[col], xhat, rs, mean_g, mean_gx));
      e.dx[i] = c.p > 0.0f ? stored<T>(m::dropped(e.d_res[i], e.keep[i], keep_scale)) : e.d_res[i];
    }
  }
  return e;
}

// ||a - b|| / ||b|| <= tol
::testing::AssertionResult norm_close(const std::vector<float>& a, const std::vector<float>& b, double tol,
                                      const char* what) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  double d2 = 0.0, b2 = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    d2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    b2 += double(b[i]) * b[i];
  }
  const double rel = b2 > 0.0 ? std::sqrt(d2 / b2) : std::sqrt(d2);
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": relative error " << rel << " > " << tol;
}

template <typename T>
void check_against_cpu(Backend<T>& cpu, double tol) {
  for (const FusedLayerNormCase& c : fused_layernorm_cases()) {
    SCOPED_TRACE(describe(c));
    const Emulated e = emulate<T>(c);
    const FusedLayerNormRun<T> run = run_residual_layernorm(cpu, host_bytes, c, true);
    if (!run.keep.empty()) {
      EXPECT_TRUE(same_bits(e.keep, run.keep)) << "keep";
    }
    // One rounding per stored value, as the CPU ops round: bitwise.
    EXPECT_TRUE(same_bits(e.res, as_float(run.res))) << "res";
    EXPECT_TRUE(norm_close(e.y, as_float(run.y), tol, "y"));
    EXPECT_TRUE(norm_close(e.mean, as_float(run.mean), tol, "mean"));
    EXPECT_TRUE(norm_close(e.rstd, as_float(run.rstd), tol, "rstd"));
    EXPECT_TRUE(norm_close(e.d_res, as_float(run.d_res), tol, "d_res"));
    if (c.with_dx) {
      EXPECT_TRUE(norm_close(e.dx, as_float(run.dx), tol, "dx"));
    }
  }
}

TEST(CudaFusedLayerNormMath, FloatKernelsMatchCpuBackend) {
  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>();
  check_against_cpu(*cpu, 1e-5);
}

TEST(CudaFusedLayerNormMath, Bf16KernelsMatchCpuReference) {
  std::unique_ptr<Backend<float>> wide = make_cpu_backend<float>();
  std::unique_ptr<Backend<bfloat16>> cpu = make_cpu_bf16_backend(*wide);
  check_against_cpu(*cpu, 1e-2);
}

// Lane g draws the keep bits of columns 128 t + 4 g + u (u < 4); the owner of each must fetch bit u from g.
TEST(CudaFusedLayerNormMath, KeepGroupOwnership) {
  const int round = m::kKeepGroup * kLanes;
  for (int t = 0; t < 3; ++t) {
    for (int g = 0; g < kLanes; ++g) {
      for (int u = 0; u < m::kKeepGroup; ++u) {
        const int c = round * t + m::kKeepGroup * g + u;
        EXPECT_EQ(m::keep_group_lane(c), g) << "column " << c;
        EXPECT_EQ(m::keep_group_bit(c), u) << "column " << c;
      }
    }
  }
}

}  // namespace
}  // namespace electra::test
