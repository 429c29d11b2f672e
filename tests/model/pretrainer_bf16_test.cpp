// ElectraPretrainer<bfloat16> (bf16 activations and weight copy, fp32 master weights, gradients and
// statistics) on each CPU backend of bf16 storage (the reference make_cpu_bf16_backend, and the fast
// make_onednn_bf16_backend where this build has oneDNN) against fp32 storage: the same master
// initialisation, losses, outputs and gradients within bf16 rounding, the same samples at most positions;
// deterministic; the weight copy follows every parameter change; it trains like fp32. The fast backend is
// also checked against the reference on whole steps.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lib/core/error.h"
#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

// The CPU backends of bf16 storage, by name.
const char* const kReference = "reference";
const char* const kOnednn = "onednn";
std::unique_ptr<Backend<bfloat16>> make_bf16(const std::string& which, Backend<float>& wide) {
  return which == kOnednn ? make_onednn_bf16_backend(wide) : make_cpu_bf16_backend(wide);
}

// A bf16-storage model that owns its bf16 backend; `wide` (the float CPU backend under it) outlives it.
struct Bf16Model {
  std::unique_ptr<Backend<float>> wide = make_cpu_backend<float>();
  std::unique_ptr<ElectraPretrainer<bfloat16>> model;

  explicit Bf16Model(const PretrainerConfig& config, const std::string& which = kReference)
      : model(std::make_unique<ElectraPretrainer<bfloat16>>(config, make_bf16(which, *wide))) {}
  ElectraPretrainer<bfloat16>& operator*() { return *model; }
  ElectraPretrainer<bfloat16>* operator->() { return model.get(); }
};

StepContext training_context(uint64_t step = 3) {
  StepContext ctx;
  ctx.seed = 61;
  ctx.step = step;
  ctx.training = true;
  return ctx;
}

// mean |a - b| / mean |b|.
double rel_mean_abs(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, s = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    d += std::abs(double(a[i]) - b[i]);
    s += std::abs(double(b[i]));
  }
  return s == 0 ? d : d / s;
}

size_t count_different(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  size_t n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n;
}

// Every test runs on each bf16 backend this build has.
class ModelBf16Storage : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == kOnednn && !test::onednn_built()) GTEST_SKIP() << "this build has no oneDNN";
  }
};

void expect_losses_near(const PretrainerLosses& got, const PretrainerLosses& want, double rel, const char* what) {
  EXPECT_NEAR(got.total_loss, want.total_loss, rel * std::abs(want.total_loss)) << what;
  EXPECT_NEAR(got.mlm_loss, want.mlm_loss, rel * std::abs(want.mlm_loss)) << what;
  EXPECT_NEAR(got.disc_loss, want.disc_loss, rel * std::abs(want.disc_loss)) << what;
  EXPECT_NEAR(got.sentence_loss, want.sentence_loss, rel * std::abs(want.sentence_loss)) << what;
}

TEST_P(ModelBf16Storage, NamesAndBackends) {
  Bf16Model bf(test::tiny_config(), GetParam());
  EXPECT_EQ(bf->storage_name(), "bf16");
  EXPECT_EQ(&bf->parameter_backend(), bf.wide.get());
  EXPECT_EQ(&bf->backend().wide(), bf.wide.get());
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> f(test::tiny_config(), *be);
  EXPECT_EQ(f.storage_name(), "fp32");
  EXPECT_EQ(&f.parameter_backend(), be.get());
  auto bd = make_cpu_backend<double>();
  ElectraPretrainer<double> d(test::tiny_config(), *bd);
  EXPECT_EQ(d.storage_name(), "fp64");
  EXPECT_THROW(ElectraPretrainer<bfloat16>(test::tiny_config(), std::unique_ptr<Backend<bfloat16>>()), Error);
}

