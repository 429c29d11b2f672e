// Where a trained pretrainer comes from: a training checkpoint (a run directory's newest complete one, or
// a file), or a Hugging Face export directory (DIR/discriminator + DIR/generator, as electra-export
// writes them). Either way the result is the same bundle: the model config, the flat parameters in our
// layout, the vocabulary and the tokenizer settings.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "data_pipeline/tokenizer/tokenizer_options.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/model/config.h"

namespace electra::interop {

struct PretrainerBundle {
  PretrainerConfig config;
  std::vector<float> params;         // build_pretrainer_layout(config) order, float32
  text::Vocab vocab;                 // vocab.size() == config.vocab_size
  text::TokenizerOptions tokenizer;  // lower_case (and strip_accents) the data was made with
  // True when `tokenizer` was read from a record (the checkpoint's state, its training data's manifest.json, a
  // Hugging Face tokenizer_config.json); false when it is BERT's uncased default, assumed.
  bool tokenizer_recorded = false;
  std::string source;         // what it was loaded from, for messages
  bool has_generator = true;  // false: a lone Hugging Face discriminator (load_scoring_bundle)
};

// RUN_DIR (a directory with checkpoints/): its newest complete checkpoint (CheckpointManager::
// latest_complete); a file: itself. Fails naming the path when there is none.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& run_dir_or_file);

// Loads a checkpoint (RUN_DIR or file). The model config is the checkpoint's `model` section. The
// vocabulary is `vocab_path` when non-empty, else the run config's data.vocab, else data.dir/vocab.txt;
// lower_case comes from the checkpoint's record, else data.dir/manifest.json (tokenizer.lower_case) when it
// exists, else true (tokenizer_recorded false).
// Fails naming the file when the vocabulary cannot be found, its size differs from model.vocab_size, or
// the manifest's vocab_hash says the shards were made with another vocabulary.
PretrainerBundle load_checkpoint_bundle(const std::filesystem::path& run_dir_or_file,
                                        const std::string& vocab_path = "");

// True when `dir` has discriminator/ and generator/ subdirectories (an electra-export output).
bool is_hf_export_dir(const std::filesystem::path& dir);

// The electra-export directory `path` names: itself, or the parent of the discriminator/ or generator/
// it names (the half Hugging Face loads is what users point at; the log says so). Empty when neither.
std::filesystem::path export_dir_of(const std::filesystem::path& path);

// An export directory or one of its halves (export_dir_of; load_hf_pretrainer on DIR/discriminator and
// DIR/generator, vocabulary from there unless `vocab_path` is given), else a run directory or checkpoint
// file. A lone Hugging Face model directory (config.json, no export around it) is refused by name.
PretrainerBundle load_pretrainer_bundle(const std::filesystem::path& path, const std::string& vocab_path = "");

// electra-score's --model: what load_pretrainer_bundle takes, or a lone Hugging Face discriminator directory
// (load_hf_discriminator: has_generator false, so no --fill-mask).
PretrainerBundle load_scoring_bundle(const std::filesystem::path& path, const std::string& vocab_path = "");

}  // namespace electra::interop
