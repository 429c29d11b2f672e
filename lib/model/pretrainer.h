// ElectraPretrainer: generator + discriminator with shared embeddings, as TF Model Garden's
// tfm.nlp.models.ElectraPretrainer, written llm.c style (explicit forward/backward, flat buffers).
//
// One step, top to bottom (pretrainer.cpp):
//   generator encoder over input_word_ids (packed rows: attention within each example, positions restart)
//   MLM head at masked_lm_positions -> lm logits [B,P,V]; sentence head on the row's first [CLS] -> [B,num_classes]
//   Gumbel-max samples from the lm logits (no gradient), keyed by (seed, step, global example)
//   corrupted ids = original ids with the samples at masked positions (weight > 0)
//   disc_label = (input_mask != 0) * (corrupted != original)
//   discriminator encoder over the corrupted ids -> head -> disc_logits [B,S]
//   loss = mlm + disc_loss_weight * rtd (+ sentence when next_sentence_labels are given)
// backward() then accumulates d(loss)/d(parameters) into the flat gradient buffer.
//
// Memory: parameters and gradients live in two wide buffers of layout().total_size() elements (see
// parameter_layout.h), plus, with bf16 storage, a bf16 copy of the parameters that the ops read;
// activations (T) are allocated once per (rows, seq, predictions) shape and reused. A batch trimmed of its
// padding (Batch::slot_seq_length > seq_length, lib/core/batch.h) runs on the prefixes of the plan for its
// untrimmed length, with attention dropout keyed by that length: the losses and gradients of the untrimmed
// batch to rounding, and no allocation.
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
  double input_mask_count = 0.0;      // number of input_mask != 0 (real) tokens over the global batch
  double examples = 0.0;  // examples in the global batch (sentence loss; needed only with next_sentence_labels)
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
  // layers while backward goes on (dist::MpiReducer::mark_ready). With parallel chunks
  // (set_parallel_chunks) the discriminator's ranges come together, once its backward is over in every
  // chunk and before kGeneratorBackward begins, and the rest (generator, heads, shared embeddings) after
  // the generator's backward; always from the calling thread. With several micro-batches per optimizer
  // step set it on the last micro-batch's context only: earlier backwards are not final.
  std::function<void(size_t offset, size_t count)> on_gradients_ready;
  // With parallel chunks and on_gradients_ready set: called from the calling thread after each layer of
  // the generator's backward (by the chunk that runs on it), while the other chunks compute. MPI moves
  // non-blocking collectives forward only inside MPI calls, so this is where a caller lets the
  // discriminator's allreduce progress (dist::GradientReducer::progress). With one chunk,
  // on_gradients_ready itself is called between layers and this is not called.
  std::function<void()> on_progress;
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
  double sentence_loss = 0.0;  // sentence_loss_sum / normaliser (0 without next_sentence_labels)
  double total_loss = 0.0;     // mlm + disc_loss_weight * disc (+ sentence)
  double mlm_accuracy = 0.0;   // mlm_correct_sum / mlm_weight_sum (local)
  double disc_accuracy = 0.0;  // disc_correct_sum / disc_token_count (local)
  double sentence_accuracy = 0.0;
  bool has_sentence = false;

  double mlm_loss_sum = 0.0;      // sum w * CE
  double mlm_weight_sum = 0.0;    // sum w
  double mlm_correct_sum = 0.0;   // sum w * [argmax(logits) == masked_lm_ids]
  double disc_loss_sum = 0.0;     // sum (input_mask != 0) * BCE
  double disc_token_count = 0.0;  // sum (input_mask != 0)
  double disc_correct_sum = 0.0;  // sum (input_mask != 0) * [(logit > 0) == disc_label]
  double disc_fake_count = 0.0;   // sum disc_label (replaced tokens)
  double sentence_loss_sum = 0.0;
  double sentence_correct_sum = 0.0;
  double sentence_count = 0.0;
};

// What forward returns, in host memory, row-major. T is the model's wide type (bf16 activations such as
// the logits come back widened, exactly).
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

// A parameter tensor bound to its memory: its slice of the layout and where its elements are (the
// parameter backend's memory, = parameters() + slice->offset).
template <typename T>
struct BoundTensor {
  const TensorSlice* slice = nullptr;
  T* data = nullptr;
};

// What the trainer, evaluation and the tools see of a pre-training model, whatever its storage type:
// P (= Wide<T> of the model's T: float or double) is the type of the master parameters, gradients and
// outputs. ElectraPretrainer<T> documents each function.
template <typename P>
class PretrainerModel {
 public:
  virtual ~PretrainerModel() = default;

  virtual const PretrainerConfig& config() const = 0;
  virtual const ParameterLayout& layout() const = 0;
  virtual const PretrainerSlots& slots() const = 0;
  // Where parameters() and gradients() live (the optimizer, clipping and allreduce run on it): the model
  // backend's wide() (the backend itself for fp32 / fp64 storage).
  virtual Backend<P>& parameter_backend() = 0;
  // The activation storage type for logs: "fp32", "fp64" or "bf16".
  virtual std::string storage_name() const = 0;
  // The backend the ops run on, for logs ("cpu-float", "cpu-bf16-onednn", ...).
  virtual std::string backend_name() const = 0;

