#include "lib/interop/hf_export.h"

#include "lib/core/atomic_file.h"
#include "lib/core/dir_lock.h"
#include "lib/core/error.h"
#include "lib/interop/hf_format.h"
#include "lib/interop/safetensors.h"
#include "lib/model/parameter_layout.h"

namespace electra::interop {

namespace fs = std::filesystem;

namespace {

// Where a new export is written before it takes the place of the old one (inside out_dir: the same file
// system, so the halves move by rename).
constexpr const char* kStagingDir = ".electra-export-staging";

// The text files of one half, keyed by name.
struct HalfFiles {
  std::vector<std::pair<std::string, std::string>> files;
};

// The text files of both halves (the same but config.json). Fails naming the vocabulary when a token
// cannot be written: a line break in vocab.txt, invalid UTF-8 in tokenizer.json.
std::vector<HalfFiles> text_files(const PretrainerBundle& model) {
  const int pad_id = model.vocab.pad_id();
  std::string vocab_text;
  for (const std::string& token : model.vocab.tokens()) {
    if (token.find_first_of("\r\n") != std::string::npos) {
      fail("export: vocabulary ", model.vocab.origin(), " has a token with a line break");
    }
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
  std::vector<HalfFiles> halves;
  for (HfModel which : {HfModel::kDiscriminator, HfModel::kGenerator}) {
    halves.push_back({{{"config.json", hf_model_config(model.config, which, pad_id).dump(2) + "\n"},
                       {"vocab.txt", vocab_text},
                       {"tokenizer_config.json", tokenizer_config},
                       {"special_tokens_map.json", special_tokens},
                       {"tokenizer.json", tokenizer_json}}});
  }
  return halves;
}

}  // namespace

namespace {

void check_inputs(const PretrainerBundle& model, const fs::path& out_dir, const ExportOptions& options) {
  // "" would be the working directory, unchecked: its discriminator/ and generator/ replaced without --force.
  if (out_dir.empty()) fail("output directory is empty: give the directory to export to");
  // A missing output whose parents cannot hold a directory (a regular file among them) is refused here,
  // before anything is written, not by the first filesystem call below.
  for (fs::path above = out_dir.parent_path(); !above.empty(); above = above.parent_path()) {
    if (fs::exists(above)) {
      if (!fs::is_directory(above)) fail("output ", out_dir.string(), ": ", above.string(), " is not a directory");
      break;
    }
    if (above == above.parent_path()) break;
  }
  if (fs::is_symlink(out_dir) && !fs::exists(out_dir))
    fail("output ", out_dir.string(), " is a symbolic link to nothing (", fs::read_symlink(out_dir).string(), ")");
  if (fs::exists(out_dir)) {
    if (!fs::is_directory(out_dir)) fail("output ", out_dir.string(), " exists and is not a directory");
    bool empty = true;  // the export lock's file does not count
    for (const fs::directory_entry& entry : fs::directory_iterator(out_dir))
      if (entry.path().filename() != kExportLockName) empty = false;
    if (!empty && !options.force)
      fail("output directory ", out_dir.string(), " is not empty; pass --force to write into it");
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
  model.vocab.unk_id();
  model.vocab.cls_id();
  model.vocab.sep_id();
  model.vocab.mask_id();
  text_files(model);  // every text file can be made (ElectraConfig, vocab.txt, tokenizer.json)
}

}  // namespace

void check_hf_export(const PretrainerBundle& model, const fs::path& out_dir, const ExportOptions& options) {
  try {
    check_inputs(model, out_dir, options);
  } catch (const ExportRefused&) {
    throw;
  } catch (const Error& e) {
    throw ExportRefused(e.what());
  }
}

std::vector<fs::path> export_hf(const PretrainerBundle& model, const fs::path& out_dir, const ExportOptions& options) {
  // Everything that can fail on the inputs is checked before the first file is written, and checked again
  // under the lock (another export may have written the directory meanwhile).
  check_hf_export(model, out_dir, options);
  DirectoryLock lock(out_dir, kExportLockName);
  // The lock file goes when this export ends, and so does a directory the lock made for an export refused.
  struct Release {
    DirectoryLock& lock;
    ~Release() {
      if (lock.state() != DirectoryLock::State::kBusy) lock.remove_file();
      if (!lock.made_dir()) return;
      // The directories it made, from the output up to the first one made, each only when empty (as RunLock).
      std::error_code error;
      const fs::path top = lock.first_made();
      for (fs::path dir = fs::absolute(lock.path().parent_path(), error);
           !error && !top.empty() && dir.string().size() >= top.string().size(); dir = dir.parent_path()) {
        if (!fs::remove(dir, error) || error || dir == top) return;
      }
    }
  } release{lock};
  if (lock.state() == DirectoryLock::State::kBusy) {
    throw ExportRefused("output directory " + out_dir.string() + " is being written by another electra-export (" +
                        lock.holder() + "); nothing was written");
  }
  check_hf_export(model, out_dir, options);
  const PretrainerLayout layout = build_pretrainer_layout(model.config);
  const std::vector<HalfFiles> halves = text_files(model);

  // Both halves are written under the staging directory first, so a failure (a full disk) leaves an
  // earlier export whole; then each replaces its old half by a rename. Only a crash between the two renames
  // could leave halves of two exports.
  const fs::path staging = out_dir / kStagingDir;
  fs::remove_all(staging);  // a failed export's leftovers
  fs::create_directories(staging);
  std::vector<fs::path> written;
  const HfModel kHalves[] = {HfModel::kDiscriminator, HfModel::kGenerator};
  try {
    for (size_t h = 0; h < 2; ++h) {
      const fs::path dir = staging / hf_subdir(kHalves[h]);
      fs::create_directories(dir);
      std::vector<SafetensorsTensorRef> tensors;
      for (const HfTensor& t : hf_tensors(layout.layout, kHalves[h])) {
        tensors.push_back(
            {t.hf_name, t.slice->shape, std::span<const float>(model.params.data() + t.slice->offset, t.slice->size)});
      }
      write_safetensors(dir / kHfWeightsFile, std::move(tensors));
      written.push_back(out_dir / hf_subdir(kHalves[h]) / kHfWeightsFile);
      for (const auto& [name, contents] : halves[h].files) {
        write_file_atomically(dir / name, contents);
        written.push_back(out_dir / hf_subdir(kHalves[h]) / name);
      }
    }
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  for (HfModel which : kHalves) {
    const fs::path target = out_dir / hf_subdir(which), old = staging / (std::string("old-") + hf_subdir(which));
    if (fs::exists(target)) fs::rename(target, old);
    fs::rename(staging / hf_subdir(which), target);
  }
  fs::remove_all(staging);
  return written;
}

}  // namespace electra::interop
