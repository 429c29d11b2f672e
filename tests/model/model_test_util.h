// Helpers shared by the model tests: tiny configs, random batches, host<->device copies, one whole step's
// outputs and gradients, and a central finite-difference gradient checker.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/core/philox.h"
#include "lib/model/config.h"
#include "lib/model/pretrainer.h"

namespace electra::test {

// Whether this build has the fast oneDNN bf16 backend (the tests of it skip without).
inline bool onednn_built() {
#if defined(ELECTRA_HAVE_ONEDNN)
  return true;
#else
  return false;
#endif
}

// V 30, E 8; discriminator 12 wide, 2 heads, FFN 16; generator 6 wide, 2 heads, FFN 10; 2 layers each
// (both networks project the embeddings). 3 sentence classes.
inline PretrainerConfig tiny_config() {
  PretrainerConfig c;
  EncoderConfig& d = c.discriminator;
  d.vocab_size = 30;
  d.embedding_size = 8;
  d.hidden_size = 12;
  d.num_layers = 2;
  d.num_heads = 2;
  d.intermediate_size = 16;
  d.max_position_embeddings = 16;
  d.type_vocab_size = 2;
  d.hidden_dropout = 0.1f;
  d.attention_dropout = 0.1f;
  d.initializer_range = 0.2f;  // larger than 0.02 so FD checks see non-trivial nonlinearity
  c.generator.hidden_size = 6;
  c.generator.num_layers = 2;
  c.generator.num_heads = 2;
  c.generator.intermediate_size = 10;
  c.share_discriminator_settings();
  c.num_classes = 3;
  c.num_token_predictions = 3;
  c.mlm_initializer_stddev = 0.2f;
  return c;
}

// A model a little larger than tiny_config(): several chunks of sorted tokens in the embedding gradient,
// rows wider than a warp, 4 heads, a 500-token vocabulary.
inline PretrainerConfig small_config() {
  PretrainerConfig c;
  EncoderConfig& d = c.discriminator;
  d.vocab_size = 500;
  d.embedding_size = 32;
  d.hidden_size = 64;
  d.num_layers = 2;
  d.num_heads = 4;
  d.intermediate_size = 128;
  d.max_position_embeddings = 64;
  c.generator.hidden_size = 32;
  c.generator.num_layers = 2;
  c.generator.num_heads = 2;
  c.generator.intermediate_size = 64;
  c.share_discriminator_settings();
  c.num_token_predictions = 7;
  c.disallow_correct = true;
  return c;
}

// One forward + backward from zeroed gradients: the outputs and the gradient buffer on the host (P =
// Wide<T>: float for bf16 storage).
template <typename P>
struct StepResult {
  PretrainerOutputs<P> out;
  std::vector<P> grads;
};

template <typename T>
StepResult<Wide<T>> run_step(ElectraPretrainer<T>& model, const Batch& batch, const StepContext& ctx) {
  model.zero_gradients();
  StepResult<Wide<T>> r{model.forward(batch, ctx), {}};
  model.backward();
  r.grads = model.gradients_to_host();
  return r;
}

// Uniform in [lo, hi) from a Philox test stream.
inline std::vector<double> random_values(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  PhiloxSequence rng(seed, RandomPurpose::kTest, 0, 0);
  std::vector<double> out(n);
  for (double& x : out) x = lo + (hi - lo) * rng.next_uniform();
  return out;
}

// A batch of B rows of length S with P predictions. Row b has length S - (b % 3) (the rest padding);
// predictions at distinct random positions in [1, length), the last one of odd rows padded (weight 0).
inline Batch random_batch(int B, int S, int P, int V, uint64_t seed, bool with_nsp = false, int num_classes = 2) {
  PhiloxSequence rng(seed, RandomPurpose::kTest, 1, 0);
  Batch b;
  b.rows = B;
  b.seq_length = S;
  b.num_predictions = P;
  b.global_batch_rows = B;
  const int kMask = 3;  // a "[MASK]" id
  for (int r = 0; r < B; ++r) {
    const int length = S - (r % 3);
    std::vector<int32_t> ids(S), type(S), mask(S);
    for (int s = 0; s < S; ++s) {
      mask[s] = s < length;
      ids[s] = s < length ? 4 + static_cast<int>(rng.next_below(V - 4)) : 0;
      type[s] = s < length && s >= length / 2 ? 1 : 0;
    }
    std::vector<int> candidates;
    for (int s = 1; s < length; ++s) candidates.push_back(s);
    for (int p = 0; p < P; ++p) {
      const bool padded = (r % 2 == 1) && p == P - 1;
      if (padded || candidates.empty()) {
        b.masked_lm_positions.push_back(0);
        b.masked_lm_ids.push_back(0);
        b.masked_lm_weights.push_back(0.0f);
        continue;
      }
      const int k = static_cast<int>(rng.next_below(static_cast<uint32_t>(candidates.size())));
      const int pos = candidates[k];
      candidates.erase(candidates.begin() + k);
      b.masked_lm_positions.push_back(pos);
      b.masked_lm_ids.push_back(ids[pos]);
      b.masked_lm_weights.push_back(1.0f);
      ids[pos] = kMask;
    }
    b.input_word_ids.insert(b.input_word_ids.end(), ids.begin(), ids.end());
    b.input_type_ids.insert(b.input_type_ids.end(), type.begin(), type.end());
    b.input_mask.insert(b.input_mask.end(), mask.begin(), mask.end());
    if (with_nsp) b.next_sentence_labels.push_back(static_cast<int32_t>(rng.next_below(num_classes)));
  }
  return b;
}

// Rows [begin, end) of a batch as its own slice (global_row_offset shifted).
inline Batch slice_batch(const Batch& full, int begin, int end) {
  Batch b;
  const int S = full.seq_length, P = full.num_predictions;
  b.rows = end - begin;
  b.seq_length = S;
  b.num_predictions = P;
  b.global_batch_rows = full.global_batch_rows;
  b.global_row_offset = full.global_row_offset + begin;
  auto take = [&](const auto& src, auto& dst, int width) {
    dst.assign(src.begin() + static_cast<long>(begin) * width, src.begin() + static_cast<long>(end) * width);
  };
  take(full.input_word_ids, b.input_word_ids, S);
  take(full.input_mask, b.input_mask, S);
  take(full.input_type_ids, b.input_type_ids, S);
  take(full.masked_lm_positions, b.masked_lm_positions, P);
  take(full.masked_lm_ids, b.masked_lm_ids, P);
  take(full.masked_lm_weights, b.masked_lm_weights, P);
  if (!full.next_sentence_labels.empty()) take(full.next_sentence_labels, b.next_sentence_labels, 1);
  return b;
}

template <typename T>
std::vector<T> to_host(Backend<T>& be, const T* p, size_t n) {
  std::vector<T> out(n);
  be.copy_to_host(out.data(), p, n);
  return out;
}

// Central differences of f over values[i] for every i in `indices`, compared with analytic[i].
// Passes when ||fd - analytic|| <= tol * ||analytic|| over the checked entries and every entry satisfies
// |fd - an| <= tol * (|an| + 1e-3 * max|an|) (small entries are held to the scale of the large ones).
struct FdResult {
  double max_rel = 0.0;   // worst entry error / (|an| + 1e-3 max|an|)
  double norm_rel = 0.0;  // ||fd - an|| / ||an||
  size_t worst = 0;
  double worst_fd = 0.0, worst_an = 0.0;
  size_t checked = 0;
};

inline FdResult finite_difference(std::vector<double>& values, const std::vector<double>& analytic,
                                  const std::vector<size_t>& indices, const std::function<double()>& f,
                                  double eps = 1e-5) {
  FdResult r;
  std::vector<double> fd(indices.size());
  double scale = 0.0;
  for (size_t k = 0; k < indices.size(); ++k) {
    const size_t i = indices[k];
    const double saved = values[i];
    values[i] = saved + eps;
    const double plus = f();
    values[i] = saved - eps;
    const double minus = f();
    values[i] = saved;
    fd[k] = (plus - minus) / (2 * eps);
    scale = std::max(scale, std::abs(analytic[i]));
  }
  double diff2 = 0.0, an2 = 0.0;
  for (size_t k = 0; k < indices.size(); ++k) {
    const double an = analytic[indices[k]];
    const double err = std::abs(fd[k] - an);
    diff2 += err * err;
    an2 += an * an;
    const double rel = err / (std::abs(an) + 1e-3 * scale + 1e-300);
    if (rel > r.max_rel) {
      r.max_rel = rel;
      r.worst = indices[k];
      r.worst_fd = fd[k];
      r.worst_an = an;
    }
  }
  r.norm_rel = std::sqrt(diff2) / (std::sqrt(an2) + 1e-300);
  r.checked = indices.size();
  return r;
}

inline std::vector<size_t> all_indices(size_t n) {
  std::vector<size_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = i;
  return out;
}

inline ::testing::AssertionResult fd_ok(const FdResult& r, double tol, const std::string& what) {
  if (r.checked == 0) return ::testing::AssertionFailure() << what << ": nothing checked";
  if (r.norm_rel <= tol && r.max_rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": norm rel " << r.norm_rel << ", worst entry " << r.worst << " fd "
                                       << r.worst_fd << " analytic " << r.worst_an << " (rel " << r.max_rel << ") over "
                                       << r.checked << " entries";
}

// ||a - b|| / ||b|| over [offset, offset + n).
template <typename W>
double rel_l2(const std::vector<W>& a, const std::vector<W>& b, size_t offset, size_t n) {
  double d2 = 0, b2 = 0;
  for (size_t i = offset; i < offset + n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    d2 += d * d;
    b2 += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return b2 == 0 ? std::sqrt(d2) : std::sqrt(d2 / b2);
}

// What a step on the same examples laid out another way (trimmed, packed) must match: the losses (relative `tol`),
// every parameter tensor's gradient (relative L2 `tol`; the key biases, whose gradient is 0 up to rounding, against the
// largest gradient), and at most `max_sample_diffs` different samples.
template <typename W>
void expect_same_step(const StepResult<W>& got, const StepResult<W>& want, const ParameterLayout& layout, double tol,
                      size_t max_sample_diffs, const std::string& what) {
  const PretrainerLosses& g = got.out.losses;
  const PretrainerLosses& w = want.out.losses;
  EXPECT_NEAR(g.total_loss, w.total_loss, tol * std::abs(w.total_loss)) << what;
  EXPECT_NEAR(g.mlm_loss, w.mlm_loss, tol * std::abs(w.mlm_loss)) << what;
  EXPECT_NEAR(g.disc_loss, w.disc_loss, tol * std::abs(w.disc_loss)) << what;
  EXPECT_NEAR(g.sentence_loss, w.sentence_loss, tol * std::abs(w.sentence_loss)) << what;
  EXPECT_EQ(g.mlm_weight_sum, w.mlm_weight_sum) << what;
  EXPECT_EQ(g.disc_token_count, w.disc_token_count) << what;
  size_t sample_diffs = 0;
  ASSERT_EQ(got.out.sampled_ids.size(), want.out.sampled_ids.size()) << what;
  for (size_t i = 0; i < want.out.sampled_ids.size(); ++i)
    sample_diffs += got.out.sampled_ids[i] != want.out.sampled_ids[i];
  EXPECT_LE(sample_diffs, max_sample_diffs) << what;
  double gmax = 0;
  for (W x : want.grads) gmax = std::max(gmax, std::abs(static_cast<double>(x)));
  ASSERT_GT(gmax, 0) << what;
  double worst = 0;
  std::string worst_name;
  for (const ParameterSlice& v : layout.slices()) {
    double err = rel_l2(got.grads, want.grads, v.offset, v.size);
    if (v.name.find("attention.self.key.bias") != std::string::npos) {
      double d = 0;
      for (size_t i = v.offset; i < v.offset + v.size; ++i) {
        d = std::max(d, std::abs(static_cast<double>(got.grads[i]) - static_cast<double>(want.grads[i])));
      }
      err = d / gmax;
    }
    EXPECT_LE(err, tol) << what << ": " << v.name;
    if (err > worst) worst = err, worst_name = v.name;
  }
  std::printf("%s: worst gradient error %.2e (%s), %zu of %zu samples differ, total loss %.9f vs %.9f\n", what.c_str(),
              worst, worst_name.c_str(), sample_diffs, want.out.sampled_ids.size(), g.total_loss, w.total_loss);
}

}  // namespace electra::test