  virtual P* parameters() = 0;
  virtual const P* parameters() const = 0;
  virtual P* gradients() = 0;
  virtual const P* gradients() const = 0;
  virtual void init_parameters(uint64_t seed) = 0;
  virtual void zero_gradients() = 0;
  virtual std::vector<P> parameters_to_host() const = 0;
  virtual void parameters_from_host(const std::vector<P>& host) = 0;
  virtual std::vector<P> gradients_to_host() const = 0;
  virtual std::vector<BoundTensor<P>> checkpoint_items() = 0;

  virtual const PretrainerOutputs<P>& forward(const Batch& batch, const StepContext& context) = 0;
  virtual void backward() = 0;

  virtual void set_parallel_chunks(int chunks) = 0;
  virtual int parallel_chunks() const = 0;
  virtual void set_recompute_ffn_activations(bool on) = 0;
  virtual bool recompute_ffn_activations() const = 0;
  virtual void set_attention_impl(AttentionImpl impl) = 0;
  virtual AttentionImpl attention_impl() const = 0;
};

// T is the storage type of activations (float, double, or bfloat16 for bf16 mixed precision); W =
// Wide<T> that of the master parameters, gradients, normalisation statistics, losses and outputs. For
// T != W the ops read a T copy of the parameters, refreshed (narrowed) at the start of every forward.
template <typename T>
class ElectraPretrainer final : public PretrainerModel<Wide<T>> {
 public:
  using W = Wide<T>;

  // `backend` must outlive the pretrainer; the second form owns it. Either way its wide() (for bf16 storage
  // a separate float backend, e.g. the one make_cpu_bf16_backend was given) must outlive the pretrainer.
  ElectraPretrainer(const PretrainerConfig& config, Backend<T>& backend);
  ElectraPretrainer(const PretrainerConfig& config, std::unique_ptr<Backend<T>> owned_backend);
  ~ElectraPretrainer() override;
  ElectraPretrainer(const ElectraPretrainer&) = delete;
  ElectraPretrainer& operator=(const ElectraPretrainer&) = delete;

  const PretrainerConfig& config() const override { return config_; }
  const ParameterLayout& layout() const override { return layout_.layout; }
  const PretrainerSlots& slots() const override { return layout_.slots; }
  Backend<T>& backend() { return backend_; }
  Backend<W>& parameter_backend() override { return backend_.wide(); }
  std::string storage_name() const override;
  std::string backend_name() const override { return backend_.name(); }

  // Device buffers of layout().total_size() elements, allocated from parameter_backend(): the master
  // parameters and their gradients.
  W* parameters() override { return params_.data(); }
  const W* parameters() const override { return params_.data(); }
  W* gradients() override { return grads_.data(); }
  const W* gradients() const override { return grads_.data(); }

  // Encoder weights and embedding tables ~ truncated normal(0, initializer_range) (redrawn beyond two
  // stddev), head weights by mlm_initializer, biases 0, LayerNorm 1/0. Every number comes from Philox
  // (purpose kInit, lane = hash of the tensor name), so all ranks initialise identically and a tensor's
  // values do not depend on which other tensors exist.
  void init_parameters(uint64_t seed) override;
  void zero_gradients() override;
  // Whole flat buffers to / from the host (layout order).
  std::vector<W> parameters_to_host() const override;
  void parameters_from_host(const std::vector<W>& host) override;
  std::vector<W> gradients_to_host() const override;

  // Every parameter tensor (discriminator encoder, generator encoder, shared embeddings and all heads),
  // in layout order, with its device pointer: what a checkpoint saves. AdamW moments share the layout.
  std::vector<BoundTensor<W>> checkpoint_items() override;

  // Runs the step's forward pass and computes the losses. Checks the batch (sizes, ids < vocab, type ids
  // < type_vocab_size, S <= max_position_embeddings, positions < S, labels < num_classes) and fails naming
  // the tensor. The gradient of the loss w.r.t. the logits is prepared here; call backward() next to
  // accumulate parameter gradients. The returned reference stays valid until the next forward.
  const PretrainerOutputs<W>& forward(const Batch& batch, const StepContext& context) override;
  // Accumulates (+=) the gradient of the last forward's total loss into gradients().
  void backward() override;

  // CPU execution strategy. With chunks = K > 1, forward and backward cut the batch into K contiguous
  // row slices (min(K, rows)) and run them concurrently, one per OpenMP thread, each slice's ops
  // single-threaded on its own activations; chunk k > 0 accumulates its parameter gradients into a
  // buffer of its own (K - 1 extra gradient buffers), added to gradients() in chunk order at the end of
  // backward (with StepHooks::on_gradients_ready set, the discriminator's ranges already once every
  // chunk's discriminator backward is done). A step then synchronises its threads a handful of times
  // instead of once per op, which keeps both cores busy on small layers and on a machine shared with
  // other work. Randomness is keyed by global example, so only the summation order of weight gradients
  // and loss sums changes with K (as with micro-batches); for a fixed K results do not depend on the
  // number of threads, nor on whether the hook is set. With K > 1 the hook gets the discriminator's
  // ranges between its backward and the generator's, so their allreduce overlaps the generator's
  // backward, and the remaining ranges at the end (see StepHooks).
  // Default 1: the whole batch at once, every op multi-threaded. Fails for K > 1 on non-CPU backends.
  void set_parallel_chunks(int chunks) override;
  int parallel_chunks() const override { return chunks_; }

