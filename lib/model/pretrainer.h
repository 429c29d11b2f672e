// ElectraPretrainer: generator + discriminator with shared embeddings, as TF Model Garden's
// tfm.nlp.models.ElectraPretrainer, written llm.c style (explicit forward/backward, flat buffers).
//
// One step, top to bottom (pretrainer.cpp):
//   generator encoder over input_word_ids
//   MLM head at masked_lm_positions -> lm logits [B,P,V]; sentence head on [CLS] -> [B,num_classes]
//   Gumbel-max samples from the lm logits (no gradient), keyed by (seed, step, global example)
//   corrupted ids = original ids with the samples at masked positions (weight > 0)
//   disc_label = input_mask * (corrupted != original)
//   discriminator encoder over the corrupted ids -> head -> disc_logits [B,S]
//   loss = mlm + disc_loss_weight * rtd (+ sentence when next_sentence_labels are given)
// backward() then accumulates d(loss)/d(parameters) into the flat gradient buffer.
//
// Memory: parameters and gradients live in two backend buffers of layout().total_size() elements
// (see parameter_layout.h); activations are allocated once per (rows, seq, predictions) shape and
// reused. The Backend passed to the constructor must outlive the pretrainer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lib/core/batch.h"
#include "lib/model/attention_impl.h"
#include "lib/model/config.h"
#include "lib/model/device_buffer.h"
#include "lib/model/parameter_layout.h"

namespace electra {

// Global denominators of the losses for one optimizer step. When given, every loss is divided by these
// (+1e-6) instead of this slice's own sums, so that summing gradients (and losses) over ranks and
// micro-batches gives exactly the gradient (and loss) of the whole global batch.
struct GlobalNormalizers {
  double masked_lm_weight_sum = 0.0;  // sum of masked_lm_weights over the global batch
  double input_mask_count = 0.0;      // number of input_mask == 1 tokens over the global batch
  double examples = 0.0;              // examples in the global batch (sentence loss; needed only with NSP labels)
};

// Where a step is, for profilers (electra-bench --breakdown). Marked in this order: forward marks
// kGeneratorForward .. kForwardDone, backward kDiscriminatorBackward .. kBackwardDone.
enum class StepPhase {
  kGeneratorForward,      // generator encoder, MLM and sentence heads
  kSampling,              // Gumbel-max replacements, MLM loss, corrupted ids and labels
  kDiscriminatorForward,  // discriminator encoder and head, RTD loss, metrics on the host
  kForwardDone,
  kDiscriminatorBackward,  // discriminator head, encoder, its embeddings projection
  kGeneratorBackward,      // MLM / sentence heads, generator encoder, shared embeddings
  kBackwardDone,
};
const char* to_string(StepPhase phase);

// Optional callbacks into one step; empty functions cost nothing.
struct StepHooks {
  // Called when a phase begins (and with kForwardDone / kBackwardDone when forward / backward
  // return). Device backends run asynchronously: synchronize inside the callback to time phases.
  std::function<void(StepPhase)> on_phase;
  // Called by backward() with [offset, offset + count) of the flat gradient buffer each time a range's
  // gradient is final for this backward (a layer, a head, finally the shared embeddings): every element
  // exactly once per backward, ranges never overlapping, mostly from the end of the buffer to its start
  // (backward runs the discriminator first). Lets a caller start the gradient allreduce of finished
  // layers while backward goes on (dist::GradientReducer::mark_ready). With several micro-batches per
  // optimizer step set it on the last micro-batch's context only: earlier backwards are not final.
  std::function<void(size_t offset, size_t count)> on_gradients_ready;
};

struct StepContext {
  uint64_t seed = 0;     // run seed: keys dropout and sampling (with step and global example)
  uint64_t step = 0;     // optimizer step
  bool training = true;  // dropout on/off
  std::optional<GlobalNormalizers> global;
  // Also copy lm_outputs and corrupted_ids to the host (left empty otherwise); sampled_ids, disc_label,
  // disc_logits, sentence_outputs and the losses always come back.
  bool copy_outputs = true;
  StepHooks hooks;  // used by this forward and the backward that follows it
  // Loss scaling (lib/optim/loss_scaler.h): backward computes the gradient of loss_scale * loss (the
  // loss gradient seeds are multiplied by it); reported losses are unscaled. With a power of two the
  // gradients are exactly loss_scale times those of scale 1 (barring overflow).
  float loss_scale = 1.0f;
};

// Losses, metrics and the raw sums behind them (sums are over this slice; add them over ranks and
// divide to get exact global metrics).
struct PretrainerLosses {
  double mlm_loss = 0.0;       // mlm_loss_sum / (normaliser + 1e-6)
  double disc_loss = 0.0;      // disc_loss_sum / (normaliser + 1e-6), unweighted
  double sentence_loss = 0.0;  // sentence_loss_sum / normaliser (0 without NSP labels)
  double total_loss = 0.0;     // mlm + disc_loss_weight * disc (+ sentence)
  double mlm_accuracy = 0.0;   // mlm_correct_sum / mlm_weight_sum (local)
  double disc_accuracy = 0.0;  // disc_correct_sum / disc_token_count (local)
  double sentence_accuracy = 0.0;
  bool has_sentence = false;

