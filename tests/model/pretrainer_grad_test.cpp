// Finite-difference check of the whole pretrainer: d(total loss)/d(every parameter) in double
// precision, with dropout off and on (fixed keys). The generator samples depend on the parameters only
// through an argmax, so the check also asserts that no +-eps perturbation changes a sample.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "lib/model/pretrainer.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

void check_total_loss_gradient(bool training, bool with_nsp) {
  auto be = make_cpu_backend<double>();
  const PretrainerConfig config = test::tiny_config();
  ElectraPretrainer<double> model(config, *be);
  model.init_parameters(21);
  const Batch batch = test::random_batch(3, 6, 2, config.vocab_size, 22, with_nsp, config.num_classes);
  StepContext ctx;
  ctx.seed = 23;
  ctx.step = 4;
  ctx.training = training;
  ctx.copy_outputs = false;

  model.zero_gradients();
  const PretrainerOutputs<double>& base = model.forward(batch, ctx);
  const std::vector<int32_t> samples = base.sampled_ids;
  ASSERT_EQ(base.losses.has_sentence, with_nsp);
  model.backward();
  const std::vector<double> analytic = model.gradients_to_host();

  std::vector<double> params = model.parameters_to_host();
  int sample_changes = 0;
  auto loss = [&]() {
    model.parameters_from_host(params);
    const PretrainerOutputs<double>& out = model.forward(batch, ctx);
    if (out.sampled_ids != samples) ++sample_changes;
    return out.losses.total_loss;
  };
  // Up to 24 entries of every tensor, spread over it (the layer tests check every entry).
  std::vector<size_t> indices;
  for (const ParameterSlice& v : model.layout().slices()) {
    const size_t stride = std::max<size_t>(1, v.size / 24);
    for (size_t i = 0; i < v.size; i += stride) indices.push_back(v.offset + i);
  }
  const auto r = test::finite_difference(params, analytic, indices, loss);
  EXPECT_EQ(sample_changes, 0) << "a perturbation changed the generator's samples; pick another seed";
  EXPECT_TRUE(test::fd_ok(r, 1e-6, "total loss"));
  // Every tensor of both networks and all heads receives gradient.
  for (const ParameterSlice& v : model.layout().slices()) {
    if (!with_nsp && v.name.rfind("generator_classification_head", 0) == 0) continue;
    // softmax(q k^T) is invariant to the key bias (it shifts every score of a query equally).
    if (v.name.find("attention.self.key.bias") != std::string::npos) continue;
    double norm = 0;
    for (size_t i = 0; i < v.size; ++i) norm += analytic[v.offset + i] * analytic[v.offset + i];
    EXPECT_GT(norm, 0.0) << v.name << " got no gradient";
  }
}

TEST(ModelPretrainerGrad, TotalLossDropoutOff) { check_total_loss_gradient(false, true); }
TEST(ModelPretrainerGrad, TotalLossDropoutOnNoSentenceLabels) { check_total_loss_gradient(true, false); }

}  // namespace
}  // namespace electra
