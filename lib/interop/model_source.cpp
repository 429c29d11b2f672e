#include "lib/interop/model_source.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/interop/hf_import.h"
#include "lib/model/parameter_layout.h"
#include "lib/train/checkpoint.h"
#include "lib/train/checkpoint_manager.h"

namespace electra::interop {

namespace fs = std::filesystem;

namespace {

// A string value at a dotted path of the run config, "" when absent or not a string.
std::string config_string(const nlohmann::json& config, const char* section, const char* key) {
  if (!config.contains(section) || !config.at(section).is_object()) return "";
  const nlohmann::json& s = config.at(section);
  return s.contains(key) && s.at(key).is_string() ? s.at(key).get<std::string>() : "";
}

// The export directory of which `path` is the discriminator/ or generator/ (named in *half_name), else empty.
fs::path export_dir_around(const fs::path& path, std::string* half_name = nullptr) {
  fs::path half = path.lexically_normal();
  if (!half.has_filename()) half = half.parent_path();  // "export/discriminator/"
  const fs::path parent = half.has_parent_path() ? half.parent_path() : fs::path(".");
  const bool named_as_half = half.filename() == "discriminator" || half.filename() == "generator";
  if (half_name != nullptr) *half_name = half.filename().string();
  return named_as_half && is_hf_export_dir(parent) ? parent : fs::path();
}

// A directory with a Hugging Face config.json that is neither a run directory nor part of an export.
bool is_lone_hf_model_dir(const fs::path& path) {
  return fs::is_directory(path) && fs::exists(path / "config.json") && !fs::exists(path / "checkpoints") &&
         !is_hf_export_dir(path) && export_dir_around(path).empty();
}

// The vocabulary: `vocab_path` when given, else the Hugging Face directory's; it must fit the model.
text::Vocab hf_vocab(const fs::path& dir, const std::optional<text::Vocab>& own, const std::string& vocab_path,
                     int64_t vocab_size) {
  text::Vocab vocab;
  if (!vocab_path.empty()) {
    vocab = text::Vocab::load(vocab_path);
    // The model's own vocab.txt says what its ids mean; another file would relabel them.
    if (own && vocab.hash() != own->hash()) {
      fail("vocabulary ", vocab.origin(), " is not ", own->origin(), ", the one ", dir.string(),
           " was made with (vocab_hash ", vocab.hash(), " against ", own->hash(),
           "): token ids would mean different words");
    }
  } else if (own) {
    vocab = *own;
  } else {
    fail(dir.string(), " has no vocab.txt; pass --vocab vocab.txt");
  }
  if (static_cast<int64_t>(vocab.size()) != vocab_size) {
    fail("vocabulary ", vocab.origin(), " has ", vocab.size(), " tokens, but ", dir.string(), " has vocab_size ",
         vocab_size);
  }
  return vocab;
}

// Parameters are used as the file holds them: a NaN or infinity (a damaged or edited file whose checksum, if
// any, still fits) made every score NaN with exit 0. Returns the bundle, or fails naming the tensor.
PretrainerBundle checked_finite(PretrainerBundle bundle) {
  const PretrainerLayout layout = build_pretrainer_layout(bundle.config);
  for (const ParameterSlice& tensor : layout.layout.slices()) {
    for (size_t i = 0; i < tensor.size; ++i) {
      const float value = bundle.params[tensor.offset + i];
      if (!std::isfinite(value))
        fail(bundle.source, ": tensor ", tensor.name, " holds ", value, " at element ", i, ": the file is damaged");
    }
  }
  return bundle;
}

}  // namespace

fs::path resolve_checkpoint(const fs::path& path) {
  if (fs::is_directory(path)) {
    const fs::path dir = path / "checkpoints";
    if (!fs::is_directory(dir)) {
      fail(path.string(), " is a directory without checkpoints/ (expected a run directory or a checkpoint file)");
    }
    const auto latest = train::CheckpointManager(dir).latest_complete();
    if (!latest) fail("run directory ", path.string(), " has no complete checkpoint in ", dir.string());
    return latest->path;
  }
  if (!fs::exists(path)) fail("checkpoint ", path.string(), " does not exist");
  return path;
}

PretrainerBundle load_checkpoint_bundle(const fs::path& run_dir_or_file, const std::string& vocab_path) {
  const fs::path path = resolve_checkpoint(run_dir_or_file);
  const train::CheckpointFile file = train::CheckpointFile::open(path);
  const nlohmann::json& config = file.config();
  if (!config.is_object() || !config.contains("model")) {
    fail("checkpoint ", path.string(), " has no model section in its config");
  }
  PretrainerBundle bundle;
  try {
    bundle.config = pretrainer_config_from_json(config.at("model"));
  } catch (const Error& e) {
    fail("checkpoint ", path.string(), ": ", e.what());
  }
  const PretrainerLayout layout = build_pretrainer_layout(bundle.config);
  bundle.params.assign(layout.layout.total_size(), 0.0f);
  file.read_into(train::Section::kParams, layout.layout.tensor_slices(), bundle.params);

  // The vocabulary the run was trained with.
  const std::string data_dir = config_string(config, "data", "dir");
  fs::path vocab = vocab_path;
  if (vocab.empty()) vocab = config_string(config, "data", "vocab");
  if (vocab.empty() && !data_dir.empty()) vocab = fs::path(data_dir) / "vocab.txt";
  if (vocab.empty()) {
    fail("checkpoint ", path.string(), ": its config names no data directory or vocabulary; pass --vocab vocab.txt");
  }
  if (!fs::exists(vocab)) {
    fail("vocabulary ", vocab.string(), " (from ", vocab_path.empty() ? "the checkpoint's config" : "--vocab",
         ") does not exist; pass --vocab vocab.txt");
  }
  bundle.vocab = text::Vocab::load(vocab.string());
  if (static_cast<int64_t>(bundle.vocab.size()) != bundle.config.vocab_size) {
    fail("vocabulary ", vocab.string(), " has ", bundle.vocab.size(), " tokens, but checkpoint ", path.string(),
         " has model.vocab_size ", bundle.config.vocab_size);
  }
  // electra-train records the vocabulary's hash and the lower-casing in the checkpoint's state (older
  // checkpoints do not: then the training manifest, when it is still there, is all there is to check).
  const nlohmann::json& state = file.state();
  if (state.contains("vocab")) {
    const nlohmann::json& recorded = state.at("vocab");
    if (!recorded.is_object() || !recorded.contains("hash") || !recorded.at("hash").is_number_unsigned()) {
      fail("checkpoint ", path.string(), ": state vocab.hash is missing or not an unsigned integer");
    }
    const uint64_t hash = recorded.at("hash").get<uint64_t>();
    if (hash != bundle.vocab.hash()) {
      fail("vocabulary ", vocab.string(), vocab_path.empty() ? " (named by the checkpoint's config)" : "",
           " is not the one checkpoint ", path.string(), " was trained with (vocab_hash ", bundle.vocab.hash(),
           " against the recorded ", hash, "): token ids would mean different words");
    }
  }
  std::optional<bool> recorded_lower_case;
  if (state.contains("tokenizer") && state.at("tokenizer").is_object() &&
      state.at("tokenizer").contains("lower_case")) {
    // null: trained on shards without a manifest (NVIDIA BERT shards), so not recorded.
    const nlohmann::json& lower = state.at("tokenizer").at("lower_case");
    if (!lower.is_boolean() && !lower.is_null())
      fail("checkpoint ", path.string(), ": state tokenizer.lower_case is not a boolean or null");
    if (lower.is_boolean()) recorded_lower_case = lower.get<bool>();
  }

  // Lower-casing as recorded, else as the shards were made (electra-preprocess's manifest), else BERT's
  // uncased default.
  bundle.tokenizer.lower_case = recorded_lower_case.value_or(true);
  bundle.tokenizer_recorded = recorded_lower_case.has_value();
  const fs::path manifest = data_dir.empty() ? fs::path() : fs::path(data_dir) / "manifest.json";
  if (!manifest.empty() && fs::exists(manifest)) {
    std::ifstream in(manifest);
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(in);
      if (!recorded_lower_case) bundle.tokenizer.lower_case = m.at("tokenizer").at("lower_case").get<bool>();
      bundle.tokenizer_recorded = true;
    } catch (const nlohmann::json::exception& e) {
      fail("manifest ", manifest.string(), ": cannot read tokenizer.lower_case: ", e.what());
    }
    // The shards record which vocabulary made them: a different file would relabel every id.
    if (m.contains("vocab_hash") && m.at("vocab_hash").is_number_unsigned() &&
        m.at("vocab_hash").get<uint64_t>() != bundle.vocab.hash()) {
      fail("vocabulary ", vocab.string(), " is not the one the training data was made with (", manifest.string(),
           " records vocab_hash ", m.at("vocab_hash").get<uint64_t>(), ", the file hashes to ", bundle.vocab.hash(),
           ")");
    }
  } else if (!recorded_lower_case) {
    ELECTRA_LOG(info) << "no manifest.json next to the training data: assuming lower_case = true";
  }
  bundle.source = "checkpoint " + path.string() + " (step " + std::to_string(file.step()) + ")";
  return checked_finite(std::move(bundle));
}

