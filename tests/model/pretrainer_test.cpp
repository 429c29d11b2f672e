// ElectraPretrainer behaviour: TF Model Garden's electra_pretrainer_test shapes, sampling rules
// (disallow_correct, disc_label), float vs double, determinism, batch splitting with global
// normalisers, gradient accumulation, output types, initialisation and input checks.
#include "lib/model/pretrainer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <set>

#include "lib/core/error.h"
#include "lib/model/dropout_site.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

template <typename T>
void set_tensor_value(ElectraPretrainer<T>& model, const std::string& name, size_t index, T value) {
  const ParameterSlice& v = model.layout().find(name);
  ASSERT_LT(index, v.size);
  model.backend().copy_from_host(model.parameters() + v.offset + index, &value, 1);
}

double rel_norm_diff(const std::vector<double>& a, const std::vector<double>& b, size_t offset, size_t n) {
  double d2 = 0, b2 = 0;
  for (size_t i = offset; i < offset + n; ++i) {
    d2 += (a[i] - b[i]) * (a[i] - b[i]);
    b2 += b[i] * b[i];
  }
  return b2 == 0 ? std::sqrt(d2) : std::sqrt(d2 / b2);
}

// ---- TF Model Garden electra_pretrainer_test ----

TEST(ModelPretrainer, ModelGardenOutputShapes) {
  auto be = make_cpu_backend<float>();
  PretrainerConfig c;
  EncoderConfig& d = c.discriminator;
  d.vocab_size = 100;
  d.embedding_size = 16;
  d.hidden_size = 16;
  d.num_layers = 2;
  d.num_heads = 2;
  d.intermediate_size = 32;
  d.max_position_embeddings = 512;
  c.generator.hidden_size = 8;
  c.generator.num_layers = 2;
  c.generator.num_heads = 2;
  c.generator.intermediate_size = 32;
  c.share_discriminator_settings();
  c.num_classes = 3;
  c.num_token_predictions = 2;
  c.disallow_correct = true;
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(1);
  const int B = 2, S = 512, P = 2;
  const Batch batch = test::random_batch(B, S, P, 100, 2, true, 3);
  StepContext ctx;
  ctx.seed = 3;
  const auto& out = model.forward(batch, ctx);
  EXPECT_EQ(out.lm_outputs.size(), static_cast<size_t>(B * P * 100));  // [B,2,100]
  EXPECT_EQ(out.sentence_outputs.size(), static_cast<size_t>(B * 3));  // [B,3]
  EXPECT_EQ(out.disc_logits.size(), static_cast<size_t>(B * S));       // [B,512]
  EXPECT_EQ(out.disc_label.size(), static_cast<size_t>(B * S));        // [B,512]
  EXPECT_EQ(out.sampled_ids.size(), static_cast<size_t>(B * P));
  EXPECT_EQ(out.rows, B);
  EXPECT_EQ(out.seq_length, S);
  EXPECT_EQ(out.num_predictions, P);
  EXPECT_EQ(out.vocab_size, 100);
  EXPECT_EQ(out.num_classes, 3);
  EXPECT_TRUE(std::isfinite(out.losses.total_loss));
  for (size_t i = 0; i < batch.masked_lm_ids.size(); ++i) {
    if (batch.masked_lm_weights[i] > 0) {
      EXPECT_NE(out.sampled_ids[i], batch.masked_lm_ids[i]);
    }
  }
}

// Masked targets all 7 and generator_lm_head.bias[7] huge: without disallow_correct the generator
// always samples the original; with it, never.
Batch batch_with_targets(int B, int S, int P, int V, const std::vector<int>& targets) {
  Batch b = test::random_batch(B, S, P, V, 5);
  for (size_t i = 0; i < b.masked_lm_ids.size(); ++i) {
    if (b.masked_lm_weights[i] > 0) b.masked_lm_ids[i] = targets[i % targets.size()];
  }
  return b;
}

