// The whole ELECTRA pre-training step, readable top to bottom: forward() then backward().
#include "lib/model/pretrainer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <numbers>
#include <type_traits>
#include <utility>

#include "lib/core/error.h"
#include "lib/core/philox.h"
#include "lib/model/encoder.h"
#include "lib/model/heads.h"

namespace electra {

namespace {

constexpr double kLossEps = 1e-6;  // as google-research/electra: sum / (count + 1e-6)
constexpr size_t kMaxPlans = 3;    // activation plans kept (training shape, eval shape, a last partial batch)

uint32_t fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

// Standard normal redrawn until |z| <= 2 (TF's truncated_normal), from Box-Muller on Philox uniforms.
double truncated_normal(PhiloxSequence& rng) {
  while (true) {
    const double u1 = rng.next_uniform_open(), u2 = rng.next_uniform_open();
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    if (std::abs(z) <= 2.0) return z;
  }
}

template <typename T>
Backend<T>& non_null(const std::unique_ptr<Backend<T>>& backend) {
  if (!backend) fail("ElectraPretrainer: the owned backend is null");
  return *backend;
}

// n device values of T to host memory as Wide<T> (through `staging` when T is narrower).
template <typename T>
void copy_to_host_wide(Backend<T>& be, Wide<T>* host, const T* src, size_t n, std::vector<T>& staging) {
  if constexpr (std::is_same_v<T, Wide<T>>) {
    (void)staging;
    be.copy_to_host(host, src, n);
  } else {
    staging.resize(n);
    be.copy_to_host(staging.data(), src, n);
    for (size_t i = 0; i < n; ++i) host[i] = static_cast<Wide<T>>(staging[i]);
  }
}

}  // namespace

const char* to_string(StepPhase phase) {
  switch (phase) {
    case StepPhase::kGeneratorForward:
      return "generator_forward";
    case StepPhase::kSampling:
      return "sampling";
    case StepPhase::kDiscriminatorForward:
      return "discriminator_forward";
    case StepPhase::kForwardDone:
      return "forward_done";
    case StepPhase::kDiscriminatorBackward:
      return "discriminator_backward";
    case StepPhase::kGeneratorBackward:
      return "generator_backward";
    case StepPhase::kBackwardDone:
      return "backward_done";
  }
  return "?";
}

std::string generator_hf_name(const std::string& name) {
  auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  if (starts("generator.")) return "electra." + name.substr(10);
  if (starts("electra.embeddings.") || starts("generator_predictions.") || starts("generator_lm_head.")) return name;
  return "";
}

// Everything one (B, S, P) shape needs: the networks' activations, device copies of the batch, the loss
// buffers and host staging vectors. Allocated once for B rows of up to S_max positions: a forward over
// S <= S_max (a batch trimmed of its padding) runs on the buffers' prefixes, every [B,S,...] tensor
// packed with the active S (so results do not depend on S_max). Losses, their weights and gradient
// scales are wide (allocated from the backend's wide()); logits and their gradients are activations (T).
template <typename T>
struct ElectraPretrainer<T>::Plan {
  int B, S_max, P;
  int S;      // the active length: the last forward's seq_length
  int chunk;  // which chunk of a forward this plan serves (see set_parallel_chunks)
  Encoder<T> generator, discriminator;
  MlmHead<T> mlm;
  SentenceHead<T> sentence_head;
  DiscriminatorHead<T> disc_head;
  DeviceBuffer<T, int32_t> ids, type_ids, mask, position_ids, positions, mlm_labels, samples, mlm_argmax, original,
      corrupted, disc_label, next_sentence_labels, sentence_argmax;
  DeviceBuffer<W> mlm_weights, mlm_scale, mlm_loss, disc_scale, disc_loss, sentence_scale, sentence_loss;
  DeviceBuffer<T> lm_outputs, d_disc_logits, d_sentence_logits, d_gen_seq, d_disc_seq;
  bool has_sentence = false;
  bool ran = false;
  ChunkSums sums;  // this chunk's loss and metric sums of the last forward
  // Host staging, sized once.
  std::vector<int32_t> h_original, h_mlm_argmax, h_sentence_argmax;
  std::vector<W> h_mlm_weights, h_mlm_scale, h_mlm_loss, h_disc_scale, h_disc_loss, h_sentence_scale, h_sentence_loss;
  std::vector<T> h_narrow;  // T != W: outputs on their way to the host (copy_to_host_wide)

