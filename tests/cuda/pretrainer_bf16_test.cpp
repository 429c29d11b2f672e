// A whole ELECTRA pre-training step with bf16 storage (ElectraPretrainer<bfloat16>) on the CUDA bf16
// backend against the same model on the CPU bf16 reference (make_cpu_bf16_backend): same master
// parameters, batch and seeds. Dropout masks are the same; Gumbel samples are the same for equal logits,
// but the logits themselves differ by bf16 rounding (other GEMM orders), so a sample may flip where two
// scores are close: their number is bounded, and what depends on them (the discriminator's input) is
// compared only when none flipped. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "lib/backend/cuda/cuda_backend.h"
#include "lib/model/pretrainer.h"
#include "tests/cuda/pretrainer_step.h"
#include "tests/model/model_test_util.h"

namespace electra::test {
namespace {

// A float backend and the bf16 backend over it (the float one outlives the bf16 one and the model).
struct Bf16Backends {
  std::unique_ptr<Backend<float>> wide;
  std::unique_ptr<Backend<bfloat16>> narrow;
};

Bf16Backends cuda_bf16_backends() {
  CudaBackendOptions options;
  options.precision = CudaPrecision::kBf16;
  Bf16Backends b;
  b.wide = make_cuda_backend(0, options);
  b.narrow = make_cuda_bf16_backend(*b.wide);
  return b;
}

Bf16Backends cpu_bf16_backends() {
  Bf16Backends b;
  b.wide = make_cpu_backend<float>();
  b.narrow = make_cpu_bf16_backend(*b.wide);
  return b;
}

size_t count_different(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n;
}

// ||a - b|| / ||b|| over [offset, offset + n).
double rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t offset, size_t n) {
  double d2 = 0, b2 = 0;
  for (size_t i = offset; i < offset + n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    d2 += d * d;
    b2 += static_cast<double>(b[i]) * b[i];
  }
  return b2 == 0 ? std::sqrt(d2) : std::sqrt(d2 / b2);
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

void expect_same_bf16_step(const PretrainerConfig& config, const Batch& batch,
                           AttentionImpl gpu_attention = AttentionImpl::kAuto) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
  Bf16Backends gpu = cuda_bf16_backends(), cpu = cpu_bf16_backends();
  const AdamStepResult g = run_adam_step(*gpu.narrow, config, batch, gpu_attention);
  const AdamStepResult c = run_adam_step(*cpu.narrow, config, batch);

  const size_t flipped = count_different(g.first.sampled_ids, c.first.sampled_ids);
  std::printf("cuda-bf16 vs cpu-bf16: %zu of %zu samples differ\n", flipped, c.first.sampled_ids.size());
  EXPECT_LE(flipped, c.first.sampled_ids.size() / 10);
  const bool same_input = g.first.corrupted_ids == c.first.corrupted_ids;

  // Losses: bf16 activations through a dozen ops; the MLM loss does not depend on the samples.
  const PretrainerLosses &gl = g.first.losses, &cl = c.first.losses;
  EXPECT_NEAR(gl.mlm_loss, cl.mlm_loss, 2e-2 * std::abs(cl.mlm_loss));
  EXPECT_NEAR(gl.disc_loss, cl.disc_loss, 2e-2 * std::abs(cl.disc_loss));
  EXPECT_NEAR(gl.total_loss, cl.total_loss, 2e-2 * std::abs(cl.total_loss));
  ASSERT_EQ(g.first.lm_outputs.size(), c.first.lm_outputs.size());
  EXPECT_LT(rel_l2(g.first.lm_outputs, c.first.lm_outputs, 0, c.first.lm_outputs.size()), 2e-2);
  if (same_input) {
    ASSERT_EQ(g.first.disc_label, c.first.disc_label);
    EXPECT_LT(rel_l2(g.first.disc_logits, c.first.disc_logits, 0, c.first.disc_logits.size()), 5e-2);
  }

  // Gradients per tensor (fp32 sums of bf16 products on both sides): ||diff|| <= 5e-2 ||ref|| plus 5e-3 of
  // the tensor's share of the whole gradient's norm (a tensor whose gradient nearly cancels, such as a
  // query bias, is held to the scale of the others). With a flipped sample only the generator's own
  // tensors are compared (the discriminator and the shared embeddings saw other input).
  ASSERT_EQ(g.grads.size(), c.grads.size());
  double all2 = 0;
  for (float v : c.grads) all2 += static_cast<double>(v) * v;
  const PretrainerLayout layout = build_pretrainer_layout(config);
  double worst = 0;
  std::string worst_name;
  size_t compared = 0;
  for (const ParameterSlice& v : layout.layout.slices()) {
    if (v.name.find("attention.self.key.bias") != std::string::npos) continue;  // 0 up to rounding
    if (!same_input && !starts_with(v.name, "generator")) continue;
    double d2 = 0, r2 = 0;
    for (size_t i = v.offset; i < v.offset + v.size; ++i) {
      const double d = static_cast<double>(g.grads[i]) - c.grads[i];
      d2 += d * d;
      r2 += static_cast<double>(c.grads[i]) * c.grads[i];
    }
    const double bound = 5e-2 * std::sqrt(r2) + 5e-3 * std::sqrt(all2 * v.size / c.grads.size());
    EXPECT_LE(std::sqrt(d2), bound) << v.name << ": relative L2 error " << std::sqrt(d2 / r2);
    if (std::sqrt(d2) / bound > worst) worst = std::sqrt(d2) / bound, worst_name = v.name;
    ++compared;
  }
  EXPECT_GT(compared, 0u);
  std::printf("worst gradient error / bound: %.3f (%s), %zu tensors\n", worst, worst_name.c_str(), compared);
  if (same_input) {
    EXPECT_NEAR(g.stats.grad_norm, c.stats.grad_norm, 2e-2 * c.stats.grad_norm);
    // One AdamW step on the fp32 masters (first update ~ lr * sign(g)): compare where the gradient is
    // clearly nonzero on both sides.
    double scale = 0;
    for (float v : c.grads) scale = std::max(scale, static_cast<double>(std::abs(v)));
    size_t checked = 0, moved_apart = 0;
    for (size_t i = 0; i < c.params.size(); ++i) {
      if (std::abs(c.grads[i]) < 1e-3 * scale) continue;
      ++checked;
      moved_apart += std::abs(g.params[i] - c.params[i]) > 1e-5 + 1e-4 * std::abs(c.params[i]);
    }
    EXPECT_GT(checked, c.params.size() / 20) << "parameters with a clear gradient";
    EXPECT_LE(moved_apart, checked / 50) << "of " << checked << " parameters";
    EXPECT_NEAR(g.second.losses.mlm_loss, c.second.losses.mlm_loss, 2e-2 * std::abs(c.second.losses.mlm_loss));
  }
}

TEST(CudaBf16Pretrainer, TinyStepMatchesCpuReference) {
  expect_same_bf16_step(tiny_config(), random_batch(5, 12, 3, 30, 8, true, 3));
}

TEST(CudaBf16Pretrainer, SmallStepMatchesCpuReference) {
  const PretrainerConfig c = small_config();
  expect_same_bf16_step(c, random_batch(6, 48, 7, c.vocab_size, 9));
}

TEST(CudaBf16Pretrainer, SmallStepWithMaterialisedAttentionMatchesCpuReference) {
  const PretrainerConfig c = small_config();
  expect_same_bf16_step(c, random_batch(6, 48, 7, c.vocab_size, 9), AttentionImpl::kMaterialized);
}

// The CUDA backend is deterministic on one GPU: two bf16 steps give the same bits.
TEST(CudaBf16Pretrainer, StepIsBitwiseReproducible) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
  const PretrainerConfig c = small_config();
  const Batch batch = random_batch(6, 48, 7, c.vocab_size, 10);
  Bf16Backends gpu = cuda_bf16_backends();
  const AdamStepResult a = run_adam_step(*gpu.narrow, c, batch), b = run_adam_step(*gpu.narrow, c, batch);
  EXPECT_EQ(a.first.losses.total_loss, b.first.losses.total_loss);
  EXPECT_EQ(a.first.sampled_ids, b.first.sampled_ids);
  EXPECT_EQ(a.grads, b.grads);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.second.losses.total_loss, b.second.losses.total_loss);
}

}  // namespace
}  // namespace electra::test