// init_parameters draws the master values as float: the same as fp32 storage; checkpoint_items and
// parameters_to_host are those float master weights.
TEST_P(ModelBf16Storage, MasterWeightsAreTheFloatModels) {
  const PretrainerConfig c = test::tiny_config();
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> f(c, *be);
  Bf16Model bf(c, GetParam());
  f.init_parameters(62);
  bf->init_parameters(62);
  const std::vector<float> pf = f.parameters_to_host(), pb = bf->parameters_to_host();
  ASSERT_EQ(pb, pf);
  size_t not_bf16 = 0;  // the masters keep float precision (most are not bf16 values)
  for (float x : pb) not_bf16 += round_to_bfloat16(x) != x;
  EXPECT_GT(not_bf16, pb.size() / 2);

  PretrainerModel<float>& model = *bf;  // through the interface the trainer uses
  const std::vector<BoundTensor<float>> items = model.checkpoint_items();
  ASSERT_EQ(items.size(), model.layout().slices().size());
  for (const BoundTensor<float>& item : items) {
    ASSERT_EQ(item.data, model.parameters() + item.slice->offset) << item.slice->name;
    std::vector<float> host(item.slice->size);
    model.parameter_backend().copy_to_host(host.data(), item.data, host.size());
    EXPECT_TRUE(std::equal(host.begin(), host.end(), pf.begin() + item.slice->offset)) << item.slice->name;
  }
}

TEST_P(ModelBf16Storage, AgreesWithFloatStorage) {
  const PretrainerConfig c = test::tiny_config();
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> f(c, *be);
  Bf16Model bf(c, GetParam());
  f.init_parameters(63);
  bf->init_parameters(63);
  const Batch batch = test::random_batch(16, 16, 4, c.vocab_size, 64, /*with_nsp=*/true, c.num_classes);
  const StepContext ctx = training_context();
  const test::StepResult<float> rf = test::run_step(f, batch, ctx);
  const test::StepResult<float> rb = test::run_step(*bf, batch, ctx);

  // Gumbel-max on logits that differ by bf16 rounding may pick another token where two scores are close.
  const size_t sample_diffs = count_different(rb.out.sampled_ids, rf.out.sampled_ids);
  const size_t label_diffs = count_different(rb.out.disc_label, rf.out.disc_label);
  std::printf("bf16 vs fp32: %zu of %zu samples differ, %zu of %zu labels\n", sample_diffs, rf.out.sampled_ids.size(),
              label_diffs, rf.out.disc_label.size());
  EXPECT_LE(sample_diffs, rf.out.sampled_ids.size() / 10);
  EXPECT_LE(label_diffs, rf.out.disc_label.size() / 20);

  expect_losses_near(rb.out.losses, rf.out.losses, 2e-2, "bf16 vs fp32");
  const double lm = rel_mean_abs(rb.out.lm_outputs, rf.out.lm_outputs);
  const double disc = rel_mean_abs(rb.out.disc_logits, rf.out.disc_logits);
  const double sentence = rel_mean_abs(rb.out.sentence_outputs, rf.out.sentence_outputs);
  std::printf("mean |diff| / mean |fp32|: lm_outputs %.2e, disc_logits %.2e, sentence_outputs %.2e\n", lm, disc,
              sentence);
  EXPECT_LT(lm, 2e-2);
  EXPECT_LT(disc, 5e-2);
  EXPECT_LT(sentence, 2e-2);
  EXPECT_GT(lm, 0.0) << "bf16 storage should round somewhere";

  double worst = 0;
  std::string worst_name;
  for (const ParameterSlice& v : f.layout().slices()) {
    if (v.name.find("attention.self.key.bias") != std::string::npos) continue;  // exactly 0 up to rounding
    const double err = test::rel_l2(rb.grads, rf.grads, v.offset, v.size);
    EXPECT_LT(err, 5e-2) << v.name;
    if (err > worst) worst = err, worst_name = v.name;
  }
  std::printf("worst gradient relative L2 error: %.3e (%s)\n", worst, worst_name.c_str());
}