TEST(ModelPretrainer, DisallowCorrectNeverSamplesTheOriginal) {
  auto be = make_cpu_backend<float>();
  for (bool disallow : {false, true}) {
    PretrainerConfig c = test::tiny_config();
    c.disallow_correct = disallow;
    ElectraPretrainer<float> model(c, *be);
    model.init_parameters(7);
    set_tensor_value(model, "generator_lm_head.bias", 7, 100.0f);
    const Batch batch = batch_with_targets(64, 8, 3, c.vocab_size, {7});
    StepContext ctx;
    ctx.seed = 8;
    const auto& out = model.forward(batch, ctx);
    int real = 0, equal = 0;
    for (size_t i = 0; i < out.sampled_ids.size(); ++i) {
      if (batch.masked_lm_weights[i] == 0) continue;
      ++real;
      equal += out.sampled_ids[i] == 7;
    }
    ASSERT_GT(real, 150);
    EXPECT_EQ(equal, disallow ? 0 : real) << "disallow_correct=" << disallow;
  }
}

TEST(ModelPretrainer, DisallowCorrectOnRandomWeightsOverManyRows) {
  auto be = make_cpu_backend<float>();
  PretrainerConfig c = test::tiny_config();
  c.disallow_correct = true;
  c.temperature = 3.0f;  // flat distribution: the original would often be drawn
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(9);
  const Batch batch = test::random_batch(128, 8, 3, c.vocab_size, 10);
  for (uint64_t step = 0; step < 4; ++step) {
    StepContext ctx;
    ctx.seed = 11;
    ctx.step = step;
    const auto& out = model.forward(batch, ctx);
    for (size_t i = 0; i < out.sampled_ids.size(); ++i) {
      ASSERT_NE(out.sampled_ids[i], batch.masked_lm_ids[i]) << "step " << step << " prediction " << i;
    }
  }
}

TEST(ModelPretrainer, DiscLabelMarksOnlyRealReplacedTokens) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();  // disallow_correct off
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(12);
  set_tensor_value(model, "generator_lm_head.bias", 7, 100.0f);  // the generator always samples 7
  const int B = 16, S = 8, P = 3;
  Batch batch = batch_with_targets(B, S, P, c.vocab_size, {7, 8});  // half the originals are 7
  // A prediction on a padding token (row 2 has length S - 2): replaced but not a real token.
  batch.masked_lm_positions[2 * P] = S - 1;
  batch.masked_lm_ids[2 * P] = 8;
  batch.masked_lm_weights[2 * P] = 1.0f;
  StepContext ctx;
  ctx.seed = 13;
  const auto& out = model.forward(batch, ctx);
  int ones = 0, zeros_at_equal = 0;
  for (int b = 0; b < B; ++b) {
    for (int s = 0; s < S; ++s) {
      const int i = b * S + s;
      int original = batch.input_word_ids[i];
      int predicted = -1;
      for (int p = 0; p < P; ++p) {
        const int k = b * P + p;
        if (batch.masked_lm_weights[k] > 0 && batch.masked_lm_positions[k] == s) {
          original = batch.masked_lm_ids[k];
          predicted = k;
        }
      }
      const int expected_input = predicted >= 0 ? out.sampled_ids[predicted] : original;
      ASSERT_EQ(out.corrupted_ids[i], expected_input) << "row " << b << " position " << s;
      const int expected_label = batch.input_mask[i] && expected_input != original;
      ASSERT_EQ(out.disc_label[i], expected_label) << "row " << b << " position " << s;
      if (predicted >= 0 && batch.input_mask[i]) {
        ASSERT_EQ(out.sampled_ids[predicted], 7);
        ASSERT_EQ(out.disc_label[i], original == 8 ? 1 : 0);
        ones += original == 8;
        zeros_at_equal += original == 7;
      }
    }
  }
  EXPECT_GT(ones, 5);
  EXPECT_GT(zeros_at_equal, 5);
  EXPECT_EQ(out.disc_label[2 * S + S - 1], 0);  // the padding prediction
  EXPECT_EQ(out.corrupted_ids[2 * S + S - 1], 7);
  EXPECT_EQ(out.losses.disc_fake_count, ones);
}

// ---- precision, determinism, batch splitting ----

