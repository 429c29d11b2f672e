#include "lib/interop/hf_format.h"

#include <charconv>

#include "lib/core/error.h"
#include "lib/model/pretrainer.h"

namespace electra::interop {

const char* hf_architecture(HfModel model) {
  return model == HfModel::kDiscriminator ? "ElectraForPreTraining" : "ElectraForMaskedLM";
}

const char* hf_subdir(HfModel model) { return model == HfModel::kDiscriminator ? "discriminator" : "generator"; }

std::vector<HfTensor> hf_tensors(const ParameterLayout& layout, HfModel model) {
  std::vector<HfTensor> out;
  for (const ParameterSlice& v : layout.slices()) {
    if (model == HfModel::kDiscriminator) {
      if (v.network != Network::kGenerator) out.push_back({v.name, &v});
    } else {
      std::string name = generator_hf_name(v.name);
      if (!name.empty()) out.push_back({std::move(name), &v});
    }
  }
  if (model == HfModel::kGenerator) {
    out.push_back({kHfTiedLmHead, &layout.find("electra.embeddings.word_embeddings.weight")});
  }
  return out;
}

bool is_hf_buffer_name(const std::string& name) {
  auto ends = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends("embeddings.position_ids") || ends("embeddings.token_type_ids");
}

double json_float(float value) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof(buf), value).ptr;
  return std::stod(std::string(buf, end));
}

nlohmann::json hf_model_config(const PretrainerConfig& config, HfModel model, int pad_token_id) {
  if (config.mlm_activation != Activation::kGelu) {
    fail("model.mlm_activation '", to_string(config.mlm_activation),
         "' cannot be exported: Hugging Face ELECTRA heads use GELU (the generator's always, the discriminator's "
         "hidden_act, which is the encoders' GELU)");
  }
  const EncoderConfig& e = model == HfModel::kDiscriminator ? config.discriminator : config.generator;
  nlohmann::json j = {
      {"architectures", {hf_architecture(model)}},
      {"attention_probs_dropout_prob", json_float(e.attention_dropout)},
      {"embedding_size", e.embedding_size},
      {"hidden_act", "gelu"},
      {"hidden_dropout_prob", json_float(e.hidden_dropout)},
      {"hidden_size", e.hidden_size},
      {"initializer_range", json_float(e.initializer_range)},
      {"intermediate_size", e.intermediate_size},
      {"layer_norm_eps", json_float(e.layer_norm_eps)},
      {"max_position_embeddings", e.max_position_embeddings},
      {"model_type", "electra"},
      {"num_attention_heads", e.num_heads},
      {"num_hidden_layers", e.num_layers},
      {"pad_token_id", pad_token_id},
      {"position_embedding_type", "absolute"},
      // ElectraConfig's defaults for the sequence-summary head used by fine-tuning classes.
      {"summary_activation", "gelu"},
      {"summary_last_dropout", 0.1},
      {"summary_type", "first"},
      {"summary_use_proj", true},
      {"torch_dtype", "float32"},
      {"type_vocab_size", e.type_vocab_size},
      {"use_cache", true},
      {"vocab_size", e.vocab_size},
  };
  if (model == HfModel::kGenerator) j["tie_word_embeddings"] = true;
  return j;
}

namespace {

template <typename V>
void read_key(const nlohmann::json& j, const std::string& origin, const char* key, V& out) {
  if (!j.contains(key)) return;
  const nlohmann::json& v = j.at(key);
  if (v.is_null()) fail(origin, ": key '", key, "' is null; give its value or leave the key out (the default)");
  if constexpr (std::is_integral_v<V>) {
    if (!v.is_number_integer()) fail(origin, ": key '", key, "' must be an integer, got ", v.dump());
  } else if constexpr (std::is_floating_point_v<V>) {
    if (!v.is_number()) fail(origin, ": key '", key, "' must be a number, got ", v.dump());
  } else {
    if (!v.is_string()) fail(origin, ": key '", key, "' must be a string, got ", v.dump());
  }
  out = v.get<V>();
}

// What `if value:` gives in Python, as transformers reads flags such as is_decoder.
bool python_truth(const nlohmann::json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  return !v.empty();  // an array or object
}

}  // namespace

