// How our pretrainer maps onto Hugging Face's ELECTRA classes (transformers 4.46):
//   discriminator/  ElectraForPreTraining: electra.embeddings.*, electra.embeddings_project.* (E != hidden),
//                   electra.encoder.layer.{i}.*, discriminator_predictions.{dense,dense_prediction}.*
//                   (our layout names unchanged).
//   generator/      ElectraForMaskedLM: the same shared electra.embeddings.*, our generator.X as electra.X
//                   (generator_hf_name), generator_predictions.*, generator_lm_head.bias and the tied
//                   generator_lm_head.weight = the word embedding table. The generator's sentence head
//                   (generator_classification_head.*) has no place in it.
// Both config.json files describe one ElectraConfig each; the generator's has its own hidden size, layers,
// heads and FFN width and shares everything the embeddings depend on.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data_pipeline/tokenizer/tokenizer_options.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/model/config.h"
#include "lib/model/parameter_layout.h"

namespace electra::interop {

enum class HfModel { kDiscriminator, kGenerator };
const char* hf_architecture(HfModel model);  // "ElectraForPreTraining" | "ElectraForMaskedLM"
const char* hf_subdir(HfModel model);        // "discriminator" | "generator"

inline constexpr const char* kHfWeightsFile = "model.safetensors";
inline constexpr const char* kHfWeightsIndexFile = "model.safetensors.index.json";
inline constexpr const char* kHfTiedLmHead = "generator_lm_head.weight";
// A tensor only the discriminator (ElectraForPreTraining) has, and one only the generator has: what tells
// a lone model directory's kind.
inline constexpr const char* kHfDiscriminatorHead = "discriminator_predictions.dense_prediction.weight";
inline constexpr const char* kHfGeneratorHead = "generator_predictions.dense.weight";

// One tensor of a Hugging Face state dict and the layout slice that holds its values.
struct HfTensor {
  std::string hf_name;
  const ParameterSlice* slice = nullptr;
};

// The state-dict tensors of `model` in layout order. The generator's list ends with the tied
// generator_lm_head.weight (slice = the word embeddings).
std::vector<HfTensor> hf_tensors(const ParameterLayout& layout, HfModel model);

// HF buffers that older checkpoints saved with the weights (electra.embeddings.position_ids,
// .token_type_ids); they carry no parameters and are skipped on import.
bool is_hf_buffer_name(const std::string& name);

// config.json of one network. Fails (naming the key) when the model cannot be expressed as an
// ElectraConfig: mlm_activation other than gelu (HF's generator head is always GELU and its
// discriminator head uses hidden_act, which is the encoders' GELU).
nlohmann::json hf_model_config(const PretrainerConfig& config, HfModel model, int pad_token_id);

// One ElectraConfig read back: the encoder it describes (HF's defaults for absent keys), checked:
// model_type "electra", hidden_act "gelu", position_embedding_type "absolute", an encoder (no is_decoder,
// no add_cross_attention) and, for the generator, a tied LM head. A key we read may not be null: transformers
// takes null for some as "off" (no position embeddings, an untied head). `origin` names the file in errors,
// e.g. "DIR/config.json: key 'hidden_act' is 'relu'...".
EncoderConfig encoder_from_hf_config(const nlohmann::json& config, const std::string& origin, HfModel model);

// tokenizer_config.json and special_tokens_map.json of a BERT WordPiece tokenizer.
nlohmann::json hf_tokenizer_config(const text::TokenizerOptions& options, int model_max_length);
nlohmann::json hf_special_tokens_map();
// tokenizer.json (the `tokenizers` library format, as BertTokenizerFast saves it) of the same tokenizer:
// BertNormalizer (preceded by NFC when accents are kept, as ours and the slow BertTokenizer compose),
// BertPreTokenizer, WordPiece with our max_input_chars_per_word (HF's default is 100),
// [CLS] A [SEP] (B [SEP]) and the special tokens as added tokens. AutoTokenizer's fast tokenizer
// reads it instead of vocab.txt; keys in the order the library writes them.
nlohmann::ordered_json hf_tokenizer_json(const text::TokenizerOptions& options, const text::Vocab& vocab);
// lower_case / strip_accents from tokenizer_config.json (do_lower_case default true, as BertTokenizer).
text::TokenizerOptions tokenizer_options_from_hf(const nlohmann::json& tokenizer_config, const std::string& origin);
// The WordPiece word limit of a tokenizer.json (model.max_input_chars_per_word, what HF's fast tokenizer
// applies), into `options`; a file without it leaves options as they are; a bad value fails naming origin.
void read_word_limit_from_hf_tokenizer_json(const nlohmann::json& tokenizer_json, const std::string& origin,
                                            text::TokenizerOptions& options);

// A float as the shortest decimal that reads back as the same float (0.1f -> 0.1), for JSON.
double json_float(float value);

}  // namespace electra::interop
