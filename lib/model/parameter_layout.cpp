#include "lib/model/parameter_layout.h"

#include <algorithm>

#include "lib/core/error.h"

namespace electra {

std::string to_string(Network network) {
  switch (network) {
    case Network::kShared:
      return "shared";
    case Network::kGenerator:
      return "generator";
    case Network::kDiscriminator:
      return "discriminator";
  }
  return "?";
}

size_t ParameterLayout::add(const std::string& name, std::vector<int64_t> shape, bool weight_decay, Network network,
                            ParamInit init) {
  if (index_.count(name)) fail("parameter layout: duplicate tensor name '", name, "'");
  size_t size = 1;
  for (int64_t d : shape) {
    if (d <= 0) fail("parameter layout: tensor '", name, "' has a non-positive dimension ", d);
    size *= static_cast<size_t>(d);
  }
  index_[name] = slices_.size();
  slices_.push_back(ParameterSlice{{name, std::move(shape), total_, size}, weight_decay, network, init});
  total_ += size;
  return slices_.back().offset;
}

std::vector<TensorSlice> ParameterLayout::tensor_slices() const { return {slices_.begin(), slices_.end()}; }

const ParameterSlice& ParameterLayout::find(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) fail("parameter layout: no tensor named '", name, "'");
  return slices_[it->second];
}

namespace {

LinearSlots add_linear(ParameterLayout& layout, const std::string& name, int out, int in, Network network,
                       ParamInit init = ParamInit::kEncoder) {
  LinearSlots s;
  s.in = in;
  s.out = out;
  s.weight = layout.add(name + ".weight", {out, in}, true, network, init);
  s.bias = layout.add(name + ".bias", {out}, false, network, ParamInit::kZeros);
  return s;
}

LayerNormSlots add_layer_norm(ParameterLayout& layout, const std::string& name, int width, Network network) {
  LayerNormSlots s;
  s.width = width;
  s.gamma = layout.add(name + ".weight", {width}, false, network, ParamInit::kOnes);
  s.beta = layout.add(name + ".bias", {width}, false, network, ParamInit::kZeros);
  return s;
}

}  // namespace

EmbeddingSlots add_shared_embeddings(ParameterLayout& layout, const EncoderConfig& c) {
  EmbeddingSlots s;
  const int E = c.embedding_size;
  s.word = layout.add("electra.embeddings.word_embeddings.weight", {c.vocab_size, E}, true, Network::kShared,
                      ParamInit::kEncoder);
  s.position = layout.add("electra.embeddings.position_embeddings.weight", {c.max_position_embeddings, E}, true,
                          Network::kShared, ParamInit::kEncoder);
  s.type = layout.add("electra.embeddings.token_type_embeddings.weight", {c.type_vocab_size, E}, true, Network::kShared,
                      ParamInit::kEncoder);
  s.layer_norm = add_layer_norm(layout, "electra.embeddings.LayerNorm", E, Network::kShared);
  return s;
}

EncoderSlots add_encoder(ParameterLayout& layout, const EncoderConfig& c, const std::string& prefix, Network network,
                         const EmbeddingSlots& shared) {
  EncoderSlots s;
  s.embeddings = shared;
  s.embeddings.has_project = c.has_embeddings_project();
  if (s.embeddings.has_project) {
    s.embeddings.project = add_linear(layout, prefix + ".embeddings_project", c.hidden_size, c.embedding_size, network);
  }
  const int C = c.hidden_size, F = c.intermediate_size;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = prefix + ".encoder.layer." + std::to_string(i) + ".";
    TransformerLayerSlots l;
    // q, k, v weights then q, k, v biases: one [3C, C] weight and one [3C] bias for the fused projection.
    l.qkv.in = C;
    l.qkv.out = 3 * C;
    l.qkv.weight = layout.add(p + "attention.self.query.weight", {C, C}, true, network, ParamInit::kEncoder);
    layout.add(p + "attention.self.key.weight", {C, C}, true, network, ParamInit::kEncoder);
    layout.add(p + "attention.self.value.weight", {C, C}, true, network, ParamInit::kEncoder);
    l.qkv.bias = layout.add(p + "attention.self.query.bias", {C}, false, network, ParamInit::kZeros);
    layout.add(p + "attention.self.key.bias", {C}, false, network, ParamInit::kZeros);
    layout.add(p + "attention.self.value.bias", {C}, false, network, ParamInit::kZeros);
    l.attention_output = add_linear(layout, p + "attention.output.dense", C, C, network);
    l.attention_norm = add_layer_norm(layout, p + "attention.output.LayerNorm", C, network);
    l.intermediate = add_linear(layout, p + "intermediate.dense", F, C, network);
    l.output = add_linear(layout, p + "output.dense", C, F, network);
    l.output_norm = add_layer_norm(layout, p + "output.LayerNorm", C, network);
    s.layers.push_back(l);
  }
  return s;
}

size_t ParameterLayout::first_element_of(Network network) const {
  size_t first = total_;
  for (const ParameterSlice& slice : slices_) {
    if (slice.network == network) first = std::min(first, slice.offset);
  }
  return first;
}

PretrainerLayout build_pretrainer_layout(const PretrainerConfig& config) {
  validate(config);
  PretrainerLayout out;
  ParameterLayout& layout = out.layout;
  PretrainerSlots& s = out.slots;
  const EmbeddingSlots shared = add_shared_embeddings(layout, config.discriminator);
  const int E = config.embedding_size(), V = config.vocab_size;
  const int Cg = config.generator.hidden_size, Cd = config.discriminator.hidden_size;

  s.generator = add_encoder(layout, config.generator, "generator", Network::kGenerator, shared);
  s.mlm_head.dense = add_linear(layout, "generator_predictions.dense", E, Cg, Network::kGenerator, ParamInit::kHead);
  s.mlm_head.layer_norm = add_layer_norm(layout, "generator_predictions.LayerNorm", E, Network::kGenerator);
  s.mlm_head.word = shared.word;
  s.mlm_head.output_bias = layout.add("generator_lm_head.bias", {V}, false, Network::kGenerator, ParamInit::kZeros);
  s.mlm_head.vocab_size = V;
  s.sentence_head.dense =
      add_linear(layout, "generator_classification_head.dense", Cg, Cg, Network::kGenerator, ParamInit::kHead);
  s.sentence_head.out_proj = add_linear(layout, "generator_classification_head.out_proj", config.num_classes, Cg,
                                        Network::kGenerator, ParamInit::kHead);

  s.discriminator = add_encoder(layout, config.discriminator, "electra", Network::kDiscriminator, shared);
  s.discriminator_head.dense =
      add_linear(layout, "discriminator_predictions.dense", Cd, Cd, Network::kDiscriminator, ParamInit::kHead);
  s.discriminator_head.prediction = add_linear(layout, "discriminator_predictions.dense_prediction", 1, Cd,
                                               Network::kDiscriminator, ParamInit::kHead);
  return out;
}

}  // namespace electra
