// Export to Hugging Face directories (what electra-export does):
//   OUT/discriminator/  ElectraForPreTraining      model.safetensors config.json vocab.txt
//   OUT/generator/      ElectraForMaskedLM         tokenizer_config.json special_tokens_map.json tokenizer.json
// model.safetensors holds float32 tensors under the state-dict names of hf_format.h, sorted, so the same
// model always gives the same bytes. Every file is written atomically (temporary name, fsync, rename), and
// both directories are written under OUT/.electra-export-staging/ before they replace an earlier export's.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/interop/model_source.h"

namespace electra::interop {

// An export refused before anything was written (electra-export exits 2): check_hf_export's failures, and an
// output directory another export is writing.
class ExportRefused : public Error {
 public:
  using Error::Error;
};

// The lock export_hf holds on its output directory while it writes (lib/core/dir_lock.h), removed after.
inline constexpr const char* kExportLockName = ".electra-export.lock";

struct ExportOptions {
  bool force = false;  // write into a non-empty output directory (replacing our files there)
};

// The checks of the inputs export_hf makes before it writes anything: `out_dir` is not a non-empty
// directory (unless force), the parameters fit the config's layout, the vocabulary has the model's size and
// every special token, the model can be expressed as ElectraConfig (hf_model_config), and every token can
// be written (no line break; valid UTF-8 for tokenizer.json). Fails (ExportRefused) naming what is wrong;
// the export lock's file does not count as content.
void check_hf_export(const PretrainerBundle& model, const std::filesystem::path& out_dir,
                     const ExportOptions& options = {});

// Writes the two directories under `out_dir` (created when missing), holding kExportLockName there: a second
// export into the same directory meanwhile is refused (ExportRefused, naming the holder), since the two would
// share the staging directory. Fails before writing anything when check_hf_export fails. A failure while
// writing leaves an earlier export in `out_dir` as it was.
// Returns the files written (their final paths).
std::vector<std::filesystem::path> export_hf(const PretrainerBundle& model, const std::filesystem::path& out_dir,
                                             const ExportOptions& options = {});

}  // namespace electra::interop