  Plan(ElectraPretrainer& m, int B_, int S_max_, int P_, int chunk_)
      : B(B_),
        S_max(S_max_),
        P(P_),
        S(S_max_),
        chunk(chunk_),
        generator(m.config_.generator, m.layout_.slots.generator, Network::kGenerator),
        discriminator(m.config_.discriminator, m.layout_.slots.discriminator, Network::kDiscriminator),
        mlm(m.layout_.slots.mlm_head, m.config_.generator.hidden_size, m.config_.embedding_size(),
            m.config_.mlm_activation, m.config_.generator.layer_norm_eps),
        sentence_head(m.layout_.slots.sentence_head, m.config_.generator.hidden_size, m.config_.num_classes),
        disc_head(m.layout_.slots.discriminator_head, m.config_.discriminator.hidden_size, m.config_.mlm_activation) {
    Backend<T>& be = m.backend_;
    Backend<W>& wide = be.wide();
    const size_t N = static_cast<size_t>(B) * S_max, M = static_cast<size_t>(B) * P;
    const size_t V = m.config_.vocab_size, C = m.config_.num_classes;
    generator.plan(be, B, S_max, m.recompute_ffn_, m.attention_impl_);
    discriminator.plan(be, B, S_max, m.recompute_ffn_, m.attention_impl_);
    mlm.plan(be, B, S_max, P);
    sentence_head.plan(be, B, S_max);
    disc_head.plan(be, static_cast<int>(N));
    for (auto* b : {&ids, &type_ids, &mask, &position_ids, &original, &corrupted, &disc_label}) b->reset(be, N);
    for (auto* b : {&positions, &mlm_labels, &samples, &mlm_argmax}) b->reset(be, M);
    next_sentence_labels.reset(be, B);
    sentence_argmax.reset(be, B);
    mlm_weights.reset(wide, M);
    mlm_scale.reset(wide, M);
    mlm_loss.reset(wide, M);
    if (m.config_.output_type == OutputType::kPredictions) lm_outputs.reset(be, M * V);
    disc_scale.reset(wide, N);
    disc_loss.reset(wide, N);
    d_disc_logits.reset(be, N);
    sentence_scale.reset(wide, B);
    sentence_loss.reset(wide, B);
    d_sentence_logits.reset(be, B * C);
    d_gen_seq.reset(be, N * m.config_.generator.hidden_size);
    d_disc_seq.reset(be, N * m.config_.discriminator.hidden_size);
    h_original.resize(N);
    h_mlm_argmax.resize(M);
    h_sentence_argmax.resize(B);
    h_mlm_weights.resize(M);
    h_mlm_scale.resize(M);
    h_mlm_loss.resize(M);
    h_disc_scale.resize(N);
    h_disc_loss.resize(N);
    h_sentence_scale.resize(B);
    h_sentence_loss.resize(B);
  }
};

template <typename T>
ElectraPretrainer<T>::ElectraPretrainer(const PretrainerConfig& config, Backend<T>& backend)
    : config_(config), backend_(backend), layout_(build_pretrainer_layout(config)) {
  const size_t n = layout_.layout.total_size();
  Backend<W>& wide = backend_.wide();
  params_.reset(wide, n);
  grads_.reset(wide, n);
  wide.fill(params_.data(), n, W(0));
  wide.fill(grads_.data(), n, W(0));
  if constexpr (!std::is_same_v<T, W>) weights_.reset(backend_, n);  // filled by every forward
}

template <typename T>
ElectraPretrainer<T>::ElectraPretrainer(const PretrainerConfig& config, std::unique_ptr<Backend<T>> owned_backend)
    : ElectraPretrainer(config, non_null(owned_backend)) {
  owned_backend_ = std::move(owned_backend);
}

template <typename T>
ElectraPretrainer<T>::~ElectraPretrainer() = default;

template <typename T>
std::string ElectraPretrainer<T>::storage_name() const {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  if constexpr (std::is_same_v<T, double>) return "fp64";
  if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
}

template <typename T>
const T* ElectraPretrainer<T>::weights() const {
  if constexpr (std::is_same_v<T, W>) {
    return params_.data();
  } else {
    return weights_.data();
  }
}

template <typename T>
void ElectraPretrainer<T>::init_parameters(uint64_t seed) {
  // Drawn as W: the master values are the same for every storage type with the same W.
  std::vector<W> host;
  for (const ParameterSlice& v : layout_.layout.slices()) {
    host.assign(v.size, W(0));
    PhiloxSequence rng(seed, RandomPurpose::kInit, 0, 0, fnv1a(v.name));
    switch (v.init) {
      case ParamInit::kZeros:
        break;
      case ParamInit::kOnes:
        std::fill(host.begin(), host.end(), W(1));
        break;
      case ParamInit::kEncoder: {
        const double stddev = config_.discriminator.initializer_range;
        for (W& x : host) x = static_cast<W>(stddev * truncated_normal(rng));
        break;
      }
      case ParamInit::kHead: {
        if (config_.mlm_initializer == MlmInitializer::kTruncatedNormal) {
          const double stddev = config_.mlm_initializer_stddev;
          for (W& x : host) x = static_cast<W>(stddev * truncated_normal(rng));
        } else {
          // Glorot uniform on a [out, in] weight.
          const double fan_out = v.shape.at(0), fan_in = v.shape.size() > 1 ? v.shape[1] : 1;
          const double limit = std::sqrt(6.0 / (fan_in + fan_out));
          for (W& x : host) x = static_cast<W>((2.0 * rng.next_uniform_open() - 1.0) * limit);
        }
        break;
      }
    }
    backend_.wide().copy_from_host(params_.data() + v.offset, host.data(), v.size);
  }
}

template <typename T>
void ElectraPretrainer<T>::zero_gradients() {
  backend_.wide().fill(grads_.data(), grads_.size(), W(0));
}

template <typename T>
std::vector<Wide<T>> ElectraPretrainer<T>::parameters_to_host() const {
  std::vector<W> host(params_.size());
  backend_.wide().copy_to_host(host.data(), params_.data(), host.size());
  return host;
}

template <typename T>
void ElectraPretrainer<T>::parameters_from_host(const std::vector<W>& host) {
  if (host.size() != params_.size()) {
    fail("parameters_from_host: got ", host.size(), " values, the layout has ", params_.size());
  }
  backend_.wide().copy_from_host(params_.data(), host.data(), host.size());
}

template <typename T>
std::vector<Wide<T>> ElectraPretrainer<T>::gradients_to_host() const {
  std::vector<W> host(grads_.size());
  backend_.wide().copy_to_host(host.data(), grads_.data(), host.size());
  return host;
}

template <typename T>
std::vector<BoundTensor<Wide<T>>> ElectraPretrainer<T>::checkpoint_items() {
  std::vector<BoundTensor<W>> items;
  items.reserve(layout_.layout.slices().size());
  for (const ParameterSlice& v : layout_.layout.slices()) items.push_back({&v, params_.data() + v.offset});
  return items;
}

template <typename T>
typename ElectraPretrainer<T>::Plan& ElectraPretrainer<T>::plan_for(int B, int S, int S_max, int P, int chunk) {
  // Any plan long enough serves: its prefixes hold the shorter shape, with the same results.
  for (size_t i = 0; i < plans_.size(); ++i) {
    Plan& p = *plans_[i];
    if (p.B == B && p.S_max >= S && p.P == P && p.chunk == chunk) {
      std::rotate(plans_.begin(), plans_.begin() + i, plans_.begin() + i + 1);
      p.S = S;
      return p;
    }
  }
  // Every chunk of the current forward was requested just before and sits at the front, so with room
  // for kMaxPlans shapes per chunk the eviction never takes one of them.
  if (plans_.size() >= kMaxPlans * static_cast<size_t>(std::max(1, chunks_))) {
    const Plan* evicted = plans_.back().get();
    if (std::find(last_.begin(), last_.end(), evicted) != last_.end()) last_.clear();
    plans_.pop_back();
  }
  plans_.insert(plans_.begin(), std::make_unique<Plan>(*this, B, std::max(S, S_max), P, chunk));
  ++plans_made_;
  plans_.front()->S = S;
  return *plans_.front();
}

template <typename T>
void ElectraPretrainer<T>::set_recompute_ffn_activations(bool on) {
  if (on == recompute_ffn_) return;
  recompute_ffn_ = on;
  // Plans hold the layers' activations: plan again at the next forward (a pending backward is lost).
  last_.clear();
  plans_.clear();
}

template <typename T>
void ElectraPretrainer<T>::set_attention_impl(AttentionImpl impl) {
  if (impl == attention_impl_) return;
  attention_impl_ = impl;
  // As set_recompute_ffn_activations: the plans hold the attention buffers.
  last_.clear();
  plans_.clear();
}

template <typename T>
void ElectraPretrainer<T>::set_parallel_chunks(int chunks) {
  if (chunks < 1) fail("set_parallel_chunks: chunks must be >= 1, got ", chunks);
  if (chunks > 1 && backend_.device() != DeviceKind::kCpu) {
    fail("set_parallel_chunks: parallel chunks are a CPU execution strategy (backend ", backend_.name(), ")");
  }
  chunks_ = chunks;
}

template <typename T>
void ElectraPretrainer<T>::check_batch(const Batch& b) const {
  const int B = b.rows, S = b.seq_length, P = b.num_predictions;
  if (B <= 0 || S <= 0) fail("batch: rows (", B, ") and seq_length (", S, ") must be positive");
  if (P <= 0) fail("batch: num_predictions must be positive, got ", P);
  const size_t N = static_cast<size_t>(B) * S, M = static_cast<size_t>(B) * P;
  auto size_is = [](const char* name, size_t got, size_t want) {
    if (got != want) fail("batch tensor ", name, " has ", got, " elements, expected ", want);
  };
  size_is("input_word_ids", b.input_word_ids.size(), N);
  size_is("input_mask", b.input_mask.size(), N);
  size_is("input_type_ids", b.input_type_ids.size(), N);
  size_is("masked_lm_positions", b.masked_lm_positions.size(), M);
  size_is("masked_lm_ids", b.masked_lm_ids.size(), M);
  size_is("masked_lm_weights", b.masked_lm_weights.size(), M);
  if (!b.next_sentence_labels.empty()) size_is("next_sentence_labels", b.next_sentence_labels.size(), B);
  if (!b.position_ids.empty()) size_is("position_ids", b.position_ids.size(), N);
  const EncoderConfig& e = config_.discriminator;
  if (S > e.max_position_embeddings) {
    fail("batch: position id ", S - 1, " >= max_position_embeddings (", e.max_position_embeddings, "): seq_length ", S,
         " is too long");
  }
  // The untrimmed length keys attention dropout and sizes the plan (Batch::slot_seq_length).
  if (b.slot_length() < S || b.slot_length() > e.max_position_embeddings) {
    fail("batch: slot_seq_length ", b.slot_seq_length, " must be 0 or in [seq_length ", S, ", max_position_embeddings ",
         e.max_position_embeddings, "]");
  }
  const int V = config_.vocab_size;
  for (size_t i = 0; i < N; ++i) {
    if (b.input_word_ids[i] < 0 || b.input_word_ids[i] >= V) {
      fail("batch tensor input_word_ids: id ", b.input_word_ids[i], " at [", i / S, ",", i % S, "] is outside [0, ", V,
           ")");
    }
    if (b.input_type_ids[i] < 0 || b.input_type_ids[i] >= e.type_vocab_size) {
      fail("batch tensor input_type_ids: id ", b.input_type_ids[i], " at [", i / S, ",", i % S,
           "] is outside [0, type_vocab_size ", e.type_vocab_size, ")");
    }
    // 0 = padding, k > 0 = the row's k-th example (packed rows; 1 when a row holds one example).
    if (b.input_mask[i] < 0) {
      fail("batch tensor input_mask: value ", b.input_mask[i], " at [", i / S, ",", i % S, "] is negative");
    }
    if (!b.position_ids.empty() && (b.position_ids[i] < 0 || b.position_ids[i] >= e.max_position_embeddings)) {
      fail("batch tensor position_ids: position ", b.position_ids[i], " at [", i / S, ",", i % S,
           "] is outside [0, max_position_embeddings ", e.max_position_embeddings, ")");
    }
  }
  for (size_t i = 0; i < M; ++i) {
    if (b.masked_lm_positions[i] < 0 || b.masked_lm_positions[i] >= S) {
      fail("batch tensor masked_lm_positions: position ", b.masked_lm_positions[i], " at [", i / P, ",", i % P,
           "] is outside [0, ", S, ")");
    }
    if (b.masked_lm_ids[i] < 0 || b.masked_lm_ids[i] >= V) {
      fail("batch tensor masked_lm_ids: id ", b.masked_lm_ids[i], " at [", i / P, ",", i % P, "] is outside [0, ", V,
           ")");
    }
    if (!(b.masked_lm_weights[i] >= 0.0f) || !std::isfinite(b.masked_lm_weights[i])) {
      fail("batch tensor masked_lm_weights: weight ", b.masked_lm_weights[i], " at [", i / P, ",", i % P,
           "] must be finite and >= 0");
    }
  }
  for (size_t i = 0; i < b.next_sentence_labels.size(); ++i) {
    if (b.next_sentence_labels[i] < 0 || b.next_sentence_labels[i] >= config_.num_classes) {
      fail("batch tensor next_sentence_labels: label ", b.next_sentence_labels[i], " at [", i,
           "] is outside [0, num_classes ", config_.num_classes, ")");
    }
  }
}

namespace {

// Runs body(k) for k in [0, chunks): concurrently on OpenMP threads (one chunk per thread at a time,
// whose ops then run single-threaded) when there are several, else inline. An exception thrown by a
// chunk is rethrown here after the region (it must not cross the OpenMP region's boundary).
template <typename F>
void for_each_chunk(int chunks, F&& body) {
  if (chunks == 1) {
    body(0);
    return;
  }
  std::vector<std::exception_ptr> errors(chunks);
  const int threads = std::max(1, std::min(chunks, omp_get_max_threads()));
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int k = 0; k < chunks; ++k) {
    try {
      omp_set_num_threads(1);  // this thread's ops run single-threaded (the setting ends with the region)
      body(k);
    } catch (...) {
      errors[k] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// [offset, offset + count) of the flat gradient buffer.
using GradientRange = std::pair<size_t, size_t>;

// `ranges` sorted by offset, touching ones merged, empty ones dropped. Fails when a range passes `total`
// or two overlap: backward reports each element at most once.
std::vector<GradientRange> merged_ranges(std::vector<GradientRange> ranges, size_t total) {
  std::sort(ranges.begin(), ranges.end());
  std::vector<GradientRange> merged;
  for (const auto& [offset, count] : ranges) {
    ELECTRA_CHECK(offset <= total && count <= total - offset, "backward: gradient range [", offset, ", ",
                  offset + count, ") passes the end of the buffer (", total, " elements)");
    if (count == 0) continue;
    if (!merged.empty()) {
      const size_t end = merged.back().first + merged.back().second;
      ELECTRA_CHECK(offset >= end, "backward: gradient range [", offset, ", ", offset + count, ") overlaps [",
                    merged.back().first, ", ", end, ")");
      if (offset == end) {
        merged.back().second += count;
        continue;
      }
    }
    merged.emplace_back(offset, count);
  }
  return merged;
}

// The parts of [0, total) outside `merged` (sorted and disjoint), from the end of the buffer to its start.
std::vector<GradientRange> gaps_from_the_end(const std::vector<GradientRange>& merged, size_t total) {
  std::vector<GradientRange> gaps;
  size_t end = total;
  for (auto it = merged.rbegin(); it != merged.rend(); ++it) {
    const size_t range_end = it->first + it->second;
    if (range_end < end) gaps.emplace_back(range_end, end - range_end);
    end = it->first;
  }
  if (end > 0) gaps.emplace_back(0, end);
  return gaps;
}

}  // namespace

template <typename T>
const PretrainerOutputs<Wide<T>>& ElectraPretrainer<T>::forward(const Batch& batch, const StepContext& ctx) {
  check_batch(batch);
  hooks_ = ctx.hooks;
  const auto phase = [this](StepPhase p) {
    if (hooks_.on_phase) hooks_.on_phase(p);
  };
  phase(StepPhase::kGeneratorForward);
  const int B = batch.rows, S = batch.seq_length, P = batch.num_predictions;
  const int N = B * S, M = B * P, V = config_.vocab_size, NC = config_.num_classes;
  // Chunk k holds rows [B * k / K, B * (k + 1) / K).
  const int K = std::min(chunks_, B);
  const auto row0 = [&](int k) { return static_cast<int>(static_cast<long long>(B) * k / K); };
  last_.clear();
  // Plans for the untrimmed length: a trimmed batch (S < slot_length()) runs on their prefixes.
  for (int k = 0; k < K; ++k) last_.push_back(&plan_for(row0(k + 1) - row0(k), S, batch.slot_length(), P, k));
  for (Plan* plan : last_) plan->ran = false;
  PretrainerOutputs<W>& out = outputs_;
  out.rows = B;
  out.seq_length = S;
  out.num_predictions = P;
  out.num_classes = NC;
  out.vocab_size = V;
  PretrainerLosses& L = out.losses;
  L = PretrainerLosses{};
  // Room for untrimmed batches from the start: trimmed lengths vary from step to step.
  const size_t slots = static_cast<size_t>(B) * batch.slot_length();
  out.disc_label.reserve(slots);
  out.disc_logits.reserve(slots);
  if (ctx.copy_outputs) out.corrupted_ids.reserve(slots);
  out.sampled_ids.resize(M);
  out.corrupted_ids.resize(ctx.copy_outputs ? N : 0);
  out.disc_label.resize(N);
  out.disc_logits.resize(N);
  out.sentence_outputs.resize(static_cast<size_t>(B) * NC);
  if (ctx.copy_outputs) {
    out.lm_outputs.resize(static_cast<size_t>(M) * V);
  } else {
    out.lm_outputs.clear();
  }

  // Loss denominators: this slice's own sums, or the global ones.
  for (int i = 0; i < M; ++i) L.mlm_weight_sum += batch.masked_lm_weights[i];
  for (int i = 0; i < N; ++i) L.disc_token_count += batch.input_mask[i] != 0 ? 1 : 0;
  L.has_sentence = !batch.next_sentence_labels.empty();
  Normalizers norms{L.mlm_weight_sum, L.disc_token_count, static_cast<double>(B)};
  if (ctx.global) {
    norms.mlm = ctx.global->masked_lm_weight_sum;
    norms.disc = ctx.global->input_mask_count;
    norms.sentence = ctx.global->examples;
    if (L.has_sentence && !(norms.sentence > 0))
      fail("forward: GlobalNormalizers.examples must be > 0 with next_sentence_labels");
  }

  // The parameters may have changed since the last forward (an optimizer step, a load).
  if constexpr (!std::is_same_v<T, W>) backend_.narrow(weights_.data(), params_.data(), params_.size());

  // The three stages, each over all chunks (concurrently when there are several).
  for_each_chunk(K, [&](int k) { forward_generator(*last_[k], batch, row0(k), ctx); });
  phase(StepPhase::kSampling);
  for_each_chunk(K, [&](int k) { forward_sampling(*last_[k], batch, row0(k), ctx, norms); });
  phase(StepPhase::kDiscriminatorForward);
  for_each_chunk(K, [&](int k) { forward_discriminator(*last_[k], batch, row0(k), ctx, norms); });

  // Sums over chunks in chunk order.
  for (const Plan* plan : last_) {
    L.disc_fake_count += plan->sums.disc_fake_count;
    L.mlm_loss_sum += plan->sums.mlm_loss_sum;
    L.mlm_correct_sum += plan->sums.mlm_correct_sum;
    L.disc_loss_sum += plan->sums.disc_loss_sum;
    L.disc_correct_sum += plan->sums.disc_correct_sum;
    L.sentence_loss_sum += plan->sums.sentence_loss_sum;
    L.sentence_correct_sum += plan->sums.sentence_correct_sum;
  }
  if (L.has_sentence) {
    L.sentence_count = B;
    L.sentence_loss = L.sentence_loss_sum / norms.sentence;
    L.sentence_accuracy = L.sentence_correct_sum / B;
  }
  L.mlm_loss = L.mlm_loss_sum / (norms.mlm + kLossEps);
  L.disc_loss = L.disc_loss_sum / (norms.disc + kLossEps);
  L.total_loss = L.mlm_loss + config_.disc_loss_weight * L.disc_loss + L.sentence_loss;
  L.mlm_accuracy = L.mlm_weight_sum > 0 ? L.mlm_correct_sum / L.mlm_weight_sum : 0.0;
  L.disc_accuracy = L.disc_token_count > 0 ? L.disc_correct_sum / L.disc_token_count : 0.0;
  phase(StepPhase::kForwardDone);
  return out;
}

// Generator over rows [r0, r0 + plan.B) of the batch: encoder and heads.
template <typename T>
void ElectraPretrainer<T>::forward_generator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx) {
  const int B = plan.B, S = plan.S, P = plan.P;
  const int N = B * S, M = B * P, V = config_.vocab_size;
  const size_t n0 = static_cast<size_t>(r0) * S, m0 = static_cast<size_t>(r0) * P;
  Backend<T>& be = backend_;
  const T* params = weights();
  plan.sums = ChunkSums{};
  be.copy_ints_from_host(plan.ids.data(), batch.input_word_ids.data() + n0, N);
  be.copy_ints_from_host(plan.type_ids.data(), batch.input_type_ids.data() + n0, N);
  be.copy_ints_from_host(plan.mask.data(), batch.input_mask.data() + n0, N);
  if (!batch.position_ids.empty()) be.copy_ints_from_host(plan.position_ids.data(), batch.position_ids.data() + n0, N);
  be.copy_ints_from_host(plan.positions.data(), batch.masked_lm_positions.data() + m0, M);
  be.copy_ints_from_host(plan.mlm_labels.data(), batch.masked_lm_ids.data() + m0, M);
  const DropoutContext dropout{ctx.training, ctx.seed, ctx.step, batch.global_row_offset + r0, batch.slot_length()};

  plan.generator.forward(be, params, plan.ids.data(), plan.type_ids.data(),
                         batch.position_ids.empty() ? nullptr : plan.position_ids.data(), plan.mask.data(), dropout, S);
  const T* gen_out = plan.generator.output();
  plan.mlm.forward(be, params, gen_out, plan.positions.data(), S);
  plan.sentence_head.forward(be, params, gen_out, S);

  // lm_outputs: the logits, or their log-softmax with output_type predictions. The MLM loss is taken
  // after sampling (forward_sampling), in place of the logits.
  if (config_.output_type == OutputType::kPredictions) be.log_softmax(plan.lm_outputs.data(), plan.mlm.logits(), M, V);
}

template <typename T>
const T* ElectraPretrainer<T>::lm_outputs_of(Plan& plan) {
  return config_.output_type == OutputType::kPredictions ? plan.lm_outputs.data() : plan.mlm.logits();
}

// Sampling (no gradient) for rows [r0, r0 + plan.B): Gumbel-max over lm_outputs (as TF Model Garden) per
// masked position, keyed by the global example; then the MLM loss; the corrupted ids and the
// discriminator's labels.
template <typename T>
void ElectraPretrainer<T>::forward_sampling(Plan& plan, const Batch& batch, int r0, const StepContext& ctx,
                                            const Normalizers& norms) {
  const int B = plan.B, S = plan.S, P = plan.P;
  const int N = B * S, M = B * P, V = config_.vocab_size;
  const size_t n0 = static_cast<size_t>(r0) * S, m0 = static_cast<size_t>(r0) * P;
  Backend<T>& be = backend_;
  PretrainerOutputs<W>& out = outputs_;
  be.gumbel_sample(plan.samples.data(), lm_outputs_of(plan),
                   config_.disallow_correct ? plan.mlm_labels.data() : nullptr, M, V, config_.temperature, ctx.seed,
                   ctx.step, batch.global_row_offset + r0, P);
  if (ctx.copy_outputs) {
    copy_to_host_wide(be, out.lm_outputs.data() + m0 * V, lm_outputs_of(plan), static_cast<size_t>(M) * V,
                      plan.h_narrow);
  }

  // MLM loss sum(w * CE) / (sum(w) + 1e-6). Its gradient w.r.t. the logits overwrites the logits (read
  // for the last time above), ready for backward: one [B*P, V] buffer instead of two.
  for (int i = 0; i < M; ++i) {
    plan.h_mlm_scale[i] = static_cast<W>(batch.masked_lm_weights[m0 + i] / (norms.mlm + kLossEps) * ctx.loss_scale);
  }
  be.wide().copy_from_host(plan.mlm_scale.data(), plan.h_mlm_scale.data(), M);
  be.softmax_cross_entropy(plan.mlm_loss.data(), plan.mlm.logits(), plan.mlm_argmax.data(), plan.mlm.logits(),
                           plan.mlm_labels.data(), plan.mlm_scale.data(), M, V);

  // Original ids: the generator input with the masked positions restored (from the batch alone, so no
  // wait for the device). The corrupted ids (the samples there) and the labels are made on the device,
  // straight from the samples; the host gets them in forward_discriminator, with the other outputs.
  const int32_t* ids = batch.input_word_ids.data() + n0;
  const int32_t* positions = batch.masked_lm_positions.data() + m0;
  const int32_t* labels = batch.masked_lm_ids.data() + m0;
  const float* weights = batch.masked_lm_weights.data() + m0;
  std::copy(ids, ids + N, plan.h_original.begin());
  for (int b = 0; b < B; ++b) {
    for (int p = 0; p < P; ++p) {
      const int i = b * P + p;
      if (weights[i] > 0) plan.h_original[b * S + positions[i]] = labels[i];
    }
  }
  std::copy(weights, weights + M, plan.h_mlm_weights.begin());
  be.copy_ints_from_host(plan.original.data(), plan.h_original.data(), N);
  be.wide().copy_from_host(plan.mlm_weights.data(), plan.h_mlm_weights.data(), M);
  be.replace_masked_tokens(plan.corrupted.data(), plan.disc_label.data(), plan.original.data(), plan.mask.data(),
                           plan.positions.data(), plan.mlm_weights.data(), plan.samples.data(), B, S, P);
}

// Discriminator over rows [r0, r0 + plan.B): encoder, head, RTD loss (and the sentence loss), then this
// chunk's loss and metric sums on the host and its rows of the outputs.
template <typename T>
void ElectraPretrainer<T>::forward_discriminator(Plan& plan, const Batch& batch, int r0, const StepContext& ctx,
                                                 const Normalizers& norms) {
  const int B = plan.B, S = plan.S, P = plan.P;
  const int N = B * S, M = B * P, NC = config_.num_classes;
  const size_t n0 = static_cast<size_t>(r0) * S, m0 = static_cast<size_t>(r0) * P;
  Backend<T>& be = backend_;
  const T* params = weights();
  PretrainerOutputs<W>& out = outputs_;
  const int32_t* input_mask = batch.input_mask.data() + n0;
  const DropoutContext dropout{ctx.training, ctx.seed, ctx.step, batch.global_row_offset + r0, batch.slot_length()};

  plan.discriminator.forward(be, params, plan.corrupted.data(), plan.type_ids.data(),
                             batch.position_ids.empty() ? nullptr : plan.position_ids.data(), plan.mask.data(), dropout,
                             S);
  plan.disc_head.forward(be, params, plan.discriminator.output(), N);
  // RTD loss sum(mask * BCE) / (sum(mask) + 1e-6), weighted by disc_loss_weight in the total.
  for (int i = 0; i < N; ++i) {
    plan.h_disc_scale[i] = static_cast<W>(config_.disc_loss_weight * (input_mask[i] != 0 ? 1 : 0) /
                                          (norms.disc + kLossEps) * ctx.loss_scale);
  }
  be.wide().copy_from_host(plan.disc_scale.data(), plan.h_disc_scale.data(), N);
  be.sigmoid_cross_entropy(plan.disc_loss.data(), plan.d_disc_logits.data(), plan.disc_head.logits(),
                           plan.disc_label.data(), plan.disc_scale.data(), N);

  // ---- sentence loss (only with next_sentence_labels): mean CE over examples ----
  plan.has_sentence = !batch.next_sentence_labels.empty();
  if (plan.has_sentence) {
    be.copy_ints_from_host(plan.next_sentence_labels.data(), batch.next_sentence_labels.data() + r0, B);
    std::fill(plan.h_sentence_scale.begin(), plan.h_sentence_scale.end(),
              static_cast<W>(ctx.loss_scale / norms.sentence));
    be.wide().copy_from_host(plan.sentence_scale.data(), plan.h_sentence_scale.data(), B);
    be.softmax_cross_entropy(plan.sentence_loss.data(), plan.d_sentence_logits.data(), plan.sentence_argmax.data(),
                             plan.sentence_head.logits(), plan.next_sentence_labels.data(), plan.sentence_scale.data(),
                             B, NC);
  }
  plan.ran = true;

  // ---- losses and metrics on the host (double sums in a fixed order) ----
  ChunkSums& sums = plan.sums;
  be.wide().copy_to_host(plan.h_mlm_loss.data(), plan.mlm_loss.data(), M);
  be.copy_ints_to_host(plan.h_mlm_argmax.data(), plan.mlm_argmax.data(), M);
  for (int i = 0; i < M; ++i) {
    const double w = batch.masked_lm_weights[m0 + i];
    sums.mlm_loss_sum += w * static_cast<double>(plan.h_mlm_loss[i]);
    if (plan.h_mlm_argmax[i] == batch.masked_lm_ids[m0 + i]) sums.mlm_correct_sum += w;
  }
  // The sampling stage's outputs (made on the device): labels for the metrics, samples for the caller.
  int32_t* disc_label = out.disc_label.data() + n0;
  be.copy_ints_to_host(disc_label, plan.disc_label.data(), N);
  be.copy_ints_to_host(out.sampled_ids.data() + m0, plan.samples.data(), M);
  if (ctx.copy_outputs) be.copy_ints_to_host(out.corrupted_ids.data() + n0, plan.corrupted.data(), N);
  for (int i = 0; i < N; ++i) sums.disc_fake_count += disc_label[i];
  W* disc_logits = out.disc_logits.data() + n0;
  copy_to_host_wide(be, disc_logits, plan.disc_head.logits(), N, plan.h_narrow);
  be.wide().copy_to_host(plan.h_disc_loss.data(), plan.disc_loss.data(), N);
  for (int i = 0; i < N; ++i) {
    if (input_mask[i] == 0) continue;
    sums.disc_loss_sum += static_cast<double>(plan.h_disc_loss[i]);
    if ((disc_logits[i] > 0) == (disc_label[i] == 1)) sums.disc_correct_sum += 1.0;
  }
  copy_to_host_wide(be, out.sentence_outputs.data() + static_cast<size_t>(r0) * NC, plan.sentence_head.logits(),
                    static_cast<size_t>(B) * NC, plan.h_narrow);
  if (plan.has_sentence) {
    be.wide().copy_to_host(plan.h_sentence_loss.data(), plan.sentence_loss.data(), B);
    be.copy_ints_to_host(plan.h_sentence_argmax.data(), plan.sentence_argmax.data(), B);
    for (int b = 0; b < B; ++b) {
      sums.sentence_loss_sum += static_cast<double>(plan.h_sentence_loss[b]);
      if (plan.h_sentence_argmax[b] == batch.next_sentence_labels[r0 + b]) sums.sentence_correct_sum += 1.0;
    }
  }
}

namespace {

// Where backward's parallel chunks put their gradients and when ranges are reported (StepHooks). Chunk 0
// accumulates into the gradient buffer, chunk k > 0 into its own zeroed buffer, added in chunk order (each
// element: chunk 0's value + chunk 1's + ...). With one chunk, ranges are reported as backward finishes
// them. With several, a range is final once every chunk's part is added: the discriminator region finishes
// the same ranges in every chunk (chunk 0 records them; the shared embeddings are not among them), so they
// are added and reported between the two regions, and their allreduce overlaps the generator's backward;
// the rest is added and reported after it.
template <typename W>
class ChunkGradients {
 public:
  using Ready = std::function<void(size_t, size_t)>;

