// One post-LN BERT/ELECTRA transformer layer:
//   qkv = x Wqkv^T + b          (fused query/key/value projection, [B,S,3,H,D])
//   ctx = attention(qkv, input_mask, attention dropout)
//   a   = LayerNorm(x + dropout(ctx Wo^T + bo))
//   y   = LayerNorm(a + dropout(gelu(a Wi^T + bi) Wout^T + bout))
// The layer owns the activations its backward needs; scratch that is dead between layers is shared
// through LayerScratch (one per encoder). Attention is materialised (probabilities and keep bits
// [B,H,S,S] kept for backward) or fused ([B,H,S] log-sum-exp kept), as planned (attention_impl.h).
#pragma once

#include <cstdint>

#include "lib/model/attention_impl.h"
#include "lib/model/device_buffer.h"
#include "lib/model/dropout_site.h"
#include "lib/model/parameter_layout.h"

namespace electra {

// Buffers used only inside one layer's forward or backward, shared by all layers of an encoder.
template <typename T>
struct LayerScratch {
  // materialized_attention: whether any layer runs attention_backward (needs `attention`). Sized for
  // B x S; a forward over fewer positions uses the prefixes.
  void plan(Backend<T>& be, int B, int S, int hidden, int ffn, int heads, bool materialized_attention = true);
  DeviceBuffer<T> tmp;                               // [N, C] pre-dropout dense outputs; dropout gradients
  DeviceBuffer<T> d_res1, d_res2, d_ln1, d_context;  // [N, C]
  DeviceBuffer<T> d_inter_act, d_inter_pre;          // [N, F]
  DeviceBuffer<T> d_qkv;                             // [N, 3C]
  DeviceBuffer<T> attention;                         // [B, H, S, S] attention_backward scratch (or empty)
};

struct TransformerLayerShape {
  int hidden = 0;        // C
  int num_heads = 0;     // H (C % H == 0)
  int intermediate = 0;  // F
  Activation act = Activation::kGelu;
  float hidden_dropout = 0.0f;
  float attention_dropout = 0.0f;
  float layer_norm_eps = 1e-12f;
};

template <typename T>
class TransformerLayer {
 public:
  using W = Wide<T>;

  // lane_network/layer_index pick the dropout lanes of this layer's three sites.
  TransformerLayer(const TransformerLayerSlots& slots, const TransformerLayerShape& shape, Network network,
                   int layer_index);

  // recompute_activation: do not keep act(x W1 + b1) from forward to backward (N x F values) but compute
  // it again in backward; the same numbers, less memory, one more activation pass.
  // attention: materialised or fused attention (use_fused_attention decides kAuto for this backend and
  // shape, with the layer's attention dropout rate). Buffers are sized for B x S; forward may run any
  // S' <= S on their prefixes, laid out as [B,S',...] (so trimmed batches need no plan of their own).
  void plan(Backend<T>& be, int B, int S, bool recompute_activation = false,
            AttentionImpl attention = AttentionImpl::kAuto);
  bool fused_attention() const { return fused_attention_; }

  // x [B*S, C] (kept by pointer for backward), mask [B,S] device ints (1 = attend), S <= the planned
  // length (0: the planned one; backward uses the same). Attention dropout is keyed by
  // dropout.key_seq_length (DropoutContext::attention_key). Output [B*S, C].
  void forward(Backend<T>& be, const T* params, const T* x, const int32_t* mask, const DropoutContext& dropout,
               LayerScratch<T>& scratch, int S = 0);
  const T* output() const { return out_.data(); }

  // dout [B*S, C] -> dx [B*S, C] (overwritten; must not alias dout); parameter gradients (wide) accumulate.
  void backward(Backend<T>& be, const T* params, W* grads, const T* dout, T* dx, LayerScratch<T>& scratch);

 private:
  TransformerLayerSlots slots_;
  TransformerLayerShape shape_;
  Network network_;
  int layer_;
  int B_ = 0, S_ = 0, planned_S_ = 0;  // S_: the last forward's
  bool recompute_act_ = false;
  bool fused_attention_ = false;
  DropoutKey attention_key_;  // the last forward's attention dropout key (fused backward regenerates the bits)
  float hidden_rate_ = 0.0f, attention_rate_ = 0.0f;  // the rates the last forward used
  const T* x_ = nullptr;
  const int32_t* mask_ = nullptr;
  DeviceBuffer<T> qkv_, probs_, context_, res1_, ln1_, inter_pre_, inter_act_, res2_, out_;
  DeviceBuffer<W> attention_stats_, mean1_, rstd1_, mean2_, rstd2_;  // statistics (allocated from be.wide())
  DeviceBuffer<T, uint8_t> keep_attention_, keep1_, keep2_;
};

}  // namespace electra