  double mlm_loss_sum = 0.0;      // sum w * CE
  double mlm_weight_sum = 0.0;    // sum w
  double mlm_correct_sum = 0.0;   // sum w * [argmax(logits) == masked_lm_ids]
  double disc_loss_sum = 0.0;     // sum input_mask * BCE
  double disc_token_count = 0.0;  // sum input_mask
  double disc_correct_sum = 0.0;  // sum input_mask * [(logit > 0) == disc_label]
  double disc_fake_count = 0.0;   // sum disc_label (replaced tokens)
  double sentence_loss_sum = 0.0;
  double sentence_correct_sum = 0.0;
  double sentence_count = 0.0;
};

// What forward returns, in host memory, row-major.
template <typename T>
struct PretrainerOutputs {
  int rows = 0, seq_length = 0, num_predictions = 0, num_classes = 0, vocab_size = 0;
  std::vector<T> lm_outputs;           // [B,P,V] logits, or log-probabilities with output_type predictions
  std::vector<T> sentence_outputs;     // [B,num_classes] logits
  std::vector<T> disc_logits;          // [B,S]
  std::vector<int32_t> disc_label;     // [B,S] 1 = replaced token
  std::vector<int32_t> sampled_ids;    // [B,P] generator samples (also at padded predictions)
  std::vector<int32_t> corrupted_ids;  // [B,S] the discriminator's input (with copy_outputs)
  PretrainerLosses losses;
};

// A parameter tensor to save: its layout entry and where its elements are (device memory).
template <typename T>
struct NamedTensor {
  const ParameterView* view = nullptr;
  T* data = nullptr;
};

template <typename T>
class ElectraPretrainer {
 public:
  ElectraPretrainer(const PretrainerConfig& config, Backend<T>& backend);
  ~ElectraPretrainer();
  ElectraPretrainer(const ElectraPretrainer&) = delete;
  ElectraPretrainer& operator=(const ElectraPretrainer&) = delete;

  const PretrainerConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_.layout; }
  const PretrainerSlots& slots() const { return layout_.slots; }
  Backend<T>& backend() { return backend_; }

  // Device buffers of layout().total_size() elements.
  T* parameters() { return params_.data(); }
  const T* parameters() const { return params_.data(); }
  T* gradients() { return grads_.data(); }
  const T* gradients() const { return grads_.data(); }

  // Encoder weights and embedding tables ~ truncated normal(0, initializer_range) (redrawn beyond two
  // stddev), head weights by mlm_initializer, biases 0, LayerNorm 1/0. Every number comes from Philox
  // (purpose kInit, lane = hash of the tensor name), so all ranks initialise identically and a tensor's
  // values do not depend on which other tensors exist.
  void init_parameters(uint64_t seed);
  void zero_gradients();
  // Whole flat buffers to / from the host (layout order).
  std::vector<T> parameters_to_host() const;
  void parameters_from_host(const std::vector<T>& host);
  std::vector<T> gradients_to_host() const;

  // Every parameter tensor (discriminator encoder, generator encoder, shared embeddings and all heads),
  // in layout order, with its device pointer: what a checkpoint saves. AdamW moments share the layout.
  std::vector<NamedTensor<T>> checkpoint_items();

  // Runs the step's forward pass and computes the losses. Checks the batch (sizes, ids < vocab, type ids
  // < type_vocab_size, S <= max_position_embeddings, positions < S, labels < num_classes) and fails naming
  // the tensor. The gradient of the loss w.r.t. the logits is prepared here; call backward() next to
  // accumulate parameter gradients. The returned reference stays valid until the next forward.
  const PretrainerOutputs<T>& forward(const Batch& batch, const StepContext& context);
  // Accumulates (+=) the gradient of the last forward's total loss into gradients().
  void backward();

