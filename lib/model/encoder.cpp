#include "lib/model/encoder.h"

#include "lib/core/error.h"

namespace electra {

namespace {
TransformerLayerShape layer_shape(const EncoderConfig& c) {
  TransformerLayerShape s;
  s.hidden = c.hidden_size;
  s.num_heads = c.num_heads;
  s.intermediate = c.intermediate_size;
  s.act = c.hidden_act;
  s.hidden_dropout = c.hidden_dropout;
  s.attention_dropout = c.attention_dropout;
  s.layer_norm_eps = c.layer_norm_eps;
  return s;
}
}  // namespace

template <typename T>
Encoder<T>::Encoder(const EncoderConfig& config, const EncoderSlots& slots, Network network)
    : config_(config),
      slots_(slots),
      embeddings_(slots.embeddings, config.embedding_size, config.hidden_size, config.hidden_dropout,
                  config.layer_norm_eps, dropout_lane(network, -1, DropoutSlot::kEmbeddings)) {
  if (static_cast<int>(slots.layers.size()) != config.num_layers) {
    fail("encoder: layout has ", slots.layers.size(), " layers, config num_layers is ", config.num_layers);
  }
  layers_.reserve(slots.layers.size());
  for (int i = 0; i < config.num_layers; ++i) layers_.emplace_back(slots.layers[i], layer_shape(config), network, i);
}

template <typename T>
void Encoder<T>::plan(Backend<T>& be, int B, int S, bool recompute_ffn, AttentionImpl attention) {
  B_ = B;
  planned_S_ = S;
  embeddings_.plan(be, B, S);
  bool materialized_attention = false;
  for (auto& layer : layers_) {
    layer.plan(be, B, S, recompute_ffn, attention);
    materialized_attention = materialized_attention || !layer.fused_attention();
  }
  scratch_.plan(be, B, S, config_.hidden_size, config_.intermediate_size, config_.num_heads, materialized_attention);
  const size_t n = static_cast<size_t>(B) * S * config_.hidden_size;
  grad_a_.reset(be, n);
  grad_b_.reset(be, n);
}

template <typename T>
void Encoder<T>::forward(Backend<T>& be, const T* params, const int32_t* ids, const int32_t* type_ids,
                         const int32_t* position_ids, const int32_t* mask, const DropoutContext& dropout, int S) {
  ELECTRA_CHECK(B_ > 0, "encoder: forward before plan");
  embeddings_.forward(be, params, ids, type_ids, position_ids, dropout, S);
  const T* x = embeddings_.output();
  for (auto& layer : layers_) {
    layer.forward(be, params, x, mask, dropout, scratch_, S);
    x = layer.output();
  }
}

template <typename T>
const T* Encoder<T>::output() const {
  return layers_.empty() ? embeddings_.output() : layers_.back().output();
}

template <typename T>
void Encoder<T>::backward(Backend<T>& be, const T* params, W* grads, const T* dout,
                          const std::function<void(size_t, size_t)>& ready) {
  const T* d = dout;
  T* next = grad_a_.data();
  for (int i = static_cast<int>(layers_.size()) - 1; i >= 0; --i) {
    layers_[i].backward(be, params, grads, d, next, scratch_);
    if (ready) {
      // A layer's tensors are contiguous: qkv weight first, output LayerNorm beta last.
      const TransformerLayerSlots& l = slots_.layers[i];
      ready(l.qkv.weight, l.output_norm.beta + l.output_norm.width - l.qkv.weight);
    }
    d = next;
    next = (next == grad_a_.data()) ? grad_b_.data() : grad_a_.data();
  }
  embeddings_.backward(be, params, grads, d);
  if (ready && slots_.embeddings.has_project) {
    const LinearSlots& p = slots_.embeddings.project;
    ready(p.weight, p.bias + p.out - p.weight);
  }
}

template class Encoder<float>;
template class Encoder<double>;
template class Encoder<bfloat16>;

}  // namespace electra