  ChunkGradients(Backend<W>& wide, DeviceBuffer<W>& grads, std::vector<DeviceBuffer<W>>& extra, int chunks,
                 const StepHooks& hooks)
      : wide_(wide), grads_(grads), extra_(extra), chunks_(chunks), hook_(hooks.on_gradients_ready) {
    for (int k = 1; k < chunks_; ++k) {
      if (extra_[k - 1].size() != grads_.size()) extra_[k - 1].reset(wide_, grads_.size());
    }
    report_after_regions_ = chunks_ > 1 && static_cast<bool>(hook_);
    // Chunk 0 runs on the calling thread (for_each_chunk's static schedule): between its generator layers
    // it lets the caller progress the discriminator's allreduce (StepHooks::on_progress).
    if (hooks.on_progress) progress_ = [on_progress = hooks.on_progress](size_t, size_t) { on_progress(); };
  }

  // Chunk k's gradient buffer (zeroed here for k > 0: call from chunk k's first stage).
  W* buffer(int k) {
    if (k == 0) return grads_.data();
    if (!zeroed_[k]) wide_.fill(extra_[k - 1].data(), grads_.size(), W(0));
    zeroed_[k] = true;
    return extra_[k - 1].data();
  }
  const Ready& discriminator_hook(int k) const {
    if (k > 0) return kNone;
    return chunks_ == 1 ? hook_ : report_after_regions_ ? record_ : kNone;
  }
  const Ready& generator_hook(int k) const {
    if (k > 0) return kNone;
    return chunks_ == 1 ? hook_ : report_after_regions_ && progress_ ? progress_ : kNone;
  }
  // Between the two regions: the discriminator's ranges are added over chunks and reported.
  void discriminator_done() {
    if (!report_after_regions_) return;
    discriminator_merged_ = merged_ranges(discriminator_ranges_, grads_.size());
    for (const auto& [offset, count] : discriminator_merged_) add_chunks(offset, count);
    for (const auto& [offset, count] : discriminator_ranges_) hook_(offset, count);
  }
  // After the generator: the rest is added (and reported).
  void generator_done() {
    if (!report_after_regions_) {
      add_chunks(0, grads_.size());  // no hook: the whole buffers at once (nothing to add with one chunk)
      return;
    }
    for (const auto& [offset, count] : gaps_from_the_end(discriminator_merged_, grads_.size())) {
      add_chunks(offset, count);
      hook_(offset, count);
    }
  }