EncoderConfig encoder_from_hf_config(const nlohmann::json& j, const std::string& origin, HfModel model) {
  if (!j.is_object()) fail(origin, ": not a JSON object");
  std::string text = "electra";
  read_key(j, origin, "model_type", text);
  if (text != "electra") fail(origin, ": key 'model_type' is '", text, "', expected 'electra'");
  text = "gelu";
  read_key(j, origin, "hidden_act", text);
  if (text != "gelu") {
    fail(origin, ": key 'hidden_act' is '", text, "'; only 'gelu' (exact, erf form) is supported");
  }
  if (j.contains("position_embedding_type") && j.at("position_embedding_type").is_null()) {
    fail(origin,
         ": key 'position_embedding_type' is null, which transformers reads as no position embeddings; "
         "only 'absolute' is supported");
  }
  text = "absolute";
  read_key(j, origin, "position_embedding_type", text);
  if (text != "absolute") {
    fail(origin, ": key 'position_embedding_type' is '", text, "'; only 'absolute' is supported");
  }
  // transformers gives a decoder causal attention (and cross-attention layers): not the ELECTRA encoder.
  for (const char* key : {"is_decoder", "add_cross_attention"}) {
    if (!j.contains(key) || !python_truth(j.at(key))) continue;
    fail(origin, ": key '", key, "' is ", j.at(key).dump(),
         "; only an encoder (bidirectional attention, no cross-attention) is supported");
  }
  // Only the generator has an LM head; transformers unties it for a false value (null, false, 0).
  if (model == HfModel::kGenerator && j.contains("tie_word_embeddings") && !python_truth(j.at("tie_word_embeddings"))) {
    fail(origin, ": key 'tie_word_embeddings' is ", j.at("tie_word_embeddings").dump(),
         "; the generator's LM head must be tied to the word embeddings");
  }
  // Hugging Face ElectraConfig defaults for absent keys.
  EncoderConfig e;
  e.vocab_size = 30522;
  e.embedding_size = 128;
  e.hidden_size = 256;
  e.num_layers = 12;
  e.num_heads = 4;
  e.intermediate_size = 1024;
  e.max_position_embeddings = 512;
  e.type_vocab_size = 2;
  e.hidden_dropout = 0.1f;
  e.attention_dropout = 0.1f;
  e.initializer_range = 0.02f;
  e.layer_norm_eps = 1e-12f;
  e.hidden_act = Activation::kGelu;
  read_key(j, origin, "vocab_size", e.vocab_size);
  read_key(j, origin, "embedding_size", e.embedding_size);
  read_key(j, origin, "hidden_size", e.hidden_size);
  read_key(j, origin, "num_hidden_layers", e.num_layers);
  read_key(j, origin, "num_attention_heads", e.num_heads);
  read_key(j, origin, "intermediate_size", e.intermediate_size);
  read_key(j, origin, "max_position_embeddings", e.max_position_embeddings);
  read_key(j, origin, "type_vocab_size", e.type_vocab_size);
  read_key(j, origin, "hidden_dropout_prob", e.hidden_dropout);
  read_key(j, origin, "attention_probs_dropout_prob", e.attention_dropout);
  read_key(j, origin, "initializer_range", e.initializer_range);
  read_key(j, origin, "layer_norm_eps", e.layer_norm_eps);
  auto positive = [&](int v, const char* key) {
    if (v <= 0) fail(origin, ": key '", key, "' must be positive, got ", v);
  };
  positive(e.vocab_size, "vocab_size");
  positive(e.embedding_size, "embedding_size");
  positive(e.hidden_size, "hidden_size");
  positive(e.num_layers, "num_hidden_layers");
  positive(e.num_heads, "num_attention_heads");
  positive(e.intermediate_size, "intermediate_size");
  positive(e.max_position_embeddings, "max_position_embeddings");
  positive(e.type_vocab_size, "type_vocab_size");
  if (e.hidden_size % e.num_heads != 0) {
    fail(origin, ": key 'hidden_size' (", e.hidden_size, ") is not divisible by 'num_attention_heads' (", e.num_heads,
         ")");
  }
  return e;
}

namespace {

// strip_accents as tokenizer_config.json and tokenizer.json both write it. null: follows lowercase, as ours
// does by default; the same value in both files, else BertTokenizerFast rebuilds the normalizer on load.
nlohmann::json hf_strip_accents(const text::TokenizerOptions& options) {
  if (options.strips_accents() == options.lower_case) return nullptr;
  return options.strips_accents();
}

// tokenizer.json's normalizer. BERT's, as BertTokenizerFast builds it, when accents are stripped (NFD then
// dropping marks gives what our NFC first gives). Text that keeps its accents is composed first (NFC), as
// ours and the slow BertTokenizer do: decomposed accents would otherwise make other words. transformers then
// keeps the Sequence as written, so its do_lower_case/strip_accents overrides do not reach it (it rebuilds
// only a bare BertNormalizer). Unassigned code points (Cn) stay as BertNormalizer has them: a Replace of
// \p{Cn} would use the regex engine's older Unicode tables and delete characters new in Unicode 15.
nlohmann::ordered_json hf_normalizer(const text::TokenizerOptions& options) {
  nlohmann::ordered_json bert = {{"type", "BertNormalizer"},
                                 {"clean_text", true},
                                 {"handle_chinese_chars", options.tokenize_chinese_chars},
                                 {"strip_accents", hf_strip_accents(options)},
                                 {"lowercase", options.lower_case}};
  if (options.strips_accents()) return bert;
  return {{"type", "Sequence"}, {"normalizers", nlohmann::ordered_json::array({{{"type", "NFC"}}, bert})}};
}

}  // namespace

