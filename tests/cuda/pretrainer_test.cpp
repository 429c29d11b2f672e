// A whole ELECTRA pre-training step (lib/model + lib/optim) on the CUDA backend against the CPU backend:
// same parameters, same batch, same seeds. Dropout masks and Gumbel samples are the same on both
// backends, so the two steps take the same path and differ by float rounding only. Skips without a GPU.
// The CUDA side runs attention as kAuto picks it there (fused) and, in one test, materialised.
#include "lib/model/pretrainer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "lib/backend/cuda/cuda_backend.h"
#include "tests/cuda/pretrainer_step.h"
#include "tests/model/model_test_util.h"

namespace electra::test {
namespace {

void expect_same_step(const PretrainerConfig& config, const Batch& batch,
                      AttentionImpl gpu_attention = AttentionImpl::kAuto) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU: " << cuda_unavailable_reason();
  auto gpu = make_cuda_backend(0);
  auto cpu = make_cpu_backend<float>();
  const AdamStepResult g = run_adam_step(*gpu, config, batch, gpu_attention), c = run_adam_step(*cpu, config, batch);

  // Same random choices: samples, hence the discriminator's input and labels.
  ASSERT_EQ(g.first.sampled_ids, c.first.sampled_ids);
  ASSERT_EQ(g.first.corrupted_ids, c.first.corrupted_ids);
  ASSERT_EQ(g.first.disc_label, c.first.disc_label);
  // Losses: float through a dozen layers and a vocabulary-wide softmax.
  const PretrainerLosses &gl = g.first.losses, &cl = c.first.losses;
  EXPECT_NEAR(gl.mlm_loss, cl.mlm_loss, 1e-4 * std::abs(cl.mlm_loss));
  EXPECT_NEAR(gl.disc_loss, cl.disc_loss, 1e-4 * std::abs(cl.disc_loss));
  EXPECT_NEAR(gl.total_loss, cl.total_loss, 1e-4 * std::abs(cl.total_loss));
  EXPECT_EQ(gl.mlm_correct_sum, cl.mlm_correct_sum);
  ASSERT_EQ(g.first.disc_logits.size(), c.first.disc_logits.size());
  for (size_t i = 0; i < c.first.disc_logits.size(); ++i) {
    ASSERT_NEAR(g.first.disc_logits[i], c.first.disc_logits[i], 1e-4 * (1.0 + std::abs(c.first.disc_logits[i])))
        << "disc logit " << i;
  }
  // Gradients: relative 1e-3 of the largest entry per element, 1e-4 in norm.
  ASSERT_EQ(g.grads.size(), c.grads.size());
  double diff2 = 0, ref2 = 0, scale = 0;
  for (float v : c.grads) scale = std::max(scale, static_cast<double>(std::abs(v)));
  for (size_t i = 0; i < c.grads.size(); ++i) {
    const double d = static_cast<double>(g.grads[i]) - c.grads[i];
    diff2 += d * d;
    ref2 += static_cast<double>(c.grads[i]) * c.grads[i];
    ASSERT_LE(std::abs(d), 1e-3 * scale + 1e-3 * std::abs(c.grads[i])) << "gradient " << i;
  }
  EXPECT_LE(std::sqrt(diff2 / ref2), 1e-4);
  EXPECT_NEAR(g.stats.grad_norm, c.stats.grad_norm, 1e-4 * c.stats.grad_norm);
  // After one AdamW step. Adam's first update is about lr * sign(g), so a gradient that is rounding noise
  // on both backends (the key biases' gradient is 0 in exact arithmetic: softmax ignores a shift of all
  // scores) moves its parameter by +-lr at random: compare only where the gradient is clearly nonzero.
  size_t checked = 0;
  for (size_t i = 0; i < c.params.size(); ++i) {
    if (std::abs(c.grads[i]) < 1e-3 * scale) continue;
    ASSERT_NEAR(g.params[i], c.params[i], 1e-5 + 1e-4 * std::abs(c.params[i])) << "parameter " << i;
    ++checked;
  }
  EXPECT_GT(checked, c.params.size() / 20);
  ASSERT_EQ(g.second.sampled_ids, c.second.sampled_ids);
  EXPECT_NEAR(g.second.losses.total_loss, c.second.losses.total_loss, 1e-4 * std::abs(c.second.losses.total_loss));
}

TEST(CudaPretrainer, TinyStepMatchesCpu) { expect_same_step(tiny_config(), random_batch(5, 12, 3, 30, 8, true, 3)); }

TEST(CudaPretrainer, SmallStepMatchesCpu) {
  const PretrainerConfig c = small_config();
  expect_same_step(c, random_batch(6, 48, 7, c.vocab_size, 9));
}

TEST(CudaPretrainer, SmallStepWithMaterialisedAttentionMatchesCpu) {
  const PretrainerConfig c = small_config();
  expect_same_step(c, random_batch(6, 48, 7, c.vocab_size, 9), AttentionImpl::kMaterialized);
}

}  // namespace
}  // namespace electra::test
