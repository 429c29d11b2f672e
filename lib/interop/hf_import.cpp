#include "lib/interop/hf_import.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/interop/hf_format.h"
#include "lib/interop/model_source.h"
#include "lib/interop/safetensors.h"

namespace electra::interop {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& path) {
  if (fs::is_directory(path)) fail(path.string(), ": is a directory");  // the read would not name it
  std::ifstream in(path);
  if (!in) fail(path.string(), ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

// One Hugging Face model directory: its config and its weights (one safetensors file or several shards).
struct HfDir {
  fs::path dir;
  std::string config_path;
  nlohmann::json config;
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const SafetensorsFile*> tensors;  // name -> file holding it
  std::set<std::string> used;

  explicit HfDir(const fs::path& d) : dir(d), config_path((d / "config.json").string()) {
    if (!fs::is_directory(dir)) fail("Hugging Face model directory ", dir.string(), " does not exist");
    config = read_json(dir / "config.json");
    std::vector<fs::path> weight_files;
    if (fs::exists(dir / kHfWeightsFile)) {
      weight_files.push_back(dir / kHfWeightsFile);
    } else if (fs::exists(dir / kHfWeightsIndexFile)) {
      const fs::path index_path = dir / kHfWeightsIndexFile;
      const nlohmann::json index = read_json(index_path);
      if (!index.contains("weight_map") || !index.at("weight_map").is_object()) {
        fail(index_path.string(), ": no weight_map object");
      }
      std::set<std::string> names;
      for (const auto& [tensor, file] : index.at("weight_map").items()) {
        if (!file.is_string()) fail(index_path.string(), ": weight_map entry of '", tensor, "' is not a file name");
        const std::string f = file.get<std::string>();
        if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
          fail(index_path.string(), ": weight_map file '", f, "' must be a file name in the directory");
        }
        names.insert(f);
      }
      for (const std::string& f : names) weight_files.push_back(dir / f);
    } else if (fs::exists(dir / "pytorch_model.bin")) {
      fail(dir.string(),
           ": only pytorch_model.bin found; this reader takes model.safetensors (convert it with "
           "transformers: model.save_pretrained(dir, safe_serialization=True))");
    } else {
      fail(dir.string(), ": no ", kHfWeightsFile, " or ", kHfWeightsIndexFile);
    }
    for (const fs::path& f : weight_files) {
      files.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::load(f)));
      for (const SafetensorsEntry& e : files.back()->entries()) {
        if (!tensors.emplace(e.name, files.back().get()).second) {
          fail(dir.string(), ": tensor '", e.name, "' is stored in more than one shard");
        }
      }
    }
  }

  const SafetensorsFile* file_of(const std::string& name) const {
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : it->second;
  }

  // The tensor's values, checked against the shape our layout gives it.
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& want) {
    const SafetensorsFile* file = file_of(name);
    if (file == nullptr) fail(dir.string(), ": missing tensor '", name, "'");
    const SafetensorsEntry& entry = *file->find(name);
    if (entry.shape != want) {
      fail(file->origin(), ": tensor '", name, "' has shape ", shape_text(entry.shape), ", but ", config_path,
           " implies ", shape_text(want));
    }
    used.insert(name);
    return file->read_floats(name);
  }

  void check_no_unexpected() const {
    for (const auto& [name, file] : tensors) {
      if (!used.count(name) && !is_hf_buffer_name(name)) {
        fail(file->origin(), ": unexpected tensor '", name, "' (not part of the model ", config_path, " describes)");
      }
    }
  }
};

std::optional<text::Vocab> load_vocab_if_present(const fs::path& dir) {
  const fs::path path = dir / "vocab.txt";
  if (!fs::exists(path)) return std::nullopt;
  return text::Vocab::load(path.string());
}

// The tokenizer settings of the first of `dirs` with a tokenizer_config.json (BertTokenizer's defaults when
// none has one: `recorded` is then false), as transformers would tokenize with that directory.
text::TokenizerOptions tokenizer_settings_of(std::initializer_list<fs::path> dirs, bool& recorded) {
  recorded = false;
  text::TokenizerOptions options;
  // transformers' word limit: tokenizer.json's (Google's converted models: 100; our exports: ours, 200),
  // else the slow BertTokenizer's fixed 100, which AutoTokenizer also uses when it converts such a directory.
  constexpr uint32_t kTransformersWordLimit = 100;
  options.max_input_chars_per_word = kTransformersWordLimit;
  for (const fs::path& dir : dirs) {
    const fs::path tc = dir / "tokenizer_config.json";
    if (fs::exists(tc)) {
      options = tokenizer_options_from_hf(read_json(tc), tc.string());
      options.max_input_chars_per_word = kTransformersWordLimit;
      const fs::path tj = dir / "tokenizer.json";
      if (fs::exists(tj)) read_word_limit_from_hf_tokenizer_json(read_json(tj), tj.string(), options);
      recorded = true;
      break;
    }
  }
  return options;
}