  // CPU execution strategy. With chunks = K > 1, forward and backward cut the batch into K contiguous
  // row slices (min(K, rows)) and run them concurrently, one per OpenMP thread, each slice's ops
  // single-threaded on its own activations; chunk k > 0 accumulates its parameter gradients into a
  // buffer of its own (K - 1 extra gradient buffers), added to gradients() in chunk order at the end of
  // backward. A step then synchronises its threads a handful of times instead of once per op, which
  // keeps both cores busy on small layers and on a machine shared with other work. Randomness is keyed
  // by global example, so only the summation order of weight gradients and loss sums changes with K
  // (as with micro-batches); for a fixed K results do not depend on the number of threads. With K > 1,
  // StepHooks::on_gradients_ready is called once, for the whole buffer, after the chunks are added.
  // Default 1: the whole batch at once, every op multi-threaded. Fails for K > 1 on non-CPU backends.
  void set_parallel_chunks(int chunks);
  int parallel_chunks() const { return chunks_; }

  // Memory for time: with `on`, every transformer layer computes its FFN activation act(x W1 + b1) again
  // in backward instead of keeping it from forward: the same numbers (bitwise), N x F fewer values held
  // per layer (240 MB for ELECTRA-small at batch 32 x 128, 0.8 GB for base at 8 x 512), one more
  // activation pass per layer (~1% of a small step). Default off. Takes effect at the next forward.
  void set_recompute_ffn_activations(bool on);
  bool recompute_ffn_activations() const { return recompute_ffn_; }

  // Memory for time in attention (attention_impl.h): kFused keeps [B,H,S] statistics per layer instead
  // of the [B,H,S,S] probabilities and keep bytes (5 bytes per element in float) and recomputes the
  // probabilities in backward; the same losses and gradients to rounding (same dropout bits). Default
  // kAuto: fused on non-CPU backends that support the shape, materialised on the CPU (faster there).
  // kFused where the backend has no fused attention fails at the next forward. Takes effect then.
  void set_attention_impl(AttentionImpl impl);
  AttentionImpl attention_impl() const { return attention_impl_; }

 private:
  struct Plan;
  // This forward's loss and metric sums of one chunk (added over chunks in chunk order).
  struct ChunkSums {
    double mlm_loss_sum = 0.0, mlm_correct_sum = 0.0, disc_loss_sum = 0.0, disc_correct_sum = 0.0,
           disc_fake_count = 0.0, sentence_loss_sum = 0.0, sentence_correct_sum = 0.0;
  };
  // The loss denominators of this forward (the slice's own or the global ones).
  struct Normalizers {
    double mlm = 0.0, disc = 0.0, nsp = 0.0;
  };
  Plan& plan_for(int B, int S, int P, int chunk);
  void check_batch(const Batch& batch) const;
  // The stages of forward and backward for the rows [r0, r0 + plan.B) of the batch (one chunk).
  void forward_generator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx);
  void forward_sampling(Plan& plan, const Batch& batch, int r0, const StepContext& ctx, const Normalizers& norms);
  void forward_discriminator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx, const Normalizers& norms);
  void backward_discriminator(Plan& plan, T* grads, const std::function<void(size_t, size_t)>& ready);
  void backward_generator(Plan& plan, T* grads, const std::function<void(size_t, size_t)>& ready);
  const T* lm_outputs_of(Plan& plan);

  PretrainerConfig config_;
  Backend<T>& backend_;
  PretrainerLayout layout_;
  DeviceBuffer<T> params_, grads_;
  std::vector<std::unique_ptr<Plan>> plans_;  // most recently used first
  std::vector<Plan*> last_;                   // the last forward's plans, one per chunk (for backward)
  StepHooks hooks_;                           // the last forward's hooks (for backward)
  int chunks_ = 1;                            // set_parallel_chunks
  bool recompute_ffn_ = false;                // set_recompute_ffn_activations
  std::vector<DeviceBuffer<T>> extra_grads_;  // gradient buffers of chunks 1..K-1
  PretrainerOutputs<T> outputs_;

  // set_attention_impl
  AttentionImpl attention_impl_ = AttentionImpl::kAuto;
};

// Hugging Face ElectraForMaskedLM name of a layout tensor: generator.X -> electra.X; the shared
// embeddings and generator_predictions.* / generator_lm_head.bias keep their names; "" for tensors that
// are not part of ElectraForMaskedLM (discriminator, sentence head). Its generator_lm_head.weight is the
// word embedding table.
std::string generator_hf_name(const std::string& layout_name);

}  // namespace electra
