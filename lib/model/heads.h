// The pre-training heads on top of the encoders.
//  MlmHead (generator, HF ElectraGeneratorPredictions + generator_lm_head, TF Model Garden MaskedLM):
//    h = LayerNorm(act(gather(x, positions) Wd^T + bd)); logits = h word_embeddings^T + lm_bias.
//  SentenceHead (the generator's next-sentence head; TF Model Garden's ClassificationHead, state-dict
//  names generator_classification_head.*):
//    logits = tanh(x[:, 0] Wd^T + bd) Wo^T + bo.
//  DiscriminatorHead (HF ElectraDiscriminatorPredictions): logit = act(x Wd^T + bd) Wp^T + bp.
// Each keeps pointers to its inputs for backward; backward accumulates parameter gradients.
#pragma once

#include <cstdint>

#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"

namespace electra {

// Parameter gradients (grads) are wide (backend.h); so are the LayerNorm statistics.
template <typename T>
class MlmHead {
 public:
  using W = Wide<T>;

  // hidden = generator width, E = embedding width (the tied table's).
  MlmHead(const MlmHeadSlots& slots, int hidden, int embedding_size, Activation act, float layer_norm_eps);
  void plan(Backend<T>& be, int B, int S, int P);
  // x [B,S,hidden] with S <= the planned length (0: the planned one); positions device [B,P] in [0,S).
  // logits [B*P, V].
  void forward(Backend<T>& be, const T* params, const T* x, const int32_t* positions, int S = 0);
  const T* logits() const { return logits_.data(); }
  T* logits() { return logits_.data(); }
  // dlogits [B*P, V]; dx [B,S,hidden] is ACCUMULATED (scatter-add at the positions).
  void backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx);

 private:
  MlmHeadSlots slots_;
  int hidden_, E_;
  Activation act_;
  W eps_;
  int B_ = 0, S_ = 0, P_ = 0, planned_S_ = 0;  // S_: the last forward's
  const int32_t* positions_ = nullptr;
  DeviceBuffer<T> gathered_, pre_, act_out_, normed_, logits_;
  DeviceBuffer<W> mean_, rstd_;
  DeviceBuffer<T> d_normed_, d_act_, d_pre_, d_gathered_;
};

template <typename T>
class SentenceHead {
 public:
  using W = Wide<T>;

  SentenceHead(const SentenceHeadSlots& slots, int hidden, int num_classes);
  void plan(Backend<T>& be, int B, int S);
  // x [B,S,hidden] with S <= the planned length (0: the planned one); uses position 0 ([CLS]). logits
  // [B, num_classes].
  void forward(Backend<T>& be, const T* params, const T* x, int S = 0);
  const T* logits() const { return logits_.data(); }
  // dlogits [B, num_classes]; dx [B,S,hidden] ACCUMULATED at position 0.
  void backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx);

 private:
  SentenceHeadSlots slots_;
  int hidden_, classes_;
  int B_ = 0, S_ = 0, planned_S_ = 0;  // S_: the last forward's
  bool ran_ = false;
  DeviceBuffer<T, int32_t> zeros_;  // [B] position 0 of every row
  DeviceBuffer<T> cls_, pre_, pooled_, logits_, d_pooled_, d_pre_, d_cls_;
};

template <typename T>
class DiscriminatorHead {
 public:
  using W = Wide<T>;

  DiscriminatorHead(const DiscriminatorHeadSlots& slots, int hidden, Activation act);
  void plan(Backend<T>& be, int rows);
  // x [rows, hidden] (kept by pointer) with rows <= the planned rows (0: the planned rows). logits [rows].
  void forward(Backend<T>& be, const T* params, const T* x, int rows = 0);
  const T* logits() const { return logits_.data(); }
  // dlogits [rows]; dx [rows, hidden] OVERWRITTEN.
  void backward(Backend<T>& be, const T* params, W* grads, const T* dlogits, T* dx);

 private:
  DiscriminatorHeadSlots slots_;
  int hidden_;
  Activation act_;
  int rows_ = 0, planned_rows_ = 0;  // rows_: the last forward's
  const T* x_ = nullptr;
  DeviceBuffer<T> pre_, act_out_, logits_, d_act_, d_pre_;
};

}  // namespace electra
