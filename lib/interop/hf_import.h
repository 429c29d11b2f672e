// Import of Hugging Face ELECTRA directories (electra-export's output, or Google's released ELECTRA
// checkpoints as converted by Hugging Face: google/electra-*-discriminator + google/electra-*-generator)
// into our flat layout, so electra-train can start from them (--init-from DIR).
//
// Each directory needs config.json and model.safetensors (or a sharded model.safetensors.index.json);
// PyTorch .bin files are not read. Tensors may be F32, F16, BF16 or F64 (converted to float).
//
// Shared embeddings: both files carry electra.embeddings.* (and the generator possibly the tied
// generator_lm_head.weight). They are one tensor in our layout, so the discriminator's copy wins; when the
// generator's differs, a warning is logged and HfPretrainer::shared_embeddings_max_abs_diff says by how
// much. (Released ELECTRA checkpoints come from one TF checkpoint, so the copies agree.)
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data_pipeline/tokenizer/tokenizer_options.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/model/config.h"
#include "lib/model/parameter_layout.h"

namespace electra::interop {

struct HfPretrainer {
  // Structure from the two config.json files; the settings Hugging Face has no key for (num_classes,
  // num_token_predictions, mlm_initializer*, output_type, disallow_correct, temperature, disc_loss_weight)
  // come from `base` (or our defaults).
  PretrainerConfig config;
  std::vector<float> params;                  // build_pretrainer_layout(config) order
  std::vector<std::string> not_loaded;        // layout tensors HF has no place for (the generator's sentence
                                              // head); 0 in params
  std::optional<text::Vocab> vocab;           // discriminator/vocab.txt, else generator/vocab.txt
  text::TokenizerOptions tokenizer;           // from tokenizer_config.json (BertTokenizer defaults when absent)
  bool tokenizer_recorded = false;            // a tokenizer_config.json gave `tokenizer`
  double shared_embeddings_max_abs_diff = 0;  // generator copy vs discriminator copy
  bool has_generator = true;                  // false: load_hf_discriminator's placeholder generator
};

// Reads both directories. Fails naming the file and the tensor or key on: a missing or unexpected
// tensor (HF buffers such as embeddings.position_ids are skipped), a shape that differs from what the
// configs imply, a dtype that is not a float type, configs that disagree on what the embeddings depend
// on (vocab_size, embedding_size, max_position_embeddings, type_vocab_size, layer_norm_eps), configs
// that our model cannot express (encoder_from_hf_config), or two different vocabularies.
HfPretrainer load_hf_pretrainer(const std::filesystem::path& discriminator_dir,
                                const std::filesystem::path& generator_dir, const PretrainerConfig* base = nullptr);

// A lone discriminator directory (ElectraForPreTraining: electra-export's discriminator/, or Google's
// google/electra-*-discriminator), for scoring tokens. The network our model runs is a whole pretrainer, so
// the generator is a placeholder of kPlaceholderGeneratorWidth units, one layer and one head, all zero
// (has_generator = false; its slices are in not_loaded). Its outputs never reach the discriminator when
// every prediction has weight 0, as electra-score's do. Fails naming the directory when it holds a
// generator or an encoder without the discriminator head, and as load_hf_pretrainer on the rest.
inline constexpr int kPlaceholderGeneratorWidth = 64;
HfPretrainer load_hf_discriminator(const std::filesystem::path& dir);

// First difference between the structure of a run's model config and an imported one, as
// "model.hidden_size: run 128, Hugging Face 256", or nullopt. Compared: vocab_size, embedding_size,
// hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings, type_vocab_size,
// layer_norm_eps, mlm_activation and generator.{hidden_size, num_layers, num_heads, intermediate_size}.
// Dropout rates and initializer ranges are training settings and are not compared.
std::optional<std::string> hf_config_difference(const PretrainerConfig& run, const PretrainerConfig& hf);

// electra-train --init-from DIR: loads DIR/discriminator + DIR/generator, checks the run's model config
// (hf_config_difference, fails naming the key), when DIR has a vocab.txt that it equals the training
// data's vocabulary (fails naming both hashes), and when both are known that the tokenizer's lower_case
// (tokenizer_config.json) equals the data's (`data_lower_case`, from the shards' manifest); then
// overwrites every tensor of `params` (the run's flat buffer, layout order) that Hugging Face holds. The
// generator's sentence head keeps its values. Returns a summary line for the log.
std::string init_from_hf(const std::filesystem::path& dir, const PretrainerConfig& run_config,
                         const text::Vocab& data_vocab, std::optional<bool> data_lower_case,
                         std::vector<float>& params);

}  // namespace electra::interop
