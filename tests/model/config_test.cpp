// Model config: JSON round trip, presets, errors that name the key, FLOP count, parameter names.
#include "lib/model/config.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>

#include "lib/core/error.h"
#include "lib/model/parameter_layout.h"

namespace electra {
namespace {

void expect_error_naming(const nlohmann::json& model, const std::string& key) {
  try {
    pretrainer_config_from_json(model);
    ADD_FAILURE() << "no error for " << model.dump() << ", expected one naming " << key;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, DefaultsAreElectraSmall) {
  const PretrainerConfig c = pretrainer_config_from_json(nlohmann::json::object());
  EXPECT_EQ(c.vocab_size, 30522);
  EXPECT_EQ(c.discriminator.hidden_size, 256);
  EXPECT_EQ(c.discriminator.num_layers, 12);
  EXPECT_EQ(c.generator.hidden_size, 64);
  EXPECT_EQ(c.generator.num_layers, 12);
  EXPECT_EQ(c.generator.num_heads, 1);
  EXPECT_EQ(c.generator.embedding_size, 128);  // shared settings copied into the generator
  EXPECT_EQ(c.mlm_activation, Activation::kGelu);
  EXPECT_EQ(c.output_type, OutputType::kLogits);
  EXPECT_FLOAT_EQ(c.temperature, 1.0f);
  EXPECT_FLOAT_EQ(c.disc_loss_weight, 50.0f);
  EXPECT_FALSE(c.disallow_correct);
}

TEST(ModelConfig, ShareDiscriminatorSettings) {
  PretrainerConfig c;
  c.discriminator.vocab_size = 99;
  c.discriminator.embedding_size = 32;
  c.discriminator.hidden_dropout = 0.3f;
  c.generator.hidden_size = 16;
  EXPECT_THROW(validate(c), Error);  // the generator still has the old vocabulary
  c.share_discriminator_settings();
  EXPECT_NO_THROW(validate(c));
  EXPECT_EQ(c.vocab_size, 99);
  EXPECT_EQ(c.generator.vocab_size, 99);
  EXPECT_EQ(c.generator.embedding_size, 32);
  EXPECT_FLOAT_EQ(c.generator.hidden_dropout, 0.3f);
  EXPECT_EQ(c.generator.hidden_size, 16);  // its own width is kept
  EXPECT_EQ(c.generator.num_heads, 1);
}

TEST(ModelConfig, JsonRoundTrip) {
  nlohmann::json j = model_preset("base", 1000);
  j["mlm_activation"] = "tanh";
  j["output_type"] = "predictions";
  j["mlm_initializer"] = "glorot_uniform";
  j["disallow_correct"] = true;
  j["temperature"] = 0.5;
  j["hidden_dropout"] = 0.2;
  const PretrainerConfig c = pretrainer_config_from_json(j);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.generator.vocab_size, 1000);
  EXPECT_EQ(c.mlm_activation, Activation::kTanh);
  EXPECT_EQ(c.output_type, OutputType::kPredictions);
  EXPECT_EQ(c.mlm_initializer, MlmInitializer::kGlorotUniform);
  EXPECT_FLOAT_EQ(c.generator.hidden_dropout, 0.2f);
  const nlohmann::json back = to_json(c);
  EXPECT_EQ(back, j);
  EXPECT_EQ(back["hidden_dropout"].dump(), "0.2");  // written as the decimal the user wrote
  EXPECT_TRUE(back["num_layers"].is_number_integer());
}

TEST(ModelConfig, PresetsMatchGoogleResearchElectra) {
  struct Expect {
    const char* name;
    int E, H, L, heads, F, gH, gheads, gF, P;
  };
  for (const Expect& e : {Expect{"small", 128, 256, 12, 4, 1024, 64, 1, 256, 19},
                          Expect{"base", 768, 768, 12, 12, 3072, 256, 4, 1024, 79},
                          Expect{"large", 1024, 1024, 24, 16, 4096, 256, 4, 1024, 130},
                          Expect{"tiny", 64, 128, 2, 2, 512, 64, 1, 256, 19}}) {
    const PretrainerConfig c = pretrainer_config_from_json(model_preset(e.name));
    EXPECT_EQ(c.embedding_size(), e.E) << e.name;
    EXPECT_EQ(c.discriminator.hidden_size, e.H) << e.name;
    EXPECT_EQ(c.discriminator.num_layers, e.L) << e.name;
    EXPECT_EQ(c.discriminator.num_heads, e.heads) << e.name;
    EXPECT_EQ(c.discriminator.intermediate_size, e.F) << e.name;
    EXPECT_EQ(c.generator.hidden_size, e.gH) << e.name;
    EXPECT_EQ(c.generator.num_layers, e.L) << e.name;
    EXPECT_EQ(c.generator.num_heads, e.gheads) << e.name;
    EXPECT_EQ(c.generator.intermediate_size, e.gF) << e.name;
    EXPECT_EQ(c.num_token_predictions, e.P) << e.name;
    EXPECT_EQ(c.vocab_size, 30522) << e.name;
  }
  EXPECT_EQ(pretrainer_config_from_json(model_preset("tiny", 777)).vocab_size, 777);
  EXPECT_THROW(model_preset("huge"), Error);
}

TEST(ModelConfig, InvalidValuesNameTheKey) {
  expect_error_naming({{"hidden_size", 250}}, "model.hidden_size");
  expect_error_naming({{"generator", {{"num_heads", 3}}}}, "model.generator.num_heads");
  expect_error_naming({{"mlm_activation", "swish"}}, "model.mlm_activation");
  expect_error_naming({{"output_type", "probs"}}, "model.output_type");
  expect_error_naming({{"mlm_initializer", "zeros"}}, "model.mlm_initializer");
  expect_error_naming({{"num_layers", 0}}, "model.num_layers");
  expect_error_naming({{"hidden_dropout", 1.0}}, "model.hidden_dropout");
  expect_error_naming({{"temperature", 0.0}}, "model.temperature");
  expect_error_naming({{"num_heads", "4"}}, "model.num_heads");
  expect_error_naming({{"num_layers", 2.5}}, "model.num_layers");
  expect_error_naming({{"disallow_correct", 1}}, "model.disallow_correct");
  expect_error_naming({{"hiden_size", 256}}, "model.hiden_size");
  expect_error_naming({{"generator", {{"embedding_size", 64}}}}, "model.generator.embedding_size");
  // Out of the field's range: refused, not wrapped (4294967424 would be 128) or overflowed to infinity.
  expect_error_naming({{"hidden_size", 4294967424LL}}, "model.hidden_size");
  expect_error_naming({{"generator", {{"num_layers", 4294967298LL}}}}, "model.generator.num_layers");
  expect_error_naming({{"num_heads", -4294967292LL}}, "model.num_heads");
  expect_error_naming({{"initializer_range", 1e39}}, "model.initializer_range");
  expect_error_naming({{"temperature", 1e39}}, "model.temperature");
  expect_error_naming({{"layer_norm_eps", -1e300}}, "model.layer_norm_eps");
}

TEST(ModelConfig, FlopsCountedByHand) {
  PretrainerConfig c = pretrainer_config_from_json(model_preset("tiny", 100));
  c.num_token_predictions = 3;
  const double B = 2, S = 10, N = B * S, E = 64, V = 100, P = 3, NC = 2;
  auto enc = [&](double C, double F, double L) {
    return 2 * N * E * C + L * (2 * N * C * 3 * C + 4 * N * S * C + 2 * N * C * C + 4 * N * C * F);
  };
  const double gen = enc(64, 256, 2) - 2 * N * E * 64;  // generator width == E: no projection
  const double disc = enc(128, 512, 2);
  const double heads =
      2 * B * P * 64 * E + 2 * B * P * E * V + 2 * B * 64 * 64 + 2 * B * 64 * NC + 2 * N * 128 * 128 + 2 * N * 128;
  EXPECT_DOUBLE_EQ(model_flops_per_step(c, 2, 10), 3 * (gen + disc + heads));
  // ELECTRA-small at seq 128: about 3 * 2 * 14M params per token is the usual ballpark (~1.3e10 per
  // sequence with attention); the exact count must be in that range.
  const PretrainerConfig small = pretrainer_config_from_json(model_preset("small"));
  const double per_sequence = model_flops_per_step(small, 1, 128);
  EXPECT_GT(per_sequence, 5e9);
  EXPECT_LT(per_sequence, 3e10);
}

// The discriminator's names are exactly Hugging Face ElectraForPreTraining's state_dict keys (from
// transformers' modeling_electra: position_ids / token_type_ids are non-persistent buffers).
TEST(ModelLayout, DiscriminatorNamesAreHuggingFaceKeys) {
  const PretrainerConfig c = pretrainer_config_from_json(model_preset("small"));
  const PretrainerLayout pl = build_pretrainer_layout(c);
  std::map<std::string, std::vector<int64_t>> expected = {
      {"electra.embeddings.word_embeddings.weight", {30522, 128}},
      {"electra.embeddings.position_embeddings.weight", {512, 128}},
      {"electra.embeddings.token_type_embeddings.weight", {2, 128}},
      {"electra.embeddings.LayerNorm.weight", {128}},
      {"electra.embeddings.LayerNorm.bias", {128}},
      {"electra.embeddings_project.weight", {256, 128}},
      {"electra.embeddings_project.bias", {256}},
      {"discriminator_predictions.dense.weight", {256, 256}},
      {"discriminator_predictions.dense.bias", {256}},
      {"discriminator_predictions.dense_prediction.weight", {1, 256}},
      {"discriminator_predictions.dense_prediction.bias", {1}},
  };
  for (int i = 0; i < 12; ++i) {
    const std::string p = "electra.encoder.layer." + std::to_string(i) + ".";
    for (const char* qkv : {"query", "key", "value"}) {
      expected[p + "attention.self." + qkv + ".weight"] = {256, 256};
      expected[p + "attention.self." + qkv + ".bias"] = {256};
    }
    expected[p + "attention.output.dense.weight"] = {256, 256};
    expected[p + "attention.output.dense.bias"] = {256};
    expected[p + "attention.output.LayerNorm.weight"] = {256};
    expected[p + "attention.output.LayerNorm.bias"] = {256};
    expected[p + "intermediate.dense.weight"] = {1024, 256};
    expected[p + "intermediate.dense.bias"] = {1024};
    expected[p + "output.dense.weight"] = {256, 1024};
    expected[p + "output.dense.bias"] = {256};
    expected[p + "output.LayerNorm.weight"] = {256};
    expected[p + "output.LayerNorm.bias"] = {256};
  }
  std::map<std::string, std::vector<int64_t>> got;
  size_t params = 0;
  for (const ParameterSlice& v : pl.layout.slices()) {
    if (v.network != Network::kGenerator) {
      got[v.name] = v.shape;
      params += v.size;
    }
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(params, 13549057u);  // ElectraForPreTraining at ELECTRA-small size (HF reports 13.5M)
}

TEST(ModelLayout, WeightDecayFlagsAndContiguousQkv) {
  const PretrainerLayout pl = build_pretrainer_layout(pretrainer_config_from_json(model_preset("tiny", 50)));
  const std::regex no_decay(R"(.*(LayerNorm\.(weight|bias)|\.bias)$)");
  size_t offset = 0;
  for (const ParameterSlice& v : pl.layout.slices()) {
    EXPECT_EQ(v.weight_decay, !std::regex_match(v.name, no_decay)) << v.name;
    EXPECT_EQ(v.offset, offset) << v.name;  // contiguous, in order
    offset += v.size;
  }
  EXPECT_EQ(offset, pl.layout.total_size());
  for (const char* net : {"generator", "electra"}) {
    const std::string p = std::string(net) + ".encoder.layer.1.attention.self.";
    const ParameterLayout& l = pl.layout;
    const ParameterSlice& q = l.find(p + "query.weight");
    EXPECT_EQ(l.find(p + "key.weight").offset, q.offset + q.size);
    EXPECT_EQ(l.find(p + "value.weight").offset, q.offset + 2 * q.size);
    const ParameterSlice& qb = l.find(p + "query.bias");
    EXPECT_EQ(l.find(p + "key.bias").offset, qb.offset + qb.size);
    EXPECT_EQ(l.find(p + "value.bias").offset, qb.offset + 2 * qb.size);
  }
  // tiny: generator width 64 == E, so only the discriminator projects its embeddings.
  EXPECT_FALSE(pl.layout.contains("generator.embeddings_project.weight"));
  EXPECT_TRUE(pl.layout.contains("electra.embeddings_project.weight"));
  EXPECT_FALSE(pl.layout.contains("generator_lm_head.weight"));  // tied to the word embeddings
  EXPECT_THROW(pl.layout.find("electra.nope"), Error);
}

}  // namespace
}  // namespace electra