TEST(ModelPretrainer, FloatAgreesWithDouble) {
  auto bf = make_cpu_backend<float>();
  auto bd = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> mf(c, *bf);
  ElectraPretrainer<double> md(c, *bd);
  mf.init_parameters(14);
  const std::vector<float> pf = mf.parameters_to_host();
  md.parameters_from_host(std::vector<double>(pf.begin(), pf.end()));
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 15, true, c.num_classes);
  StepContext ctx;
  ctx.seed = 16;
  ctx.step = 2;
  ctx.training = true;
  mf.zero_gradients();
  md.zero_gradients();
  const auto& of = mf.forward(batch, ctx);
  const auto& od = md.forward(batch, ctx);
  mf.backward();
  md.backward();
  ASSERT_EQ(of.sampled_ids, od.sampled_ids);
  ASSERT_EQ(of.disc_label, od.disc_label);
  EXPECT_NEAR(of.losses.total_loss, od.losses.total_loss, 1e-4 * std::abs(od.losses.total_loss));
  EXPECT_NEAR(of.losses.mlm_loss, od.losses.mlm_loss, 1e-4 * std::abs(od.losses.mlm_loss));
  EXPECT_NEAR(of.losses.disc_loss, od.losses.disc_loss, 1e-4 * std::abs(od.losses.disc_loss));
  EXPECT_NEAR(of.losses.sentence_loss, od.losses.sentence_loss, 1e-4 * std::abs(od.losses.sentence_loss));
  auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  EXPECT_LT(rel_norm_diff(as_double(of.lm_outputs), od.lm_outputs, 0, od.lm_outputs.size()), 1e-4);
  EXPECT_LT(rel_norm_diff(as_double(of.disc_logits), od.disc_logits, 0, od.disc_logits.size()), 1e-4);
  EXPECT_LT(rel_norm_diff(as_double(of.sentence_outputs), od.sentence_outputs, 0, od.sentence_outputs.size()), 1e-4);
  const std::vector<double> gf = as_double(mf.gradients_to_host()), gd = md.gradients_to_host();
  for (const ParameterSlice& v : md.layout().slices()) {
    if (v.name.find("attention.self.key.bias") != std::string::npos) continue;  // exactly 0 up to rounding
    EXPECT_LT(rel_norm_diff(gf, gd, v.offset, v.size), 1e-4) << v.name;
  }
}

TEST(ModelPretrainer, ForwardBackwardIsDeterministic) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(17);
  const Batch batch = test::random_batch(4, 8, 3, c.vocab_size, 18, true, c.num_classes);
  StepContext ctx;
  ctx.seed = 19;
  ctx.training = true;
  auto run = [&]() {
    model.zero_gradients();
    PretrainerOutputs<float> out = model.forward(batch, ctx);
    model.backward();
    return std::make_pair(out, model.gradients_to_host());
  };
  const auto [o1, g1] = run();
  const auto [o2, g2] = run();
  EXPECT_EQ(o1.lm_outputs, o2.lm_outputs);
  EXPECT_EQ(o1.disc_logits, o2.disc_logits);
  EXPECT_EQ(o1.sentence_outputs, o2.sentence_outputs);
  EXPECT_EQ(o1.sampled_ids, o2.sampled_ids);
  EXPECT_EQ(o1.losses.total_loss, o2.losses.total_loss);
  EXPECT_EQ(g1, g2);
}

TEST(ModelPretrainer, BackwardAccumulatesIntoGradients) {
  auto be = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(20);
  const Batch batch = test::random_batch(2, 6, 2, c.vocab_size, 21);
  StepContext ctx;
  ctx.seed = 22;
  model.zero_gradients();
  model.forward(batch, ctx);
  model.backward();
  const std::vector<double> once = model.gradients_to_host();
  EXPECT_THROW(model.backward(), Error);  // the same forward may not be back-propagated twice
  model.forward(batch, ctx);
  model.backward();
  const std::vector<double> twice = model.gradients_to_host();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], 2 * once[i], 1e-12 * (1 + std::abs(once[i])));
}

