// One ELECTRA encoder network (generator or discriminator): embeddings (+ projection) followed by
// num_layers transformer layers. Activations are planned once per (B, S) and reused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "lib/model/config.h"
#include "lib/model/embeddings.h"
#include "lib/model/transformer_layer.h"

namespace electra {

template <typename T>
class Encoder {
 public:
  using W = Wide<T>;

  // `network` selects the dropout lanes (generator and discriminator never share a mask).
  Encoder(const EncoderConfig& config, const EncoderSlots& slots, Network network);

  // recompute_ffn / attention: TransformerLayer::plan's recompute_activation / attention for every layer.
  // Sized for B x S: forward may run any S' <= S on the buffers' prefixes.
  void plan(Backend<T>& be, int B, int S, bool recompute_ffn = false, AttentionImpl attention = AttentionImpl::kAuto);
  int planned_rows() const { return B_; }
  int planned_seq() const { return planned_S_; }

  // ids, type_ids, position_ids, mask: device [B,S] ints, valid until backward; S <= planned_seq()
  // (0: planned_seq()), and backward runs the same S. position_ids may be null (positions 0..S-1); packed rows
  // give each token its position in its own example, and mask its example's index (backend.h, attention).
  // Output [B*S, hidden].
  void forward(Backend<T>& be, const T* params, const int32_t* ids, const int32_t* type_ids,
               const int32_t* position_ids, const int32_t* mask, const DropoutContext& dropout, int S = 0);
  const T* output() const;

  // dout [B*S, hidden] (not modified): accumulates the gradients of every layer and the embeddings.
  // `ready` (may be empty) gets each layer's parameter range [offset, offset + count) as soon as that
  // layer's backward is done (last layer first), then the embeddings projection's. The shared
  // embedding tables are not reported: the other network also adds into them.
  void backward(Backend<T>& be, const T* params, W* grads, const T* dout,
                const std::function<void(size_t, size_t)>& ready = {});

  const EncoderConfig& config() const { return config_; }

 private:
  EncoderConfig config_;
  EncoderSlots slots_;
  Embeddings<T> embeddings_;
  std::vector<TransformerLayer<T>> layers_;
  LayerScratch<T> scratch_;
  DeviceBuffer<T> grad_a_, grad_b_;  // [B*S, hidden] gradients flowing between layers
  int B_ = 0, planned_S_ = 0;
};

}  // namespace electra