  // Memory for time: with `on`, every transformer layer computes its FFN activation act(x W1 + b1) again
  // in backward instead of keeping it from forward: the same numbers (bitwise), N x F fewer values held
  // per layer (240 MB for ELECTRA-small at batch 32 x 128, 0.8 GB for base at 8 x 512), one more
  // activation pass per layer (~1% of a small step). Default off. Takes effect at the next forward.
  void set_recompute_ffn_activations(bool on) override;
  bool recompute_ffn_activations() const override { return recompute_ffn_; }

  // Memory for time in attention (attention_impl.h): kFused keeps [B,H,S] statistics per layer instead
  // of the [B,H,S,S] probabilities and keep bytes (5 bytes per element in float) and recomputes the
  // probabilities in backward; the same losses and gradients to rounding (same dropout bits). Default
  // kAuto: fused on non-CPU backends that support the shape, materialised on the CPU (faster there).
  // kFused where the backend has no fused attention fails at the next forward. Takes effect then.
  void set_attention_impl(AttentionImpl impl) override;
  AttentionImpl attention_impl() const override { return attention_impl_; }

  // How many activation plans this model has allocated so far. Plans are sized for a batch's untrimmed
  // length (Batch::slot_length()), so trimmed batches of any shorter length reuse them: once a shape has
  // run, this stays put however the trimmed lengths vary (what tests check: nothing planned in the step).
  size_t plans_made() const { return plans_made_; }

 private:
  struct Plan;
  // This forward's loss and metric sums of one chunk (added over chunks in chunk order).
  struct ChunkSums {
    double mlm_loss_sum = 0.0, mlm_correct_sum = 0.0, disc_loss_sum = 0.0, disc_correct_sum = 0.0,
           disc_fake_count = 0.0, sentence_loss_sum = 0.0, sentence_correct_sum = 0.0;
  };
  // The loss denominators of this forward (the slice's own or the global ones).
  struct Normalizers {
    double mlm = 0.0, disc = 0.0, sentence = 0.0;
  };
  // A plan of B rows and P predictions for chunk `chunk`, with room for S positions (one of at least S
  // when there is one, else a new one for max(S, S_max)); its active length is set to S.
  Plan& plan_for(int B, int S, int S_max, int P, int chunk);
  void check_batch(const Batch& batch) const;
  // The stages of forward and backward for the rows [r0, r0 + plan.B) of the batch (one chunk).
  void forward_generator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx);
  void forward_sampling(Plan& plan, const Batch& batch, int r0, const StepContext& ctx, const Normalizers& norms);
  void forward_discriminator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx, const Normalizers& norms);
  void backward_discriminator(Plan& plan, W* grads, const std::function<void(size_t, size_t)>& ready);
  void backward_generator(Plan& plan, W* grads, const std::function<void(size_t, size_t)>& ready);
  const T* lm_outputs_of(Plan& plan);
  // The parameters the ops read: the narrowed copy for T != W, the master parameters otherwise.
  const T* weights() const;

  std::unique_ptr<Backend<T>> owned_backend_;  // first: destroyed after every buffer allocated from it
  PretrainerConfig config_;
  Backend<T>& backend_;
  PretrainerLayout layout_;
  DeviceBuffer<W> params_, grads_;
  DeviceBuffer<T> weights_;                   // T != W only: params_ rounded to T, refreshed at every forward
  std::vector<std::unique_ptr<Plan>> plans_;  // most recently used first
  size_t plans_made_ = 0;                     // plans_made()
  std::vector<Plan*> last_;                   // the last forward's plans, one per chunk (for backward)
  StepHooks hooks_;                           // the last forward's hooks (for backward)
  int chunks_ = 1;                            // set_parallel_chunks
  bool recompute_ffn_ = false;                // set_recompute_ffn_activations
  std::vector<DeviceBuffer<W>> extra_grads_;  // gradient buffers of chunks 1..K-1
  PretrainerOutputs<W> outputs_;

  // set_attention_impl
  AttentionImpl attention_impl_ = AttentionImpl::kAuto;
};

// Hugging Face ElectraForMaskedLM name of a layout tensor: generator.X -> electra.X; the shared
// embeddings and generator_predictions.* / generator_lm_head.bias keep their names; "" for tensors that
// are not part of ElectraForMaskedLM (discriminator, sentence head). Its generator_lm_head.weight is the
// word embedding table.
std::string generator_hf_name(const std::string& layout_name);

}  // namespace electra