TEST(ModelPretrainer, SplitBatchGradientsSumToFullBatch) {
  auto be = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(23);
  Batch full = test::random_batch(5, 8, 3, c.vocab_size, 24, true, c.num_classes);
  full.global_row_offset = 40;  // e.g. this rank's slice of a larger global batch
  GlobalNormalizers global;
  for (float w : full.masked_lm_weights) global.masked_lm_weight_sum += w;
  for (int m : full.input_mask) global.input_mask_count += m;
  global.examples = full.rows;
  StepContext ctx;
  ctx.seed = 25;
  ctx.step = 6;
  ctx.training = true;  // dropout and sampling are keyed by the global example: the split must not matter
  ctx.global = global;

  model.zero_gradients();
  const PretrainerOutputs<double> whole = model.forward(full, ctx);
  model.backward();
  const std::vector<double> g_full = model.gradients_to_host();

  model.zero_gradients();
  PretrainerLosses sum;
  std::vector<int32_t> samples, labels;
  for (auto [begin, end] : {std::pair{0, 2}, std::pair{2, 5}}) {
    const Batch part = test::slice_batch(full, begin, end);
    const auto& out = model.forward(part, ctx);
    model.backward();
    sum.mlm_loss += out.losses.mlm_loss;
    sum.disc_loss += out.losses.disc_loss;
    sum.sentence_loss += out.losses.sentence_loss;
    sum.total_loss += out.losses.total_loss;
    samples.insert(samples.end(), out.sampled_ids.begin(), out.sampled_ids.end());
    labels.insert(labels.end(), out.disc_label.begin(), out.disc_label.end());
  }
  const std::vector<double> g_split = model.gradients_to_host();
  EXPECT_EQ(samples, whole.sampled_ids);
  EXPECT_EQ(labels, whole.disc_label);
  EXPECT_NEAR(sum.mlm_loss, whole.losses.mlm_loss, 1e-10);
  EXPECT_NEAR(sum.disc_loss, whole.losses.disc_loss, 1e-10);
  EXPECT_NEAR(sum.sentence_loss, whole.losses.sentence_loss, 1e-10);
  EXPECT_NEAR(sum.total_loss, whole.losses.total_loss, 1e-9);
  double gmax = 0;
  for (double g : g_full) gmax = std::max(gmax, std::abs(g));
  ASSERT_GT(gmax, 0);
  for (size_t i = 0; i < g_full.size(); ++i) {
    ASSERT_NEAR(g_split[i], g_full[i], 1e-5 * (std::abs(g_full[i]) + 1e-3 * gmax)) << "parameter element " << i;
  }
}

TEST(ModelPretrainer, LocalNormalisersEqualGlobalOnesForOneSlice) {
  auto be = make_cpu_backend<double>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(26);
  const Batch batch = test::random_batch(3, 8, 3, c.vocab_size, 27, true, c.num_classes);
  StepContext ctx;
  ctx.seed = 28;
  const PretrainerLosses local = model.forward(batch, ctx).losses;
  GlobalNormalizers g{local.mlm_weight_sum, local.disc_token_count, 3.0};
  ctx.global = g;
  const PretrainerLosses global = model.forward(batch, ctx).losses;
  EXPECT_DOUBLE_EQ(local.total_loss, global.total_loss);
  // total = mlm + 50 * disc + sentence, and the parts match their sums.
  EXPECT_NEAR(local.total_loss, local.mlm_loss + 50.0 * local.disc_loss + local.sentence_loss, 1e-12);
  EXPECT_NEAR(local.mlm_loss, local.mlm_loss_sum / (local.mlm_weight_sum + 1e-6), 1e-12);
  EXPECT_NEAR(local.disc_loss, local.disc_loss_sum / (local.disc_token_count + 1e-6), 1e-12);
  EXPECT_NEAR(local.sentence_loss, local.sentence_loss_sum / 3.0, 1e-12);
  EXPECT_GE(local.mlm_accuracy, 0.0);
  EXPECT_LE(local.mlm_accuracy, 1.0);
  EXPECT_NEAR(local.disc_accuracy, local.disc_correct_sum / local.disc_token_count, 1e-12);
}

// ---- outputs, dropout, initialisation ----

