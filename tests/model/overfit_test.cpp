// A tiny ELECTRA overfits one fixed batch with AdamW: the total loss falls below 10% of its start
// within 300 steps (dropout off). Also times forward+backward of ELECTRA-small at batch 32, seq 128
// when ELECTRA_TIMING is set.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "lib/model/pretrainer.h"
#include "lib/optim/adamw.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

TEST(ModelOverfit, TinyModelMemorisesOneBatch) {
  auto be = make_cpu_backend<float>();
  PretrainerConfig c = pretrainer_config_from_json(model_preset("tiny", 40));
  c.discriminator.num_layers = c.generator.num_layers = 1;
  c.discriminator.hidden_size = 32;
  c.discriminator.intermediate_size = 64;
  c.discriminator.embedding_size = c.generator.embedding_size = 16;
  c.generator.hidden_size = 16;
  c.generator.intermediate_size = 32;
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(1);
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.warmup_steps = 0;
  oc.total_steps = 100000;
  AdamW<float> adam(oc, model.layout(), *be);
  const Batch batch = test::random_batch(8, 16, 3, c.vocab_size, 2, true, c.num_classes);

  StepContext ctx;
  ctx.seed = 3;
  ctx.training = false;
  ctx.copy_outputs = false;
  double first = 0, last = 0;
  int step = 0;
  for (; step < 300; ++step) {
    ctx.step = step;  // fresh samples every step, as in training
    model.zero_gradients();
    last = model.forward(batch, ctx).losses.total_loss;
    if (step == 0) first = last;
    if (last < 0.1 * first) break;
    model.backward();
    adam.step(model.parameters(), model.gradients(), step);
  }
  std::printf("overfit: loss %.4f -> %.4f after %d steps\n", first, last, step);
  EXPECT_LT(last, 0.1 * first) << "after " << step << " steps";
}

// Slow on 2 cores (tens of seconds), so it runs only when asked: ELECTRA_TIMING=1.
TEST(ModelTiming, SmallForwardBackwardBatch32Seq128) {
  if (std::getenv("ELECTRA_TIMING") == nullptr) GTEST_SKIP() << "set ELECTRA_TIMING=1 to time ELECTRA-small";
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = pretrainer_config_from_json(model_preset("small"));
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(4);
  const Batch batch = test::random_batch(32, 128, 19, c.vocab_size, 5);
  StepContext ctx;
  ctx.seed = 6;
  ctx.copy_outputs = false;
  model.zero_gradients();
  model.forward(batch, ctx);  // plans the activations
  model.backward();
  const auto t0 = std::chrono::steady_clock::now();
  ctx.step = 1;
  const double loss = model.forward(batch, ctx).losses.total_loss;
  const auto t1 = std::chrono::steady_clock::now();
  model.backward();
  const auto t2 = std::chrono::steady_clock::now();
  const double fwd = std::chrono::duration<double>(t1 - t0).count();
  const double bwd = std::chrono::duration<double>(t2 - t1).count();
  const double flops = model_flops_per_step(c, 32, 128);
  std::printf("ELECTRA-small B=32 S=128: forward %.3f s, backward %.3f s, total %.3f s, %.1f GFLOP/s (loss %.3f)\n",
              fwd, bwd, fwd + bwd, flops / (fwd + bwd) / 1e9, loss);
  EXPECT_TRUE(std::isfinite(loss));
}

}  // namespace
}  // namespace electra