// Our config for discriminator `d` and a generator of `g`'s hidden size, layers, heads and FFN width (the
// rest is shared with the discriminator); the settings Hugging Face has no key for come from `base`, else
// our defaults.
PretrainerConfig pretrainer_config_of(const EncoderConfig& d, const EncoderConfig& g, const PretrainerConfig* base) {
  PretrainerConfig c;
  if (base != nullptr) c = *base;
  c.discriminator = d;
  c.generator = d;
  c.generator.hidden_size = g.hidden_size;
  c.generator.num_layers = g.num_layers;
  c.generator.num_heads = g.num_heads;
  c.generator.intermediate_size = g.intermediate_size;
  c.vocab_size = d.vocab_size;
  c.mlm_activation = Activation::kGelu;
  validate(c);
  return c;
}

// The discriminator's tensors (the shared embeddings among them) into `params`, in layout order.
void read_discriminator(HfDir& disc, const ParameterLayout& layout, std::vector<float>& params,
                        std::set<std::string>& loaded) {
  for (const HfTensor& t : hf_tensors(layout, HfModel::kDiscriminator)) {
    const std::vector<float> values = disc.read(t.hf_name, t.slice->shape);
    std::copy(values.begin(), values.end(), params.begin() + t.slice->offset);
    loaded.insert(t.slice->name);
  }
}

}  // namespace

HfPretrainer load_hf_pretrainer(const fs::path& discriminator_dir, const fs::path& generator_dir,
                                const PretrainerConfig* base) {
  HfDir disc(discriminator_dir), gen(generator_dir);
  const EncoderConfig d = encoder_from_hf_config(disc.config, disc.config_path, HfModel::kDiscriminator);
  const EncoderConfig g = encoder_from_hf_config(gen.config, gen.config_path, HfModel::kGenerator);
  // One set of embeddings: everything it depends on must agree.
  auto same = [&](const char* key, double dv, double gv) {
    if (dv != gv) {
      fail(gen.config_path, ": key '", key, "' is ", gv, " but ", disc.config_path, " has ", dv,
           " (generator and discriminator share the embeddings)");
    }
  };
  same("vocab_size", d.vocab_size, g.vocab_size);
  same("embedding_size", d.embedding_size, g.embedding_size);
  same("max_position_embeddings", d.max_position_embeddings, g.max_position_embeddings);
  same("type_vocab_size", d.type_vocab_size, g.type_vocab_size);
  same("layer_norm_eps", d.layer_norm_eps, g.layer_norm_eps);
  if (g.hidden_dropout != d.hidden_dropout || g.attention_dropout != d.attention_dropout ||
      g.initializer_range != d.initializer_range) {
    ELECTRA_LOG(warning) << gen.config_path << ": dropout rates / initializer_range differ from " << disc.config_path
                         << "; the discriminator's are used for both networks";
  }

  HfPretrainer out;
  PretrainerConfig& c = out.config;
  c = pretrainer_config_of(d, g, base);
  const PretrainerLayout layout = build_pretrainer_layout(c);
  out.params.assign(layout.layout.total_size(), 0.0f);
  std::set<std::string> loaded;
  read_discriminator(disc, layout.layout, out.params, loaded);
  for (const HfTensor& t : hf_tensors(layout.layout, HfModel::kGenerator)) {
    if (t.slice->network != Network::kShared) {
      const std::vector<float> values = gen.read(t.hf_name, t.slice->shape);
      std::copy(values.begin(), values.end(), out.params.begin() + t.slice->offset);
      loaded.insert(t.slice->name);
      continue;
    }
    // A second copy of a shared tensor: the discriminator's is kept. save_pretrained drops the tied LM
    // head weight, so it may be absent.
    if (t.hf_name == kHfTiedLmHead && gen.file_of(t.hf_name) == nullptr) continue;
    const std::vector<float> values = gen.read(t.hf_name, t.slice->shape);
    double diff = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      const double delta = std::abs(static_cast<double>(values[i]) - out.params[t.slice->offset + i]);
      diff = std::max(diff, std::isnan(delta) ? INFINITY : delta);
    }
    if (diff > 0) {
      ELECTRA_LOG(warning) << generator_dir.string() << ": shared tensor '" << t.hf_name
                           << "' differs from the discriminator's (max |diff| " << diff
                           << "); the discriminator's copy is used";
    }
    out.shared_embeddings_max_abs_diff = std::max(out.shared_embeddings_max_abs_diff, diff);
  }
  disc.check_no_unexpected();
  gen.check_no_unexpected();
  for (const ParameterSlice& v : layout.layout.slices()) {
    if (!loaded.count(v.name)) out.not_loaded.push_back(v.name);
  }

  const std::optional<text::Vocab> dv = load_vocab_if_present(discriminator_dir);
  const std::optional<text::Vocab> gv = load_vocab_if_present(generator_dir);
  if (dv && gv && dv->tokens() != gv->tokens()) {
    fail(gv->origin(), " differs from ", dv->origin(), ": both networks must use one vocabulary");
  }
  out.vocab = dv ? dv : gv;
  if (out.vocab && static_cast<int64_t>(out.vocab->size()) != c.vocab_size) {
    fail(out.vocab->origin(), " has ", out.vocab->size(), " tokens, but ", disc.config_path, " has vocab_size ",
         c.vocab_size);
  }
  out.tokenizer = tokenizer_settings_of({discriminator_dir, generator_dir}, out.tokenizer_recorded);
  return out;
}

