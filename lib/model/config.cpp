#include "lib/model/config.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "lib/core/error.h"

namespace electra {

OutputType parse_output_type(const std::string& name) {
  if (name == "logits") return OutputType::kLogits;
  if (name == "predictions") return OutputType::kPredictions;
  fail("unknown output_type '", name, "' (expected logits or predictions)");
}

std::string to_string(OutputType type) { return type == OutputType::kLogits ? "logits" : "predictions"; }

MlmInitializer parse_mlm_initializer(const std::string& name) {
  if (name == "glorot_uniform") return MlmInitializer::kGlorotUniform;
  if (name == "truncated_normal") return MlmInitializer::kTruncatedNormal;
  fail("unknown mlm_initializer '", name, "' (expected glorot_uniform or truncated_normal)");
}

std::string to_string(MlmInitializer init) {
  return init == MlmInitializer::kGlorotUniform ? "glorot_uniform" : "truncated_normal";
}

void PretrainerConfig::share_discriminator_settings() {
  const EncoderConfig g = generator;
  generator = discriminator;
  generator.hidden_size = g.hidden_size;
  generator.num_layers = g.num_layers;
  generator.num_heads = g.num_heads;
  generator.intermediate_size = g.intermediate_size;
  vocab_size = discriminator.vocab_size;
}

namespace {

const std::set<std::string> kTopKeys = {"vocab_size",
                                        "embedding_size",
                                        "hidden_size",
                                        "num_layers",
                                        "num_heads",
                                        "intermediate_size",
                                        "max_position_embeddings",
                                        "type_vocab_size",
                                        "hidden_dropout",
                                        "attention_dropout",
                                        "initializer_range",
                                        "layer_norm_eps",
                                        "generator",
                                        "num_classes",
                                        "num_token_predictions",
                                        "mlm_activation",
                                        "mlm_initializer",
                                        "mlm_initializer_stddev",
                                        "output_type",
                                        "disallow_correct",
                                        "temperature",
                                        "disc_loss_weight"};
const std::set<std::string> kGeneratorKeys = {"hidden_size", "num_layers", "num_heads", "intermediate_size"};

// Reads node[key] into out when present; the error names the dotted key.
template <typename V>
void read(const nlohmann::json& node, const std::string& prefix, const char* key, V& out) {
  if (!node.contains(key)) return;
  const nlohmann::json& value = node.at(key);
  const std::string dotted = prefix + key;
  if constexpr (std::is_same_v<V, bool>) {
    if (!value.is_boolean()) fail("config key '", dotted, "': expected true/false, got ", value.dump());
    out = value.get<bool>();
  } else if constexpr (std::is_integral_v<V>) {
    if (!value.is_number_integer()) fail("config key '", dotted, "': expected an integer, got ", value.dump());
    // get<V>() would wrap a value outside V's range (4294967424 -> 128 for an int).
    const bool fits = value.is_number_unsigned()
                          ? value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<V>::max())
                          : value.get<int64_t>() >= static_cast<int64_t>(std::numeric_limits<V>::min()) &&
                                value.get<int64_t>() <= static_cast<int64_t>(std::numeric_limits<V>::max());
    if (!fits) fail("config key '", dotted, "': ", value.dump(), " is out of range");
    out = value.get<V>();
  } else if constexpr (std::is_floating_point_v<V>) {
    if (!value.is_number()) fail("config key '", dotted, "': expected a number, got ", value.dump());
    // A double beyond V's range (1e39 for a float) would become infinity.
    if (!std::isfinite(static_cast<V>(value.get<double>()))) {
      fail("config key '", dotted, "': ", value.dump(), " is not a finite number");
    }
    out = value.get<V>();
  } else {
    if (!value.is_string()) fail("config key '", dotted, "': expected a string, got ", value.dump());
    out = value.get<std::string>();
  }
}

void check_positive(int value, const std::string& key) {
  if (value <= 0) fail("config key '", key, "' must be positive, got ", value);
}

void check_rate(float value, const std::string& key) {
  if (!(value >= 0.0f && value < 1.0f)) fail("config key '", key, "' must be in [0, 1), got ", value);
}

void validate_encoder(const EncoderConfig& e, const std::string& prefix) {
  check_positive(e.vocab_size, "model.vocab_size");
  check_positive(e.embedding_size, "model.embedding_size");
  check_positive(e.hidden_size, prefix + "hidden_size");
  check_positive(e.num_layers, prefix + "num_layers");
  check_positive(e.num_heads, prefix + "num_heads");
  check_positive(e.intermediate_size, prefix + "intermediate_size");
  check_positive(e.max_position_embeddings, "model.max_position_embeddings");
  check_positive(e.type_vocab_size, "model.type_vocab_size");
  if (e.hidden_size % e.num_heads != 0) {
    fail("config key '", prefix, "hidden_size' (", e.hidden_size, ") is not divisible by '", prefix, "num_heads' (",
         e.num_heads, ")");
  }
  check_rate(e.hidden_dropout, "model.hidden_dropout");
  check_rate(e.attention_dropout, "model.attention_dropout");
  if (!(e.initializer_range > 0.0f)) fail("config key 'model.initializer_range' must be positive");
  if (!(e.layer_norm_eps > 0.0f)) fail("config key 'model.layer_norm_eps' must be positive");
}

}  // namespace