bool is_hf_export_dir(const fs::path& dir) {
  return fs::is_directory(dir / "discriminator") && fs::is_directory(dir / "generator");
}

fs::path export_dir_of(const fs::path& path) {
  if (is_hf_export_dir(path)) return path;
  std::string half;
  const fs::path parent = export_dir_around(path, &half);
  if (!parent.empty()) {
    ELECTRA_LOG(info) << path.string() << " is the " << half << " of the export directory " << parent.string()
                      << ": loading both halves from there";
  }
  return parent;
}

PretrainerBundle load_pretrainer_bundle(const fs::path& given, const std::string& vocab_path) {
  const fs::path path = export_dir_of(given);
  if (path.empty()) {
    if (is_lone_hf_model_dir(given))
      fail(given.string(),
           " holds one Hugging Face model (config.json); the generator and the discriminator are "
           "both needed: give an electra-export directory (discriminator/ and generator/), a run directory or a "
           "checkpoint file");
    return load_checkpoint_bundle(given, vocab_path);
  }
  HfPretrainer hf = load_hf_pretrainer(path / "discriminator", path / "generator");
  PretrainerBundle bundle;
  bundle.config = hf.config;
  bundle.params = std::move(hf.params);
  bundle.tokenizer = hf.tokenizer;
  bundle.tokenizer_recorded = hf.tokenizer_recorded;
  bundle.vocab = hf_vocab(path, hf.vocab, vocab_path, bundle.config.vocab_size);
  bundle.source = "Hugging Face export " + path.string();
  return checked_finite(std::move(bundle));
}

PretrainerBundle load_scoring_bundle(const fs::path& given, const std::string& vocab_path) {
  if (!is_lone_hf_model_dir(given)) return load_pretrainer_bundle(given, vocab_path);
  HfPretrainer hf = load_hf_discriminator(given);
  PretrainerBundle bundle;
  bundle.config = hf.config;
  bundle.params = std::move(hf.params);
  bundle.tokenizer = hf.tokenizer;
  bundle.tokenizer_recorded = hf.tokenizer_recorded;
  bundle.vocab = hf_vocab(given, hf.vocab, vocab_path, bundle.config.vocab_size);
  bundle.has_generator = false;
  bundle.source = "Hugging Face discriminator " + given.string();
  return checked_finite(std::move(bundle));
}

}  // namespace electra::interop