HfPretrainer load_hf_discriminator(const fs::path& dir) {
  HfDir disc(dir);
  if (disc.file_of(kHfDiscriminatorHead) == nullptr) {
    const std::string what = disc.file_of(kHfGeneratorHead) != nullptr
                                 ? " is an ELECTRA generator (ElectraForMaskedLM)"
                                 : std::string(" has no discriminator head (no tensor '") + kHfDiscriminatorHead + "')";
    fail(dir.string(), what,
         ": scoring tokens needs the discriminator (ElectraForPreTraining); give its directory, or an "
         "electra-export directory (discriminator/ and generator/)");
  }
  const EncoderConfig d = encoder_from_hf_config(disc.config, disc.config_path, HfModel::kDiscriminator);
  EncoderConfig placeholder = d;  // hf_import.h: one layer, one head, 64 units
  placeholder.hidden_size = kPlaceholderGeneratorWidth;
  placeholder.num_layers = 1;
  placeholder.num_heads = 1;
  placeholder.intermediate_size = kPlaceholderGeneratorWidth;
  HfPretrainer out;
  PretrainerConfig& c = out.config;
  c = pretrainer_config_of(d, placeholder, nullptr);
  const PretrainerLayout layout = build_pretrainer_layout(c);
  out.params.assign(layout.layout.total_size(), 0.0f);
  std::set<std::string> loaded;
  read_discriminator(disc, layout.layout, out.params, loaded);
  disc.check_no_unexpected();
  for (const ParameterSlice& v : layout.layout.slices()) {
    if (!loaded.count(v.name)) out.not_loaded.push_back(v.name);
  }
  out.has_generator = false;
  out.vocab = load_vocab_if_present(dir);
  if (out.vocab && static_cast<int64_t>(out.vocab->size()) != c.vocab_size) {
    fail(out.vocab->origin(), " has ", out.vocab->size(), " tokens, but ", disc.config_path, " has vocab_size ",
         c.vocab_size);
  }
  out.tokenizer = tokenizer_settings_of({dir}, out.tokenizer_recorded);
  return out;
}

std::optional<std::string> hf_config_difference(const PretrainerConfig& run, const PretrainerConfig& hf) {
  const nlohmann::json a = to_json(run), b = to_json(hf);
  static const char* const kKeys[] = {"vocab_size",
                                      "embedding_size",
                                      "hidden_size",
                                      "num_layers",
                                      "num_heads",
                                      "intermediate_size",
                                      "max_position_embeddings",
                                      "type_vocab_size",
                                      "layer_norm_eps",
                                      "mlm_activation",
                                      "generator/hidden_size",
                                      "generator/num_layers",
                                      "generator/num_heads",
                                      "generator/intermediate_size"};
  for (const char* key : kKeys) {
    std::string pointer = "/";
    pointer += key;
    const nlohmann::json::json_pointer ptr(pointer);
    if (!a.contains(ptr) || !b.contains(ptr) || a.at(ptr) != b.at(ptr)) {
      std::string dotted = key;
      std::replace(dotted.begin(), dotted.end(), '/', '.');
      // Streamed: GCC 12 reports a false -Wrestrict on chained string '+'.
      std::ostringstream out;
      out << "model." << dotted << ": run " << (a.contains(ptr) ? a.at(ptr).dump() : "<none>") << ", Hugging Face "
          << (b.contains(ptr) ? b.at(ptr).dump() : "<none>");
      return out.str();
    }
  }
  return std::nullopt;
}

