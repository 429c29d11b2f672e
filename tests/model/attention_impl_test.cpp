// ElectraPretrainer::set_attention_impl: a whole training step (dropout on, padding, an example that is
// all padding but [CLS]) gives the same losses and gradients with fused attention as with materialised
// attention; kAuto's choice; parsing of the option.
#include "lib/model/attention_impl.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/model/pretrainer.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

// test::random_batch with its last row all padding except [CLS] (and no predictions there).
Batch batch_with_cls_only_row(int B, int S, int P, const PretrainerConfig& c, uint64_t seed) {
  Batch b = test::random_batch(B, S, P, c.vocab_size, seed, /*with_nsp=*/true, c.num_classes);
  const int r = B - 1;
  for (int s = 1; s < S; ++s) b.input_mask[r * S + s] = 0;
  for (int p = 0; p < P; ++p) {
    b.masked_lm_positions[r * P + p] = 0;
    b.masked_lm_ids[r * P + p] = 0;
    b.masked_lm_weights[r * P + p] = 0.0f;
  }
  return b;
}

StepContext training_context() {
  StepContext ctx;
  ctx.seed = 41;
  ctx.step = 3;
  ctx.training = true;
  return ctx;
}

template <typename T>
class AttentionImplStep : public ::testing::Test {
 protected:
  static constexpr double kRel = sizeof(T) == 4 ? 1e-5 : 1e-12;
};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AttentionImplStep, Types);

TYPED_TEST(AttentionImplStep, FusedStepEqualsMaterialisedStep) {
  using T = TypeParam;
  constexpr double rel = TestFixture::kRel;
  auto be = make_cpu_backend<T>();
  const PretrainerConfig c = test::tiny_config();
  ASSERT_GT(c.discriminator.attention_dropout, 0.0f);
  ASSERT_GT(c.generator.attention_dropout, 0.0f);
  ElectraPretrainer<T> model(c, *be);
  model.init_parameters(42);
  const Batch batch = batch_with_cls_only_row(5, 9, 3, c, 43);
  const StepContext ctx = training_context();
  for (int chunks : {1, 2}) {
    model.set_parallel_chunks(chunks);
    model.set_attention_impl(AttentionImpl::kMaterialized);
    const test::StepResult<T> mat = test::run_step(model, batch, ctx);
    model.set_attention_impl(AttentionImpl::kFused);
    EXPECT_EQ(model.attention_impl(), AttentionImpl::kFused);
    const test::StepResult<T> fused = test::run_step(model, batch, ctx);

    // The generator's samples follow from its logits: equal samples show the logits agree.
    EXPECT_EQ(fused.out.sampled_ids, mat.out.sampled_ids) << "chunks " << chunks;
    EXPECT_EQ(fused.out.disc_label, mat.out.disc_label);
    const PretrainerLosses &lf = fused.out.losses, &lm = mat.out.losses;
    EXPECT_NEAR(lf.total_loss, lm.total_loss, rel * std::abs(lm.total_loss)) << "chunks " << chunks;
    EXPECT_NEAR(lf.mlm_loss, lm.mlm_loss, rel * std::abs(lm.mlm_loss));
    EXPECT_NEAR(lf.disc_loss, lm.disc_loss, rel * std::abs(lm.disc_loss));
    EXPECT_NEAR(lf.sentence_loss, lm.sentence_loss, rel * std::abs(lm.sentence_loss));

    // Gradients tensor by tensor: every element within rel of the tensor's largest element. The key
    // biases are left out: their gradient is 0 up to rounding (softmax ignores a per-row shift).
    for (const ParameterSlice& v : model.layout().slices()) {
      if (v.name.find("attention.self.key.bias") != std::string::npos) continue;
      double largest = 0.0;
      for (size_t i = v.offset; i < v.offset + v.size; ++i) {
        largest = std::max(largest, std::abs(static_cast<double>(mat.grads[i])));
      }
      ASSERT_GT(largest, 0.0) << v.name;
      for (size_t i = v.offset; i < v.offset + v.size; ++i) {
        const double a = fused.grads[i], e = mat.grads[i];
        ASSERT_LE(std::abs(a - e), rel * largest) << v.name << "[" << i - v.offset << "] chunks " << chunks;
      }
    }
  }
}

// Switching back and forth re-plans: each mode gives exactly its own results again.
TEST(AttentionImpl, SwitchingModesIsReproducible) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(44);
  const Batch batch = batch_with_cls_only_row(4, 8, 3, c, 45);
  const StepContext ctx = training_context();
  model.set_attention_impl(AttentionImpl::kFused);
  const test::StepResult<float> fused1 = test::run_step(model, batch, ctx);
  model.set_attention_impl(AttentionImpl::kAuto);  // materialised on the CPU
  const test::StepResult<float> auto1 = test::run_step(model, batch, ctx);
  model.set_attention_impl(AttentionImpl::kMaterialized);
  const test::StepResult<float> mat1 = test::run_step(model, batch, ctx);
  model.set_attention_impl(AttentionImpl::kFused);
  const test::StepResult<float> fused2 = test::run_step(model, batch, ctx);
  EXPECT_EQ(fused1.grads, fused2.grads);
  EXPECT_EQ(fused1.out.losses.total_loss, fused2.out.losses.total_loss);
  EXPECT_EQ(auto1.grads, mat1.grads);
  EXPECT_NE(fused1.grads, mat1.grads);  // different rounding: the two modes really ran different code
}

TEST(AttentionImpl, AutoIsMaterialisedOnTheCpu) {
  auto be = make_cpu_backend<float>();
  EXPECT_FALSE(use_fused_attention(*be, AttentionImpl::kAuto, 32, 128, 4, 64, 0.1f));
  EXPECT_FALSE(use_fused_attention(*be, AttentionImpl::kMaterialized, 32, 128, 4, 64, 0.1f));
  EXPECT_TRUE(use_fused_attention(*be, AttentionImpl::kFused, 32, 128, 4, 64, 0.1f));
  EXPECT_THROW(use_fused_attention(*be, AttentionImpl::kFused, 32, 0, 4, 64, 0.1f), Error);
}

TEST(AttentionImpl, ParseAndPrint) {
  for (AttentionImpl a : {AttentionImpl::kAuto, AttentionImpl::kMaterialized, AttentionImpl::kFused}) {
    EXPECT_EQ(parse_attention_impl(to_string(a)), a);
  }
  try {
    parse_attention_impl("flash", "train.attention");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.attention"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("flash"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace electra
