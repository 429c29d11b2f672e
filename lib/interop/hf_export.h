// Export to Hugging Face directories (what electra-export does):
//   OUT/discriminator/  ElectraForPreTraining      model.safetensors config.json vocab.txt
//   OUT/generator/      ElectraForMaskedLM         tokenizer_config.json special_tokens_map.json tokenizer.json
// model.safetensors holds float32 tensors under the state-dict names of hf_format.h, sorted, so the same
// model always gives the same bytes. Every file is written atomically (temporary name, fsync, rename).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "lib/interop/model_source.h"

namespace electra::interop {

struct ExportOptions {
  bool force = false;  // write into a non-empty output directory (replacing our files there)
};

// Writes the two directories under `out_dir` (created when missing). Fails before writing anything
// when `out_dir` is a non-empty directory and !force, when the vocabulary lacks a special token, or when
// the model cannot be expressed as ElectraConfig (hf_model_config). Returns the files written.
std::vector<std::filesystem::path> export_hf(const PretrainerBundle& model, const std::filesystem::path& out_dir,
                                             const ExportOptions& options = {});

}  // namespace electra::interop