TEST_P(ModelBf16Storage, DeterministicAndSplitsIntoChunks) {
  const PretrainerConfig c = test::tiny_config();
  Bf16Model bf(c, GetParam());
  bf->init_parameters(65);
  Batch batch = test::random_batch(6, 12, 3, c.vocab_size, 66, true, c.num_classes);
  batch.global_row_offset = 7;
  const StepContext ctx = training_context();
  const test::StepResult<float> a = test::run_step(*bf, batch, ctx);
  const test::StepResult<float> b = test::run_step(*bf, batch, ctx);
  EXPECT_EQ(a.grads, b.grads);
  EXPECT_EQ(a.out.lm_outputs, b.out.lm_outputs);
  EXPECT_EQ(a.out.disc_logits, b.out.disc_logits);
  EXPECT_EQ(a.out.sentence_outputs, b.out.sentence_outputs);
  EXPECT_EQ(a.out.sampled_ids, b.out.sampled_ids);
  EXPECT_EQ(a.out.losses.total_loss, b.out.losses.total_loss);

  bf->set_parallel_chunks(2);
  const test::StepResult<float> split = test::run_step(*bf, batch, ctx);
  std::printf("chunks 2 vs 1: total loss %.9g vs %.9g, %zu samples differ\n", split.out.losses.total_loss,
              a.out.losses.total_loss, count_different(split.out.sampled_ids, a.out.sampled_ids));
  EXPECT_EQ(split.out.sampled_ids, a.out.sampled_ids);
  EXPECT_EQ(split.out.disc_label, a.out.disc_label);
  expect_losses_near(split.out.losses, a.out.losses, 1e-5, "chunks 2 vs 1");
  EXPECT_LT(test::rel_l2(split.grads, a.grads, 0, a.grads.size()), 1e-5);
}

// The memory options work with bf16 storage: recomputed FFN activations change no bit, fused attention
// (bf16 q/k/v and context, float statistics) agrees with the materialised one to bf16 rounding.
TEST_P(ModelBf16Storage, RecomputeAndFusedAttention) {
  const PretrainerConfig c = test::tiny_config();
  Bf16Model bf(c, GetParam());
  bf->init_parameters(70);
  const Batch batch = test::random_batch(6, 12, 3, c.vocab_size, 71, true, c.num_classes);
  const StepContext ctx = training_context();
  const test::StepResult<float> base = test::run_step(*bf, batch, ctx);
  bf->set_recompute_ffn_activations(true);
  const test::StepResult<float> recomputed = test::run_step(*bf, batch, ctx);
  EXPECT_EQ(recomputed.grads, base.grads);
  EXPECT_EQ(recomputed.out.losses.total_loss, base.out.losses.total_loss);
  bf->set_recompute_ffn_activations(false);
  bf->set_attention_impl(AttentionImpl::kFused);
  const test::StepResult<float> fused = test::run_step(*bf, batch, ctx);
  expect_losses_near(fused.out.losses, base.out.losses, 2e-2, "fused vs materialised attention");
  EXPECT_EQ(count_different(fused.out.sampled_ids, base.out.sampled_ids), 0u);
  const double err = test::rel_l2(fused.grads, base.grads, 0, base.grads.size());
  std::printf("fused vs materialised attention: gradient relative L2 error %.3e\n", err);
  EXPECT_LT(err, 5e-2);
}

// The gradient-ready hook reports every element of the (wide) gradient buffer once, when it is final.
TEST_P(ModelBf16Storage, GradientReadyHookReportsFinalWideGradients) {
  const PretrainerConfig c = test::tiny_config();
  Bf16Model bf(c, GetParam());
  bf->init_parameters(72);
  const size_t total = bf->layout().total_size();
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<std::vector<float>> values;  // each range's gradient when it was reported
  StepContext ctx = training_context();
  ctx.hooks.on_gradients_ready = [&](size_t offset, size_t count) {
    ranges.emplace_back(offset, count);
    values.emplace_back(count);
    bf->parameter_backend().copy_to_host(values.back().data(), bf->gradients() + offset, count);
  };
  const test::StepResult<float> r =
      test::run_step(*bf, test::random_batch(4, 8, 3, c.vocab_size, 73, true, c.num_classes), ctx);
  std::vector<int> covered(total, 0);
  for (size_t k = 0; k < ranges.size(); ++k) {
    const auto [offset, count] = ranges[k];
    ASSERT_LE(offset + count, total);
    for (size_t i = 0; i < count; ++i) {
      ++covered[offset + i];
      ASSERT_EQ(values[k][i], r.grads[offset + i]) << "range " << k << " element " << offset + i;
    }
  }
  for (size_t i = 0; i < total; ++i) ASSERT_EQ(covered[i], 1) << "element " << i;
}