std::string init_from_hf(const fs::path& given, const PretrainerConfig& run_config, const text::Vocab& data_vocab,
                         std::optional<bool> data_lower_case, std::vector<float>& params) {
  const fs::path dir = export_dir_of(given);
  if (dir.empty()) {
    fail("--init-from ", given.string(),
         ": expected a directory with discriminator/ and generator/ (electra-export's "
         "layout)");
  }
  HfPretrainer hf = load_hf_pretrainer(dir / "discriminator", dir / "generator", &run_config);
  if (auto diff = hf_config_difference(run_config, hf.config)) {
    fail("--init-from ", dir.string(), ": the run's model config differs from the Hugging Face config: ", *diff);
  }
  if (hf.vocab && hf.vocab->tokens() != data_vocab.tokens()) {
    fail("--init-from ", dir.string(), ": its vocabulary ", hf.vocab->origin(), " (vocab_hash ", hf.vocab->hash(), ", ",
         hf.vocab->size(), " tokens) differs from the training data's ", data_vocab.origin(), " (vocab_hash ",
         data_vocab.hash(), ", ", data_vocab.size(), " tokens)");
  }
  if (hf.tokenizer_recorded && data_lower_case && hf.tokenizer.lower_case != *data_lower_case) {
    fail("--init-from ", dir.string(), ": its tokenizer_config.json has do_lower_case ",
         hf.tokenizer.lower_case ? "true" : "false", ", but the training data was tokenized with lower_case ",
         *data_lower_case ? "true" : "false");
  }
  // What could not be checked, and the settings the run's config decides over the directory's.
  if (!hf.vocab) {
    ELECTRA_LOG(warning) << "--init-from " << dir.string()
                         << ": no vocab.txt in discriminator/ or generator/, so its vocabulary cannot be checked "
                            "against the training data's";
  }
  if (!hf.tokenizer_recorded && data_lower_case) {
    ELECTRA_LOG(warning) << "--init-from " << dir.string()
                         << ": no tokenizer_config.json, so its lower-casing cannot be checked against the training "
                            "data's (lower_case "
                         << (*data_lower_case ? "true" : "false") << "; transformers assumes true)";
  }
  const auto rate_differs = [&](const char* key, const char* hf_key, float run, float from_hf) {
    if (run == from_hf) return;
    ELECTRA_LOG(warning) << "--init-from " << dir.string() << ": its " << hf_key << " is " << json_float(from_hf)
                         << ", the run's model." << key << " " << json_float(run) << ": training uses the run's";
  };
  rate_differs("hidden_dropout", "hidden_dropout_prob", run_config.discriminator.hidden_dropout,
               hf.config.discriminator.hidden_dropout);
  rate_differs("attention_dropout", "attention_probs_dropout_prob", run_config.discriminator.attention_dropout,
               hf.config.discriminator.attention_dropout);
  const PretrainerLayout run_layout = build_pretrainer_layout(run_config);
  const PretrainerLayout hf_layout = build_pretrainer_layout(hf.config);
  if (params.size() != run_layout.layout.total_size()) {
    fail("init_from_hf: parameter buffer has ", params.size(), " values, the layout ", run_layout.layout.total_size());
  }
  const std::set<std::string> skip(hf.not_loaded.begin(), hf.not_loaded.end());
  size_t tensors = 0, values = 0;
  for (const ParameterSlice& v : run_layout.layout.slices()) {
    if (skip.count(v.name)) continue;
    const ParameterSlice& h = hf_layout.layout.find(v.name);
    if (h.shape != v.shape) fail("--init-from ", dir.string(), ": tensor '", v.name, "' has another shape in the run");
    std::copy(hf.params.begin() + h.offset, hf.params.begin() + h.offset + h.size, params.begin() + v.offset);
    ++tensors;
    values += v.size;
  }
  std::ostringstream summary;
  summary << "initialised " << tensors << " tensors (" << values << " values) from " << dir.string();
  if (!hf.not_loaded.empty()) summary << "; " << hf.not_loaded.size() << " keep their initialisation (sentence head)";
  return summary.str();
}

}  // namespace electra::interop