void validate(const PretrainerConfig& c) {
  validate_encoder(c.discriminator, "model.");
  validate_encoder(c.generator, "model.generator.");
  const EncoderConfig& d = c.discriminator;
  const EncoderConfig& g = c.generator;
  // The embeddings exist once, so everything they depend on must agree.
  if (g.vocab_size != d.vocab_size || c.vocab_size != d.vocab_size || g.embedding_size != d.embedding_size ||
      g.max_position_embeddings != d.max_position_embeddings || g.type_vocab_size != d.type_vocab_size) {
    fail(
        "config key 'model.vocab_size'/'model.embedding_size': generator and discriminator share the embeddings, "
        "so their vocab_size, embedding_size, max_position_embeddings and type_vocab_size must be equal");
  }
  check_positive(c.num_classes, "model.num_classes");
  check_positive(c.num_token_predictions, "model.num_token_predictions");
  if (!(c.mlm_initializer_stddev > 0.0f)) fail("config key 'model.mlm_initializer_stddev' must be positive");
  if (!(c.temperature > 0.0f)) fail("config key 'model.temperature' must be positive, got ", c.temperature);
  if (!(c.disc_loss_weight >= 0.0f)) fail("config key 'model.disc_loss_weight' must be >= 0");
}

PretrainerConfig pretrainer_config_from_json(const nlohmann::json& model) {
  if (!model.is_object()) fail("config section 'model' must be a JSON object");
  for (const auto& [key, value] : model.items()) {
    if (!kTopKeys.count(key)) fail("unknown config key 'model.", key, "'");
  }
  PretrainerConfig c;
  EncoderConfig& d = c.discriminator;
  const std::string p = "model.";
  read(model, p, "vocab_size", d.vocab_size);
  read(model, p, "embedding_size", d.embedding_size);
  read(model, p, "hidden_size", d.hidden_size);
  read(model, p, "num_layers", d.num_layers);
  read(model, p, "num_heads", d.num_heads);
  read(model, p, "intermediate_size", d.intermediate_size);
  read(model, p, "max_position_embeddings", d.max_position_embeddings);
  read(model, p, "type_vocab_size", d.type_vocab_size);
  read(model, p, "hidden_dropout", d.hidden_dropout);
  read(model, p, "attention_dropout", d.attention_dropout);
  read(model, p, "initializer_range", d.initializer_range);
  read(model, p, "layer_norm_eps", d.layer_norm_eps);

  EncoderConfig& g = c.generator;
  if (model.contains("generator")) {
    const nlohmann::json& gen = model.at("generator");
    if (!gen.is_object()) fail("config key 'model.generator' must be a JSON object");
    for (const auto& [key, value] : gen.items()) {
      if (!kGeneratorKeys.count(key)) fail("unknown config key 'model.generator.", key, "'");
    }
    const std::string gp = "model.generator.";
    read(gen, gp, "hidden_size", g.hidden_size);
    read(gen, gp, "num_layers", g.num_layers);
    read(gen, gp, "num_heads", g.num_heads);
    read(gen, gp, "intermediate_size", g.intermediate_size);
  }
  c.share_discriminator_settings();

  read(model, p, "num_classes", c.num_classes);
  read(model, p, "num_token_predictions", c.num_token_predictions);
  std::string name = to_string(c.mlm_activation);
  read(model, p, "mlm_activation", name);
  if (name != "none" && name != "linear" && name != "gelu" && name != "relu" && name != "tanh") {
    fail("config key 'model.mlm_activation': unknown activation '", name, "' (expected none|gelu|relu|tanh)");
  }
  c.mlm_activation = parse_activation(name);
  name = to_string(c.mlm_initializer);
  read(model, p, "mlm_initializer", name);
  if (name != "glorot_uniform" && name != "truncated_normal") {
    fail("config key 'model.mlm_initializer': unknown initializer '", name,
         "' (expected glorot_uniform|truncated_normal)");
  }
  c.mlm_initializer = parse_mlm_initializer(name);
  read(model, p, "mlm_initializer_stddev", c.mlm_initializer_stddev);
  name = to_string(c.output_type);
  read(model, p, "output_type", name);
  if (name != "logits" && name != "predictions") {
    fail("config key 'model.output_type': unknown value '", name, "' (expected logits|predictions)");
  }
  c.output_type = parse_output_type(name);
  read(model, p, "disallow_correct", c.disallow_correct);
  read(model, p, "temperature", c.temperature);
  read(model, p, "disc_loss_weight", c.disc_loss_weight);
  validate(c);
  return c;
}