// The bf16 weight copy is refreshed at every forward: after parameters_from_host or an AdamW step on the
// master weights, the next forward equals that of a fresh model loaded with the new parameters.
TEST_P(ModelBf16Storage, ForwardUsesTheCurrentParameters) {
  const PretrainerConfig c = test::tiny_config();
  const Batch batch = test::random_batch(4, 10, 3, c.vocab_size, 67, true, c.num_classes);
  const StepContext ctx = training_context();
  const auto fresh_run = [&](const std::vector<float>& params) {
    Bf16Model fresh(c, GetParam());
    fresh->parameters_from_host(params);
    return test::run_step(*fresh, batch, ctx);
  };
  Bf16Model bf(c, GetParam());
  bf->init_parameters(68);
  const test::StepResult<float> before = test::run_step(*bf, batch, ctx);

  Bf16Model other(c, GetParam());
  other->init_parameters(69);
  const std::vector<float> loaded = other->parameters_to_host();
  bf->parameters_from_host(loaded);
  const test::StepResult<float> after_load = test::run_step(*bf, batch, ctx);
  const test::StepResult<float> want_load = fresh_run(loaded);
  EXPECT_NE(after_load.out.losses.total_loss, before.out.losses.total_loss);
  EXPECT_EQ(after_load.out.losses.total_loss, want_load.out.losses.total_loss);
  EXPECT_EQ(after_load.out.lm_outputs, want_load.out.lm_outputs);
  EXPECT_EQ(after_load.grads, want_load.grads);

  OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 0;
  AdamW<float> adam(oc, bf->layout(), bf->parameter_backend());
  adam.step(bf->parameters(), bf->gradients(), 0);  // the gradients of after_load
  const std::vector<float> stepped = bf->parameters_to_host();
  ASSERT_NE(stepped, loaded);
  const test::StepResult<float> after_step = test::run_step(*bf, batch, ctx);
  const test::StepResult<float> want_step = fresh_run(stepped);
  EXPECT_NE(after_step.out.losses.total_loss, after_load.out.losses.total_loss);
  EXPECT_EQ(after_step.out.losses.total_loss, want_step.out.losses.total_loss);
  EXPECT_EQ(after_step.out.disc_logits, want_step.out.disc_logits);
  EXPECT_EQ(after_step.grads, want_step.grads);
}

// As overfit_test.cpp: a tiny model memorises one batch with AdamW (dropout off), with bf16 storage about
// as fast as with fp32 storage.
template <typename T>
std::vector<double> train_losses(ElectraPretrainer<T>& model, const Batch& batch, int steps) {
  model.init_parameters(1);
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.warmup_steps = 0;
  oc.total_steps = 100000;
  AdamW<float> adam(oc, model.layout(), model.parameter_backend());
  StepContext ctx;
  ctx.seed = 3;
  ctx.training = false;
  ctx.copy_outputs = false;
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    ctx.step = step;
    model.zero_gradients();
    losses.push_back(model.forward(batch, ctx).losses.total_loss);
    model.backward();
    adam.step(model.parameters(), model.gradients(), step);
  }
  return losses;
}

TEST_P(ModelBf16Storage, TrainsLikeFloatStorage) {
  PretrainerConfig c = pretrainer_config_from_json(model_preset("tiny", 40));
  c.discriminator.num_layers = c.generator.num_layers = 1;
  c.discriminator.hidden_size = 32;
  c.discriminator.intermediate_size = 64;
  c.discriminator.embedding_size = c.generator.embedding_size = 16;
  c.generator.hidden_size = 16;
  c.generator.intermediate_size = 32;
  const Batch batch = test::random_batch(8, 16, 3, c.vocab_size, 2, true, c.num_classes);
  constexpr int kSteps = 80;
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> f(c, *be);
  Bf16Model bf(c, GetParam());
  const std::vector<double> lf = train_losses(f, batch, kSteps);
  const std::vector<double> lb = train_losses(*bf, batch, kSteps);
  std::printf("training %d steps: fp32 %.4f -> %.4f, bf16 %.4f -> %.4f\n", kSteps, lf.front(), lf.back(), lb.front(),
              lb.back());
  EXPECT_NEAR(lb.front(), lf.front(), 2e-2 * lf.front());
  EXPECT_LT(lf.back(), 0.3 * lf.front());
  EXPECT_LT(lb.back(), 0.3 * lb.front());
  EXPECT_LT(lb.back(), 1.5 * lf.back() + 0.05 * lf.front());
}