nlohmann::json hf_tokenizer_config(const text::TokenizerOptions& options, int model_max_length) {
  const nlohmann::json strip = hf_strip_accents(options);
  return {
      {"clean_up_tokenization_spaces", true},
      {"cls_token", std::string(text::kClsToken)},
      {"do_basic_tokenize", true},
      {"do_lower_case", options.lower_case},
      {"mask_token", std::string(text::kMaskToken)},
      {"model_max_length", model_max_length},
      {"never_split", nullptr},
      {"pad_token", std::string(text::kPadToken)},
      {"sep_token", std::string(text::kSepToken)},
      {"strip_accents", strip},
      {"tokenize_chinese_chars", options.tokenize_chinese_chars},
      {"tokenizer_class", "ElectraTokenizer"},
      {"unk_token", std::string(text::kUnkToken)},
  };
}

nlohmann::json hf_special_tokens_map() {
  return {
      {"cls_token", std::string(text::kClsToken)}, {"mask_token", std::string(text::kMaskToken)},
      {"pad_token", std::string(text::kPadToken)}, {"sep_token", std::string(text::kSepToken)},
      {"unk_token", std::string(text::kUnkToken)},
  };
}

nlohmann::ordered_json hf_tokenizer_json(const text::TokenizerOptions& options, const text::Vocab& vocab) {
  using ordered = nlohmann::ordered_json;
  ordered added_tokens = ordered::array();
  for (std::string_view token :
       {text::kPadToken, text::kUnkToken, text::kClsToken, text::kSepToken, text::kMaskToken}) {
    // normalized: false matches the literal token in the raw text, as the Scorer does.
    added_tokens.push_back(ordered{{"id", vocab.id(token)},
                                   {"content", std::string(token)},
                                   {"single_word", false},
                                   {"lstrip", false},
                                   {"rstrip", false},
                                   {"normalized", false},
                                   {"special", true}});
  }
  auto special = [](std::string_view token, int type_id) {
    return ordered{{"SpecialToken", ordered{{"id", std::string(token)}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* which, int type_id) {
    return ordered{{"Sequence", ordered{{"id", which}, {"type_id", type_id}}}};
  };
  auto template_token = [&](std::string_view token) {
    return ordered{{"id", std::string(token)}, {"ids", {vocab.id(token)}}, {"tokens", {std::string(token)}}};
  };
  ordered post_processor = {
      {"type", "TemplateProcessing"},
      {"single", {special(text::kClsToken, 0), sequence("A", 0), special(text::kSepToken, 0)}},
      {"pair",
       {special(text::kClsToken, 0), sequence("A", 0), special(text::kSepToken, 0), sequence("B", 1),
        special(text::kSepToken, 1)}},
      {"special_tokens",
       {{std::string(text::kClsToken), template_token(text::kClsToken)},
        {std::string(text::kSepToken), template_token(text::kSepToken)}}},
  };
  ordered vocab_ids = ordered::object();
  for (size_t id = 0; id < vocab.tokens().size(); ++id) vocab_ids[vocab.tokens()[id]] = id;
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added_tokens)},
      {"normalizer", hf_normalizer(options)},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor", std::move(post_processor)},
      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model",
       {{"type", "WordPiece"},
        {"unk_token", std::string(text::kUnkToken)},
        {"continuing_subword_prefix", "##"},
        {"max_input_chars_per_word", options.max_input_chars_per_word},
        {"vocab", std::move(vocab_ids)}}},
  };
}

text::TokenizerOptions tokenizer_options_from_hf(const nlohmann::json& j, const std::string& origin) {
  text::TokenizerOptions options;
  if (!j.is_object()) fail(origin, ": not a JSON object");
  if (j.contains("do_lower_case")) {
    if (!j.at("do_lower_case").is_boolean()) fail(origin, ": key 'do_lower_case' must be true or false");
    options.lower_case = j.at("do_lower_case").get<bool>();
  }
  if (j.contains("strip_accents") && !j.at("strip_accents").is_null()) {
    if (!j.at("strip_accents").is_boolean()) fail(origin, ": key 'strip_accents' must be true, false or null");
    options.strip_accents = j.at("strip_accents").get<bool>();
  }
  if (j.contains("tokenize_chinese_chars")) {
    if (!j.at("tokenize_chinese_chars").is_boolean()) fail(origin, ": key 'tokenize_chinese_chars' must be a bool");
    options.tokenize_chinese_chars = j.at("tokenize_chinese_chars").get<bool>();
  }
  return options;
}

void read_word_limit_from_hf_tokenizer_json(const nlohmann::json& j, const std::string& origin,
                                            text::TokenizerOptions& options) {
  if (!j.is_object() || !j.contains("model") || !j.at("model").is_object()) return;
  const nlohmann::json& model = j.at("model");
  if (!model.contains("max_input_chars_per_word")) return;
  const nlohmann::json& limit = model.at("max_input_chars_per_word");
  if (!limit.is_number_unsigned() || limit.get<uint64_t>() == 0 || limit.get<uint64_t>() > (uint64_t{1} << 31)) {
    fail(origin, ": key 'model.max_input_chars_per_word' must be a positive integer, got ", limit.dump());
  }
  options.max_input_chars_per_word = static_cast<uint32_t>(limit.get<uint64_t>());
}

}  // namespace electra::interop