nlohmann::json to_json(const PretrainerConfig& c) {
  const EncoderConfig& d = c.discriminator;
  const EncoderConfig& g = c.generator;
  // Rates go out as the shortest decimal that reads back as the same float, so 0.1f is written as 0.1.
  auto rate = [](float v) {
    char buf[32];
    const auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
    return std::stod(std::string(buf, end));
  };
  return nlohmann::json{
      {"vocab_size", d.vocab_size},
      {"embedding_size", d.embedding_size},
      {"hidden_size", d.hidden_size},
      {"num_layers", d.num_layers},
      {"num_heads", d.num_heads},
      {"intermediate_size", d.intermediate_size},
      {"max_position_embeddings", d.max_position_embeddings},
      {"type_vocab_size", d.type_vocab_size},
      {"hidden_dropout", rate(d.hidden_dropout)},
      {"attention_dropout", rate(d.attention_dropout)},
      {"initializer_range", rate(d.initializer_range)},
      {"layer_norm_eps", rate(d.layer_norm_eps)},
      {"generator",
       {{"hidden_size", g.hidden_size},
        {"num_layers", g.num_layers},
        {"num_heads", g.num_heads},
        {"intermediate_size", g.intermediate_size}}},
      {"num_classes", c.num_classes},
      {"num_token_predictions", c.num_token_predictions},
      {"mlm_activation", to_string(c.mlm_activation)},
      {"mlm_initializer", to_string(c.mlm_initializer)},
      {"mlm_initializer_stddev", rate(c.mlm_initializer_stddev)},
      {"output_type", to_string(c.output_type)},
      {"disallow_correct", c.disallow_correct},
      {"temperature", rate(c.temperature)},
      {"disc_loss_weight", rate(c.disc_loss_weight)},
  };
}

nlohmann::json model_preset(const std::string& name, int vocab_size) {
  PretrainerConfig c;  // defaults: small
  EncoderConfig& d = c.discriminator;
  EncoderConfig& g = c.generator;
  auto set_gen = [&](int hidden, int layers, int heads, int ffn) {
    g.hidden_size = hidden;
    g.num_layers = layers;
    g.num_heads = heads;
    g.intermediate_size = ffn;
  };
  if (name == "tiny") {  // as jobs/configs/tiny.json
    d.embedding_size = 64;
    d.hidden_size = 128;
    d.num_layers = 2;
    d.num_heads = 2;
    d.intermediate_size = 512;
    set_gen(64, 2, 1, 256);
    c.num_token_predictions = 19;
  } else if (name == "small") {
    d.embedding_size = 128;
    d.hidden_size = 256;
    d.num_layers = 12;
    d.num_heads = 4;
    d.intermediate_size = 1024;
    set_gen(64, 12, 1, 256);
    c.num_token_predictions = 19;
  } else if (name == "base") {
    d.embedding_size = 768;
    d.hidden_size = 768;
    d.num_layers = 12;
    d.num_heads = 12;
    d.intermediate_size = 3072;
    set_gen(256, 12, 4, 1024);
    c.num_token_predictions = 79;
  } else if (name == "large") {
    d.embedding_size = 1024;
    d.hidden_size = 1024;
    d.num_layers = 24;
    d.num_heads = 16;
    d.intermediate_size = 4096;
    set_gen(256, 24, 4, 1024);
    c.num_token_predictions = 130;  // mask_prob 0.25 for large: int((0.25 + 0.005) * 512)
  } else {
    fail("unknown model preset '", name, "' (expected tiny|small|base|large)");
  }
  if (vocab_size > 0) d.vocab_size = vocab_size;
  c.share_discriminator_settings();
  validate(c);
  return to_json(c);
}

double model_flops_per_step(const PretrainerConfig& c, long long batch, long long seq) {
  const double N = static_cast<double>(batch) * static_cast<double>(seq);  // tokens
  const double B = static_cast<double>(batch);
  const double E = c.embedding_size();
  const double V = c.vocab_size;
  auto encoder = [&](const EncoderConfig& e) {
    const double C = e.hidden_size, F = e.intermediate_size;
    double f = e.has_embeddings_project() ? 2.0 * N * E * C : 0.0;
    const double per_layer = 2.0 * N * C * 3.0 * C      // fused QKV
                             + 2.0 * N * seq * C * 2.0  // scores q k^T and probs v, all heads
                             + 2.0 * N * C * C          // attention output dense
                             + 2.0 * N * C * F * 2.0;   // intermediate + output dense
    f += e.num_layers * per_layer;
    return f;
  };
  const double Cg = c.generator.hidden_size, Cd = c.discriminator.hidden_size;
  const double M = B * c.num_token_predictions;
  double forward = encoder(c.generator) + encoder(c.discriminator);
  forward += 2.0 * M * Cg * E + 2.0 * M * E * V;                // MLM dense + tied vocabulary projection
  forward += 2.0 * B * Cg * Cg + 2.0 * B * Cg * c.num_classes;  // sentence head
  forward += 2.0 * N * Cd * Cd + 2.0 * N * Cd;                  // discriminator head
  return 3.0 * forward;
}

}  // namespace electra