TEST(ModelPretrainer, PredictionsOutputIsLogSoftmaxOfLogits) {
  auto be = make_cpu_backend<double>();
  PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<double> logits_model(c, *be);
  c.output_type = OutputType::kPredictions;
  ElectraPretrainer<double> pred_model(c, *be);
  logits_model.init_parameters(29);
  pred_model.init_parameters(29);
  const Batch batch = test::random_batch(2, 8, 3, c.vocab_size, 30);
  StepContext ctx;
  ctx.seed = 31;
  const PretrainerOutputs<double> a = logits_model.forward(batch, ctx);
  const PretrainerOutputs<double> b = pred_model.forward(batch, ctx);
  const int V = c.vocab_size;
  for (size_t r = 0; r < a.lm_outputs.size() / V; ++r) {
    double mx = -1e300, sum = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, a.lm_outputs[r * V + v]);
    for (int v = 0; v < V; ++v) sum += std::exp(a.lm_outputs[r * V + v] - mx);
    const double lse = mx + std::log(sum);
    for (int v = 0; v < V; ++v) ASSERT_NEAR(b.lm_outputs[r * V + v], a.lm_outputs[r * V + v] - lse, 1e-12);
  }
  EXPECT_NEAR(a.losses.mlm_loss, b.losses.mlm_loss, 1e-12);
}

TEST(ModelPretrainer, DropoutDependsOnTrainingStepAndSeed) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(32);
  const Batch batch = test::random_batch(2, 8, 3, c.vocab_size, 33);
  auto sentence = [&](bool training, uint64_t step, uint64_t seed) {
    StepContext ctx;
    ctx.seed = seed;
    ctx.step = step;
    ctx.training = training;
    return model.forward(batch, ctx).sentence_outputs;  // depends on generator dropout only
  };
  EXPECT_EQ(sentence(false, 1, 1), sentence(false, 2, 1));  // eval: no randomness in the generator
  EXPECT_NE(sentence(true, 1, 1), sentence(false, 1, 1));
  EXPECT_NE(sentence(true, 1, 1), sentence(true, 2, 1));
  EXPECT_NE(sentence(true, 1, 1), sentence(true, 1, 2));
  EXPECT_EQ(sentence(true, 1, 1), sentence(true, 1, 1));
}

TEST(ModelPretrainer, DropoutLanesAreDistinctPerSite) {
  std::set<uint32_t> lanes;
  int sites = 0;
  for (Network n : {Network::kGenerator, Network::kDiscriminator}) {
    lanes.insert(dropout_lane(n, -1, DropoutSlot::kEmbeddings));
    ++sites;
    for (int layer = 0; layer < 24; ++layer) {
      for (DropoutSlot s : {DropoutSlot::kAttentionProbs, DropoutSlot::kAttentionOutput, DropoutSlot::kFfnOutput}) {
        lanes.insert(dropout_lane(n, layer, s));
        ++sites;
      }
    }
  }
  EXPECT_EQ(lanes.size(), static_cast<size_t>(sites));
}

