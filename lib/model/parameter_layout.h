// The flat parameter buffer: every parameter of both networks lives in one contiguous allocation of
// named slices (TensorSlice; Hugging Face ELECTRA state-dict names, linear weights [out, in]). Gradients and the AdamW
// moments use the same layout in buffers of equal size, so the optimizer is one loop over slices, the
// gradient allreduce is a few large messages and a checkpoint is one dataset per slice.
//
// Order (no padding between slices, so a group can be addressed as one tensor):
//   shared embeddings   electra.embeddings.{word,position,token_type}_embeddings.weight, .LayerNorm.*
//   generator encoder   generator.embeddings_project.* (when E != generator hidden),
//                       generator.encoder.layer.{i}.* (query, key, value weights, then their biases, so the
//                       fused QKV projection is one [3*hidden, hidden] weight and one [3*hidden] bias)
//   generator heads     generator_predictions.{dense,LayerNorm}.*, generator_lm_head.bias,
//                       generator_classification_head.{dense,out_proj}.*
//   discriminator       electra.embeddings_project.* (when E != hidden), electra.encoder.layer.{i}.*,
//                       discriminator_predictions.{dense,dense_prediction}.*
// The discriminator names equal Hugging Face ElectraForPreTraining's state_dict keys. The generator's
// encoder carries the prefix `generator.`; export renames it to `electra.` (and adds the shared
// embeddings and generator_lm_head.weight = word embeddings) for ElectraForMaskedLM.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib/core/tensor_slice.h"
#include "lib/model/config.h"

namespace electra {

enum class Network { kShared, kGenerator, kDiscriminator };
std::string to_string(Network network);

// How init_parameters fills a tensor: encoder weights and embedding tables ~ truncated normal
// (initializer_range); head weights by mlm_initializer; biases 0; LayerNorm gamma 1, beta 0.
enum class ParamInit { kZeros, kOnes, kEncoder, kHead };

// One parameter tensor: its slice of the flat buffers and how training treats it.
struct ParameterSlice : TensorSlice {
  bool weight_decay = true;  // false for LayerNorm parameters and all biases
  Network network = Network::kShared;
  ParamInit init = ParamInit::kEncoder;
};

class ParameterLayout {
 public:
  // Appends a slice at the end of the buffer and returns its offset. Names must be unique.
  size_t add(const std::string& name, std::vector<int64_t> shape, bool weight_decay, Network network, ParamInit init);
  const std::vector<ParameterSlice>& slices() const { return slices_; }
  // The slices alone, in layout order (what a checkpoint section is written and read by).
  std::vector<TensorSlice> tensor_slices() const;
  // The slice called `name`; fails naming it when there is none.
  const ParameterSlice& find(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  size_t total_size() const { return total_; }
  // The first element of the first slice of `network`; total_size() when it has none. For a pretrainer
  // layout and the discriminator: where the gradients its backward finishes first begin (a bucket
  // boundary of the gradient allreduce).
  size_t first_element_of(Network network) const;

 private:
  std::vector<ParameterSlice> slices_;
  std::unordered_map<std::string, size_t> index_;
  size_t total_ = 0;
};

// Offsets of the tensors of each layer in the flat buffers. A layer reads params + offset and
// accumulates into grads + offset with the same offsets.
struct LinearSlots {
  size_t weight = 0;  // [out, in]
  size_t bias = 0;    // [out]
  int in = 0;
  int out = 0;
};

struct LayerNormSlots {
  size_t gamma = 0;  // [width]
  size_t beta = 0;   // [width]
  int width = 0;
};

struct EmbeddingSlots {
  size_t word = 0;      // [vocab, E]
  size_t position = 0;  // [max_positions, E]
  size_t type = 0;      // [type_vocab, E]
  LayerNormSlots layer_norm;
  bool has_project = false;
  LinearSlots project;  // [hidden, E] when has_project
};

struct TransformerLayerSlots {
  LinearSlots qkv;               // query, key, value weights side by side: [3*hidden, hidden]
  LinearSlots attention_output;  // [hidden, hidden]
  LayerNormSlots attention_norm;
  LinearSlots intermediate;  // [ffn, hidden]
  LinearSlots output;        // [hidden, ffn]
  LayerNormSlots output_norm;
};

struct EncoderSlots {
  EmbeddingSlots embeddings;  // the shared tables plus this network's projection
  std::vector<TransformerLayerSlots> layers;
};

struct MlmHeadSlots {
  LinearSlots dense;          // generator_predictions.dense [E, gen_hidden]
  LayerNormSlots layer_norm;  // generator_predictions.LayerNorm [E]
  size_t word = 0;            // tied output weight = word embeddings [V, E]
  size_t output_bias = 0;     // generator_lm_head.bias [V]
  int vocab_size = 0;
};

struct SentenceHeadSlots {
  LinearSlots dense;     // generator_classification_head.dense [gen_hidden, gen_hidden], tanh
  LinearSlots out_proj;  // generator_classification_head.out_proj [num_classes, gen_hidden]
};

struct DiscriminatorHeadSlots {
  LinearSlots dense;       // discriminator_predictions.dense [hidden, hidden], mlm_activation
  LinearSlots prediction;  // discriminator_predictions.dense_prediction [1, hidden]
};

struct PretrainerSlots {
  EncoderSlots generator;
  EncoderSlots discriminator;
  MlmHeadSlots mlm_head;
  SentenceHeadSlots sentence_head;
  DiscriminatorHeadSlots discriminator_head;
};

// Builds the layout of a whole ElectraPretrainer and the per-layer offsets into it.
struct PretrainerLayout {
  ParameterLayout layout;
  PretrainerSlots slots;
};
PretrainerLayout build_pretrainer_layout(const PretrainerConfig& config);

// Appends one encoder (embeddings_project when E != hidden, then the layers) under `prefix`
// ("electra" or "generator") using the shared embedding slices already in the layout. Exposed for
// layer tests that build a single encoder.
EncoderSlots add_encoder(ParameterLayout& layout, const EncoderConfig& config, const std::string& prefix,
                         Network network, const EmbeddingSlots& shared_embeddings);
// Appends the shared embedding tables and their LayerNorm (electra.embeddings.*).
EmbeddingSlots add_shared_embeddings(ParameterLayout& layout, const EncoderConfig& config);

}  // namespace electra
