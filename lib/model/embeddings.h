// ELECTRA embeddings of one network: word + position + token type -> LayerNorm -> dropout, then
// embeddings_project (Linear E -> hidden) when the network's hidden size differs from E (as Hugging
// Face ElectraModel). The tables and LayerNorm are shared by generator and discriminator; each network
// has its own Embeddings object (its own activations, projection and dropout lane).
#pragma once

#include <cstdint>

#include "lib/model/device_buffer.h"
#include "lib/model/dropout_site.h"
#include "lib/model/parameter_layout.h"

namespace electra {

template <typename T>
class Embeddings {
 public:
  using W = Wide<T>;

  // E = embedding width, hidden = output width (== E when there is no projection).
  Embeddings(const EmbeddingSlots& slots, int embedding_size, int hidden_size, float dropout, float eps,
             uint32_t dropout_lane);

  // Allocates the activations for B x S tokens (once per shape); forward may then run any S' <= S.
  void plan(Backend<T>& be, int B, int S);

  // ids, type_ids, position_ids: device [B,S], valid until backward, with S <= the planned length (0: the
  // planned one; buffers hold [B,S] in their prefix). position_ids null: positions 0..S-1 (the caller checks
  // S, or the ids, against the position table). Output [B*S, hidden].
  void forward(Backend<T>& be, const T* params, const int32_t* ids, const int32_t* type_ids,
               const int32_t* position_ids, const DropoutContext& dropout, int S = 0);
  const T* output() const { return slots_.has_project ? projected_.data() : dropped_.data(); }

  // dout [B*S, hidden]: accumulates into the word/position/type tables, the LayerNorm and the projection
  // in grads (same offsets as params; wide, see backend.h).
  void backward(Backend<T>& be, const T* params, W* grads, const T* dout);

  int rows() const { return B_ * S_; }
  int width() const { return hidden_; }

 private:
  EmbeddingSlots slots_;
  int E_, hidden_;
  float dropout_;
  W eps_;
  uint32_t lane_;
  int B_ = 0, S_ = 0, planned_S_ = 0;  // S_: the last forward's
  float used_rate_ = 0.0f;
  const int32_t* ids_ = nullptr;
  const int32_t* type_ids_ = nullptr;
  const int32_t* position_ids_ = nullptr;
  DeviceBuffer<T> sum_, normed_, dropped_, projected_;
  DeviceBuffer<W> mean_, rstd_;  // LayerNorm statistics (allocated from be.wide())
  DeviceBuffer<T, uint8_t> keep_;
  DeviceBuffer<T> d_dropped_, d_normed_, d_sum_;  // backward scratch
};

}  // namespace electra