TEST(ModelPretrainer, InitialisationFollowsTheInitialisers) {
  auto be = make_cpu_backend<double>();
  PretrainerConfig c = test::tiny_config();
  c.discriminator.initializer_range = 0.02f;
  c.generator.initializer_range = 0.02f;
  c.mlm_initializer = MlmInitializer::kGlorotUniform;
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(34);
  const std::vector<double> p = model.parameters_to_host();
  ElectraPretrainer<double> same(c, *be);
  same.init_parameters(34);
  EXPECT_EQ(p, same.parameters_to_host());
  same.init_parameters(35);
  EXPECT_NE(p, same.parameters_to_host());

  double sum = 0, sum2 = 0;
  size_t n = 0;
  for (const ParameterSlice& v : model.layout().slices()) {
    for (size_t i = 0; i < v.size; ++i) {
      const double x = p[v.offset + i];
      switch (v.init) {
        case ParamInit::kZeros:
          ASSERT_EQ(x, 0.0) << v.name;
          break;
        case ParamInit::kOnes:
          ASSERT_EQ(x, 1.0) << v.name;
          break;
        case ParamInit::kEncoder:
          ASSERT_LE(std::abs(x), 2 * 0.02 + 1e-9) << v.name;
          sum += x;
          sum2 += x * x;
          ++n;
          break;
        case ParamInit::kHead: {
          const double limit = std::sqrt(6.0 / (v.shape[0] + v.shape[1]));
          ASSERT_LE(std::abs(x), limit) << v.name;
          break;
        }
      }
    }
  }
  ASSERT_GT(n, 2000u);
  const double mean = sum / n, stddev = std::sqrt(sum2 / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(stddev, 0.02 * 0.8796, 0.02 * 0.05);  // std of a normal truncated at 2 stddev
  // Head layers are glorot, not the encoder's truncated normal.
  EXPECT_EQ(model.layout().find("discriminator_predictions.dense.weight").init, ParamInit::kHead);
  EXPECT_EQ(model.layout().find("generator_classification_head.out_proj.weight").init, ParamInit::kHead);
  EXPECT_EQ(model.layout().find("electra.encoder.layer.1.output.dense.weight").init, ParamInit::kEncoder);
}

TEST(ModelPretrainer, CheckpointItemsCoverEveryParameter) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  const auto items = model.checkpoint_items();
  ASSERT_EQ(items.size(), model.layout().slices().size());
  size_t total = 0;
  bool gen = false, disc = false, heads = false;
  for (const auto& item : items) {
    EXPECT_EQ(item.data, model.parameters() + item.slice->offset);
    total += item.slice->size;
    gen |= item.slice->name.rfind("generator.encoder.", 0) == 0;
    disc |= item.slice->name.rfind("electra.encoder.", 0) == 0;
    heads |= item.slice->name == "generator_lm_head.bias";
  }
  EXPECT_EQ(total, model.layout().total_size());
  EXPECT_TRUE(gen && disc && heads);
}

// ---- input checks ----

TEST(ModelPretrainer, BadBatchesFailNamingTheTensor) {
  auto be = make_cpu_backend<float>();
  const PretrainerConfig c = test::tiny_config();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(36);
  const Batch good = test::random_batch(2, 8, 3, c.vocab_size, 37, true, c.num_classes);
  StepContext ctx;
  auto expect_error = [&](const Batch& b, const std::string& needle) {
    try {
      model.forward(b, ctx);
      ADD_FAILURE() << "no error, expected one naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Batch b = good;
  b.input_word_ids[3] = c.vocab_size;
  expect_error(b, "input_word_ids");
  b = good;
  b.input_type_ids[1] = 2;
  expect_error(b, "input_type_ids");
  b = good;
  b.masked_lm_positions[0] = 8;
  expect_error(b, "masked_lm_positions");
  b = good;
  b.masked_lm_ids[0] = -1;
  expect_error(b, "masked_lm_ids");
  b = good;
  b.next_sentence_labels[1] = 3;
  expect_error(b, "next_sentence_labels");
  b = good;
  b.input_mask.pop_back();
  expect_error(b, "input_mask");
  b = test::random_batch(1, 17, 3, c.vocab_size, 38);  // max_position_embeddings is 16
  expect_error(b, "max_position_embeddings");
  EXPECT_NO_THROW(model.forward(good, ctx));
}

TEST(ModelPretrainer, GeneratorExportNames) {
  EXPECT_EQ(generator_hf_name("generator.encoder.layer.3.attention.self.query.weight"),
            "electra.encoder.layer.3.attention.self.query.weight");
  EXPECT_EQ(generator_hf_name("generator.embeddings_project.bias"), "electra.embeddings_project.bias");
  EXPECT_EQ(generator_hf_name("electra.embeddings.LayerNorm.weight"), "electra.embeddings.LayerNorm.weight");
  EXPECT_EQ(generator_hf_name("generator_lm_head.bias"), "generator_lm_head.bias");
  EXPECT_EQ(generator_hf_name("generator_predictions.dense.weight"), "generator_predictions.dense.weight");
  EXPECT_EQ(generator_hf_name("electra.encoder.layer.0.output.dense.bias"), "");
  EXPECT_EQ(generator_hf_name("electra.embeddings_project.weight"), "");
  EXPECT_EQ(generator_hf_name("generator_classification_head.dense.weight"), "");
  EXPECT_EQ(generator_hf_name("discriminator_predictions.dense.weight"), "");
}

}  // namespace
}  // namespace electra