 private:
  void add_chunks(size_t offset, size_t count) {
    for (int k = 1; k < chunks_; ++k) wide_.accumulate(grads_.data() + offset, extra_[k - 1].data() + offset, count);
  }

  static inline const Ready kNone;
  Backend<W>& wide_;
  DeviceBuffer<W>& grads_;
  std::vector<DeviceBuffer<W>>& extra_;
  int chunks_;
  const Ready& hook_;
  bool report_after_regions_ = false;
  Ready progress_;
  std::vector<GradientRange> discriminator_ranges_;  // as chunk 0 reported them, in order
  std::vector<GradientRange> discriminator_merged_;
  const Ready record_ = [this](size_t offset, size_t count) { discriminator_ranges_.emplace_back(offset, count); };
  std::vector<char> zeroed_ = std::vector<char>(static_cast<size_t>(chunks_), 0);
};

}  // namespace

template <typename T>
void ElectraPretrainer<T>::backward() {
  if (last_.empty() || !std::all_of(last_.begin(), last_.end(), [](const Plan* p) { return p->ran; })) {
    fail("ElectraPretrainer::backward called without a preceding forward");
  }
  const auto phase = [this](StepPhase p) {
    if (hooks_.on_phase) hooks_.on_phase(p);
  };
  const int K = static_cast<int>(last_.size());
  if (K > 1 && extra_grads_.size() < static_cast<size_t>(K - 1)) extra_grads_.resize(K - 1);
  ChunkGradients<W> chunks(backend_.wide(), grads_, extra_grads_, K, hooks_);

  phase(StepPhase::kDiscriminatorBackward);
  for_each_chunk(K, [&](int k) { backward_discriminator(*last_[k], chunks.buffer(k), chunks.discriminator_hook(k)); });
  chunks.discriminator_done();
  phase(StepPhase::kGeneratorBackward);
  for_each_chunk(K, [&](int k) { backward_generator(*last_[k], chunks.buffer(k), chunks.generator_hook(k)); });
  chunks.generator_done();
  for (Plan* plan : last_) plan->ran = false;  // a second backward would add the same gradient twice
  phase(StepPhase::kBackwardDone);
}

// Discriminator: head -> encoder -> its embeddings projection (the shared tables get their part).
template <typename T>
void ElectraPretrainer<T>::backward_discriminator(Plan& plan, W* grads,
                                                  const std::function<void(size_t, size_t)>& ready) {
  Backend<T>& be = backend_;
  const T* params = weights();
  const PretrainerSlots& sl = layout_.slots;
  plan.disc_head.backward(be, params, grads, plan.d_disc_logits.data(), plan.d_disc_seq.data());
  if (ready) {
    const DiscriminatorHeadSlots& h = sl.discriminator_head;
    ready(h.dense.weight, h.prediction.bias + h.prediction.out - h.dense.weight);
  }
  plan.discriminator.backward(be, params, grads, plan.d_disc_seq.data(), ready);
}

// Generator: both heads add into d(sequence output), then encoder -> embeddings. The tied LM head adds
// into the word embedding gradient.
template <typename T>
void ElectraPretrainer<T>::backward_generator(Plan& plan, W* grads, const std::function<void(size_t, size_t)>& ready) {
  Backend<T>& be = backend_;
  const T* params = weights();
  const PretrainerSlots& sl = layout_.slots;
  const SentenceHeadSlots& sh = sl.sentence_head;
  const auto sentence_ready = [&] {
    if (ready) ready(sh.dense.weight, sh.out_proj.bias + sh.out_proj.out - sh.dense.weight);
  };
  if (!plan.has_sentence) sentence_ready();  // no next_sentence_labels: the sentence head's gradient stays as it is
  be.fill(plan.d_gen_seq.data(), static_cast<size_t>(plan.B) * plan.S * config_.generator.hidden_size, T(0));
  plan.mlm.backward(be, params, grads, plan.mlm.logits(), plan.d_gen_seq.data());  // d(logits), see forward
  if (ready) {
    const MlmHeadSlots& m = sl.mlm_head;  // dense, LayerNorm, lm bias (the tied table is shared)
    ready(m.dense.weight, m.output_bias + m.vocab_size - m.dense.weight);
  }
  if (plan.has_sentence) {
    plan.sentence_head.backward(be, params, grads, plan.d_sentence_logits.data(), plan.d_gen_seq.data());
    sentence_ready();
  }
  plan.generator.backward(be, params, grads, plan.d_gen_seq.data(), ready);
  if (ready) {
    const EmbeddingSlots& e = sl.generator.embeddings;  // the shared tables and LayerNorm, at offset 0
    ready(0, e.layer_norm.beta + e.layer_norm.width);
  }
}

template class ElectraPretrainer<float>;
template class ElectraPretrainer<double>;
template class ElectraPretrainer<bfloat16>;

}  // namespace electra
