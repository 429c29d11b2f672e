#include "lib/interop/hf_export.h"

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "lib/interop/hf_format.h"
#include "lib/interop/safetensors.h"
#include "lib/model/parameter_layout.h"

namespace electra::interop {

namespace fs = std::filesystem;

void check_hf_export(const PretrainerBundle& model, const fs::path& out_dir, const ExportOptions& options) {
  if (fs::exists(out_dir)) {
    if (!fs::is_directory(out_dir)) fail("output ", out_dir.string(), " exists and is not a directory");
    if (!fs::is_empty(out_dir) && !options.force) {
      fail("output directory ", out_dir.string(), " is not empty; pass --force to write into it");
    }
  }
  const PretrainerLayout layout = build_pretrainer_layout(model.config);
  if (model.params.size() != layout.layout.total_size()) {
    fail("export: ", model.source, " has ", model.params.size(), " parameters, its config's layout needs ",
         layout.layout.total_size());
  }
  if (static_cast<int64_t>(model.vocab.size()) != model.config.vocab_size) {
    fail("export: vocabulary ", model.vocab.origin(), " has ", model.vocab.size(), " tokens, the model ",
         model.config.vocab_size);
  }
  // The special tokens the tokenizer files name must exist (each lookup fails naming the vocab file).
  const int pad_id = model.vocab.pad_id();
  model.vocab.unk_id();
  model.vocab.cls_id();
  model.vocab.sep_id();
  model.vocab.mask_id();
  for (HfModel which : {HfModel::kDiscriminator, HfModel::kGenerator}) hf_model_config(model.config, which, pad_id);
}

std::vector<fs::path> export_hf(const PretrainerBundle& model, const fs::path& out_dir, const ExportOptions& options) {
  // Everything that can fail on the inputs is checked before the first file is written.
  check_hf_export(model, out_dir, options);
  const PretrainerLayout layout = build_pretrainer_layout(model.config);
  const int pad_id = model.vocab.pad_id();
  const nlohmann::json configs[2] = {hf_model_config(model.config, HfModel::kDiscriminator, pad_id),
                                     hf_model_config(model.config, HfModel::kGenerator, pad_id)};

  std::string vocab_text;
  for (const std::string& token : model.vocab.tokens()) {
    if (token.find_first_of("\r\n") != std::string::npos) fail("export: a vocabulary token contains a line break");
    vocab_text += token;
    vocab_text += '\n';
  }
  const std::string tokenizer_config =
      hf_tokenizer_config(model.tokenizer, model.config.discriminator.max_position_embeddings).dump(2) + "\n";
  const std::string special_tokens = hf_special_tokens_map().dump(2) + "\n";
  std::string tokenizer_json;
  try {
    tokenizer_json = hf_tokenizer_json(model.tokenizer, model.vocab).dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {  // a token that is not valid UTF-8
    fail("export: cannot write tokenizer.json for vocabulary ", model.vocab.origin(), ": ", e.what());
  }

  std::vector<fs::path> written;
  for (HfModel which : {HfModel::kDiscriminator, HfModel::kGenerator}) {
    const fs::path dir = out_dir / hf_subdir(which);
    fs::create_directories(dir);
    std::vector<SafetensorsTensorRef> tensors;
    for (const HfTensor& t : hf_tensors(layout.layout, which)) {
      tensors.push_back(
          {t.hf_name, t.slice->shape, std::span<const float>(model.params.data() + t.slice->offset, t.slice->size)});
    }
    write_safetensors(dir / kHfWeightsFile, std::move(tensors));
    written.push_back(dir / kHfWeightsFile);
    const std::pair<const char*, std::string> files[] = {
        {"config.json", configs[which == HfModel::kDiscriminator ? 0 : 1].dump(2) + "\n"},
        {"vocab.txt", vocab_text},
        {"tokenizer_config.json", tokenizer_config},
        {"special_tokens_map.json", special_tokens},
        {"tokenizer.json", tokenizer_json},
    };
    for (const auto& [name, contents] : files) {
      write_file_atomically(dir / name, contents);
      written.push_back(dir / name);
    }
  }
  return written;
}

}  // namespace electra::interop