INSTANTIATE_TEST_SUITE_P(CpuBackends, ModelBf16Storage, ::testing::Values(kReference, kOnednn),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// The fast backend against the reference, whole steps on a model with ELECTRA-small's widths (oneDNN's
// blocked kernels, several heads, a padded batch): losses, outputs and every gradient range within bf16
// rounding, the same replaced tokens almost everywhere; bitwise run to run; with the model's parallel
// chunks and any thread count as well.
TEST(ModelOnednnBf16, WholeStepAgreesWithTheReference) {
  if (!test::onednn_built()) GTEST_SKIP() << "this build has no oneDNN";
  PretrainerConfig c = test::small_config();
  Bf16Model ref(c, kReference);
  Bf16Model fast(c, kOnednn);
  EXPECT_EQ(fast->backend().name(), "cpu-bf16-onednn");
  ref->init_parameters(81);
  fast->parameters_from_host(ref->parameters_to_host());
  Batch batch = test::random_batch(8, 64, 7, c.vocab_size, 82, true, c.num_classes);
  for (int s = 40; s < 64; ++s) batch.input_mask[3 * 64 + s] = 0;  // row 3 padded after 40 tokens
  const StepContext ctx = training_context();
  const test::StepResult<float> rr = test::run_step(*ref, batch, ctx);
  const test::StepResult<float> rf = test::run_step(*fast, batch, ctx);

  const size_t sample_diffs = count_different(rf.out.sampled_ids, rr.out.sampled_ids);
  std::printf("onednn vs reference: %zu of %zu samples differ; total loss %.6f vs %.6f\n", sample_diffs,
              rr.out.sampled_ids.size(), rf.out.losses.total_loss, rr.out.losses.total_loss);
  EXPECT_LE(sample_diffs, rr.out.sampled_ids.size() / 10);
  expect_losses_near(rf.out.losses, rr.out.losses, 1e-2, "onednn vs reference");
  EXPECT_LT(rel_mean_abs(rf.out.lm_outputs, rr.out.lm_outputs), 2e-2);
  EXPECT_LT(rel_mean_abs(rf.out.disc_logits, rr.out.disc_logits), 5e-2);
  double worst = 0;
  std::string worst_name;
  for (const ParameterSlice& v : ref->layout().slices()) {
    if (v.name.find("attention.self.key.bias") != std::string::npos) continue;  // exactly 0 up to rounding
    const double err = test::rel_l2(rf.grads, rr.grads, v.offset, v.size);
    EXPECT_LT(err, 5e-2) << v.name;
    if (err > worst) worst = err, worst_name = v.name;
  }
  std::printf("onednn vs reference: worst gradient relative L2 error %.3e (%s)\n", worst, worst_name.c_str());

  const test::StepResult<float> again = test::run_step(*fast, batch, ctx);
  EXPECT_EQ(again.grads, rf.grads);
  EXPECT_EQ(again.out.disc_logits, rf.out.disc_logits);
  EXPECT_EQ(again.out.losses.total_loss, rf.out.losses.total_loss);

  // Two parallel chunks: bitwise the same for 1, 2 and 3 threads.
  fast->set_parallel_chunks(2);
  std::vector<test::StepResult<float>> by_threads;
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    by_threads.push_back(test::run_step(*fast, batch, ctx));
  }
  omp_set_num_threads(saved);
  for (size_t i = 1; i < by_threads.size(); ++i) {
    EXPECT_EQ(by_threads[i].grads, by_threads[0].grads) << "threads " << i + 1;
    EXPECT_EQ(by_threads[i].out.losses.total_loss, by_threads[0].out.losses.total_loss) << "threads " << i + 1;
  }
  expect_losses_near(by_threads[0].out.losses, rf.out.losses, 1e-3, "chunks 2 vs 1");
}

}  // namespace
}  // namespace electra
