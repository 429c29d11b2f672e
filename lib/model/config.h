// Model configuration: the generator and discriminator encoders and the ELECTRA pre-training heads,
// read from / written to the `model` section of the run config.
//
// Keys of the `model` section (all optional; a missing key keeps the default shown, which is the
// google-research/electra "small" model with the BERT uncased vocabulary):
//   vocab_size              int    30522  shared by both networks and the tied LM head
//   embedding_size          int    128    E: width of the shared embedding tables
//   hidden_size             int    256    discriminator width (must divide by num_heads)
//   num_layers              int    12     discriminator transformer layers
//   num_heads               int    4
//   intermediate_size       int    1024   discriminator FFN width
//   max_position_embeddings int    512    rows of the position table (sequence length limit)
//   type_vocab_size         int    2      rows of the token-type table
//   hidden_dropout          float  0.1    dropout on embeddings, attention output and FFN output
//   attention_dropout       float  0.1    dropout on attention probabilities
//   initializer_range       float  0.02   stddev of the truncated-normal encoder initialiser
//   layer_norm_eps          float  1e-12
//   generator.hidden_size       int 64    generator width (embeddings are projected when != E)
//   generator.num_layers        int 12
//   generator.num_heads         int 1
//   generator.intermediate_size int 256
//   num_classes             int    2      classes of the generator's sentence head (next_sentence_labels)
//   num_token_predictions   int    19     masked positions per example (P)
//   mlm_activation          string "gelu" none|gelu|relu|tanh: MLM dense and discriminator dense
//   mlm_initializer         string "truncated_normal"  glorot_uniform|truncated_normal (heads)
//   mlm_initializer_stddev  float  0.02   stddev for truncated_normal heads
//   output_type             string "logits"  logits|predictions (predictions = log-softmax)
//   disallow_correct        bool   false  never sample the original token at a masked position
//   temperature             float  1.0    generator sampling temperature
//   disc_loss_weight        float  50.0   weight of the replaced-token-detection loss
// The generator shares vocab_size, embedding_size, max_position_embeddings, type_vocab_size, the
// dropouts, initializer_range and layer_norm_eps with the discriminator (one set of embeddings).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "lib/backend/backend.h"

namespace electra {

// One transformer encoder (BERT/ELECTRA), as Hugging Face's ElectraConfig describes it.
struct EncoderConfig {
  int vocab_size = 30522;
  int embedding_size = 128;
  int hidden_size = 256;
  int num_layers = 12;
  int num_heads = 4;
  int intermediate_size = 1024;
  int max_position_embeddings = 512;
  int type_vocab_size = 2;
  float hidden_dropout = 0.1f;
  float attention_dropout = 0.1f;
  float initializer_range = 0.02f;
  float layer_norm_eps = 1e-12f;
  Activation hidden_act = Activation::kGelu;

  int head_size() const { return hidden_size / num_heads; }
  bool has_embeddings_project() const { return embedding_size != hidden_size; }
};

enum class OutputType { kLogits, kPredictions };
enum class MlmInitializer { kGlorotUniform, kTruncatedNormal };

OutputType parse_output_type(const std::string& name);  // "logits"|"predictions"
std::string to_string(OutputType type);
MlmInitializer parse_mlm_initializer(const std::string& name);  // "glorot_uniform"|"truncated_normal"
std::string to_string(MlmInitializer init);

// The arguments of TF Model Garden's tfm.nlp.models.ElectraPretrainer plus ELECTRA's loss settings.
struct PretrainerConfig {
  // The generator has its own hidden/layers/heads/FFN (defaults: ELECTRA-small's 64/12/1/256); every
  // other field must equal the discriminator's (share_discriminator_settings copies them).
  EncoderConfig generator{.hidden_size = 64, .num_heads = 1, .intermediate_size = 256};
  EncoderConfig discriminator;
  int vocab_size = 30522;
  int num_classes = 2;
  int num_token_predictions = 19;
  Activation mlm_activation = Activation::kGelu;
  MlmInitializer mlm_initializer = MlmInitializer::kTruncatedNormal;
  float mlm_initializer_stddev = 0.02f;
  OutputType output_type = OutputType::kLogits;
  bool disallow_correct = false;
  float temperature = 1.0f;
  float disc_loss_weight = 50.0f;

  int embedding_size() const { return discriminator.embedding_size; }

  // Copies what both networks share (vocab_size, embedding_size, max_position_embeddings,
  // type_vocab_size, dropouts, initializer_range, layer_norm_eps, hidden_act) from the discriminator
  // into the generator and vocab_size, so a config built in code only sets the discriminator plus the
  // generator's hidden_size/num_layers/num_heads/intermediate_size.
  void share_discriminator_settings();
};

// Parses the `model` section (keys above). Unknown keys, wrong types and invalid values (hidden size not
// divisible by heads, unknown activation, non-positive sizes, dropout outside [0,1), ...) fail naming the
// key, e.g. "model.generator.num_heads".
PretrainerConfig pretrainer_config_from_json(const nlohmann::json& model);
// The full `model` section with every key (integers as JSON integers, rates as floats).
nlohmann::json to_json(const PretrainerConfig& config);
// Checks a config built in code; throws naming the offending key.
void validate(const PretrainerConfig& config);

// Preset `model` sections, equal to the model sections of jobs/configs/*.json: "tiny" (smoke tests:
// E 64, hidden 128, 2 layers, 2 heads, FFN 512; generator 64, 2 layers, 1 head, FFN 256), "small",
// "base", "large" (google-research/electra; generator 1/4 width (base: 1/3), same depth; large masks 25%).
// vocab_size replaces the preset's (30522) when > 0; tiny takes it from the data's vocabulary.
nlohmann::json model_preset(const std::string& name, int vocab_size = 0);

// Matmul FLOPs (2 per multiply-add) of one forward + backward step (backward = 2x forward) of generator
// and discriminator for a global batch of `batch` examples of length `seq`: embedding projections, QKV,
// attention scores and context, output and FFN dense layers, the MLM head at num_token_predictions
// positions per example (dense + tied vocabulary projection), the sentence head and the discriminator
// head. Elementwise ops are not counted. Used for MFU.
double model_flops_per_step(const PretrainerConfig& config, long long batch, long long seq);

}  // namespace electra
