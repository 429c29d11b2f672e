// Trimming a batch of its padding (data.trim_padding): needed_seq_length / copy_rows (lib/core/batch.h) cut
// a batch to its longest row, and ElectraPretrainer runs the cut batch on the prefixes of the plan of its
// untrimmed length, with attention dropout keyed by that length (DropoutKey::key_seq_length). Checked here:
// the helpers; the attention keep bits of a trimmed call are the untrimmed call's; a trimmed step's losses,
// outputs and every gradient equal the untrimmed step's within float rounding with dropout on (fp32 and fp64
// reference, materialised and fused attention, parallel chunks, micro-batches trimmed one by one, both CPU
// bf16 backends with a bf16 tolerance); trimmed steps of any length allocate no plan after the first step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/backend/cpu/kernels.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/core/philox.h"
#include "lib/model/pretrainer.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

// B rows of S slots: row r has 4 + (Philox draw) % (max_length - 3) real tokens, then padding; P predictions at
// distinct real positions (never [CLS]), the last one of odd rows padded (weight 0, position 0).
Batch short_rows(int B, int S, int P, int V, uint64_t seed, int max_length, bool with_nsp = true, int classes = 2) {
  PhiloxSequence rng(seed, RandomPurpose::kTest, 2, 0);
  Batch b;
  b.rows = B;
  b.seq_length = S;
  b.num_predictions = P;
  b.global_batch_rows = B;
  for (int r = 0; r < B; ++r) {
    const int length = 4 + static_cast<int>(rng.next_below(static_cast<uint32_t>(max_length - 3)));
    std::vector<int32_t> ids(S, 0), type(S, 0), mask(S, 0);
    for (int s = 0; s < length; ++s) {
      ids[s] = 4 + static_cast<int>(rng.next_below(static_cast<uint32_t>(V - 4)));
      type[s] = s >= length / 2 ? 1 : 0;
      mask[s] = 1;
    }
    std::vector<int> candidates;
    for (int s = 1; s < length; ++s) candidates.push_back(s);
    for (int p = 0; p < P; ++p) {
      if ((r % 2 == 1 && p == P - 1) || candidates.empty()) {
        b.masked_lm_positions.push_back(0);
        b.masked_lm_ids.push_back(0);
        b.masked_lm_weights.push_back(0.0f);
        continue;
      }
      const size_t k = rng.next_below(static_cast<uint32_t>(candidates.size()));
      const int pos = candidates[k];
      candidates.erase(candidates.begin() + static_cast<long>(k));
      b.masked_lm_positions.push_back(pos);
      b.masked_lm_ids.push_back(ids[pos]);
      b.masked_lm_weights.push_back(1.0f);
      ids[pos] = 3;  // [MASK]
    }
    b.input_word_ids.insert(b.input_word_ids.end(), ids.begin(), ids.end());
    b.input_type_ids.insert(b.input_type_ids.end(), type.begin(), type.end());
    b.input_mask.insert(b.input_mask.end(), mask.begin(), mask.end());
    if (with_nsp) b.next_sentence_labels.push_back(static_cast<int32_t>(rng.next_below(classes)));
  }
  return b;
}

Batch trimmed(const Batch& batch, int begin, int end) {
  Batch out;
  copy_rows(batch, begin, end, needed_seq_length(batch, begin, end), out);
  return out;
}

StepContext training_context() {
  StepContext ctx;
  ctx.seed = 71;
  ctx.step = 5;
  ctx.training = true;  // dropout on: the keys must line up
  return ctx;
}

// The discriminator's logits and labels of the trimmed batch's real tokens are the untrimmed ones.
template <typename W>
void expect_same_real_tokens(const PretrainerOutputs<W>& got, const PretrainerOutputs<W>& want, const Batch& full,
                             int S_trimmed, double tol, const std::string& what) {
  const int S = full.seq_length;
  double scale = 0;
  for (W x : want.disc_logits) scale = std::max(scale, std::abs(static_cast<double>(x)));
  for (int b = 0; b < full.rows; ++b) {
    for (int s = 0; s < S_trimmed; ++s) {
      const size_t g = static_cast<size_t>(b) * S_trimmed + s, w = static_cast<size_t>(b) * S + s;
      if (full.input_mask[w] == 0) continue;
      ASSERT_NEAR(got.disc_logits[g], want.disc_logits[w], tol * (scale + 1)) << what << " row " << b << " pos " << s;
      ASSERT_EQ(got.disc_label[g], want.disc_label[w]) << what << " row " << b << " pos " << s;
    }
  }
}

// ---- the batch helpers ----

TEST(TrimPadding, NeededSeqLength) {
  Batch b = short_rows(3, 40, 2, 30, 1, 4);  // rows of 4 real tokens: predictions at 1..3
  EXPECT_EQ(needed_seq_length(b, 0, 3), 8);
  for (int s = 0; s < 11; ++s) b.input_mask[40 + s] = 1;  // row 1: 11 real tokens
  EXPECT_EQ(needed_seq_length(b, 0, 3), 16);
  EXPECT_EQ(needed_seq_length(b, 0, 1), 8);  // row 0 alone
  EXPECT_EQ(needed_seq_length(b, 2, 3), 8);
  b.masked_lm_positions[2 * 2 + 1] = 20;  // row 2: a masked position past its real tokens counts too (weight or not)
  EXPECT_EQ(needed_seq_length(b, 2, 3), 24);
  b.input_mask[39] = 1;  // row 0: a real token in the last slot: nothing to trim
  EXPECT_EQ(needed_seq_length(b, 0, 1), 40);
  b.input_mask[35] = 1;  // not a multiple of 8 past S - 8: capped at S
  b.input_mask[39] = 0;
  EXPECT_EQ(needed_seq_length(b, 0, 1), 40);
  Batch empty = short_rows(1, 24, 1, 30, 2, 4);
  std::fill(empty.input_mask.begin(), empty.input_mask.end(), 0);
  std::fill(empty.masked_lm_positions.begin(), empty.masked_lm_positions.end(), 0);
  EXPECT_EQ(needed_seq_length(empty, 0, 1), 8);  // at least [CLS], rounded up
  EXPECT_EQ(needed_seq_length(empty, 1, 1), 8);  // no rows
  EXPECT_THROW(needed_seq_length(b, 2, 4), Error);
}

TEST(TrimPadding, CopyRowsCutsAndReuses) {
  Batch b = short_rows(6, 32, 3, 30, 3, 12);
  b.global_row_offset = 100;
  b.example_index = {10, 11, 12, 13, 14, 15};
  Batch out;
  copy_rows(b, 2, 5, 16, out);
  EXPECT_EQ(out.rows, 3);
  EXPECT_EQ(out.seq_length, 16);
  EXPECT_EQ(out.slot_seq_length, 32);
  EXPECT_EQ(out.slot_length(), 32);
  EXPECT_EQ(out.num_predictions, 3);
  EXPECT_EQ(out.global_row_offset, 102u);
  EXPECT_EQ(out.global_batch_rows, 6);
  EXPECT_EQ(out.example_index, (std::vector<uint64_t>{12, 13, 14}));
  EXPECT_EQ(out.next_sentence_labels,
            (std::vector<int32_t>(b.next_sentence_labels.begin() + 2, b.next_sentence_labels.begin() + 5)));
  for (int r = 0; r < 3; ++r) {
    for (int s = 0; s < 16; ++s) {
      EXPECT_EQ(out.input_word_ids[r * 16 + s], b.input_word_ids[(r + 2) * 32 + s]);
      EXPECT_EQ(out.input_mask[r * 16 + s], b.input_mask[(r + 2) * 32 + s]);
      EXPECT_EQ(out.input_type_ids[r * 16 + s], b.input_type_ids[(r + 2) * 32 + s]);
    }
    for (int p = 0; p < 3; ++p) {
      EXPECT_EQ(out.masked_lm_positions[r * 3 + p], b.masked_lm_positions[(r + 2) * 3 + p]);
      EXPECT_EQ(out.masked_lm_ids[r * 3 + p], b.masked_lm_ids[(r + 2) * 3 + p]);
      EXPECT_EQ(out.masked_lm_weights[r * 3 + p], b.masked_lm_weights[(r + 2) * 3 + p]);
    }
  }
  // A trimmed copy of a trimmed copy keeps the original slot length (the dropout keys' length).
  Batch again;
  copy_rows(out, 0, 2, 16, again);
  EXPECT_EQ(again.slot_seq_length, 32);
  EXPECT_EQ(again.global_row_offset, 102u);

  // Reused: no allocation once it has held the largest slice.
  copy_rows(b, 0, 6, 32, out);
  const int32_t* ids = out.input_word_ids.data();
  const float* weights = out.masked_lm_weights.data();
  for (int seq : {16, 24, 32}) {
    copy_rows(b, 1, 4, seq, out);
    EXPECT_EQ(out.input_word_ids.data(), ids) << seq;
    EXPECT_EQ(out.masked_lm_weights.data(), weights) << seq;
  }

  // Nothing real may be cut off; the lengths must make sense.
  Batch full = short_rows(2, 16, 2, 30, 4, 12);
  full.input_mask[15] = 1;
  EXPECT_THROW(copy_rows(full, 0, 1, 8, out), Error);
  EXPECT_NO_THROW(copy_rows(full, 1, 2, needed_seq_length(full, 1, 2), out));
  Batch late = short_rows(1, 16, 2, 30, 5, 4);
  late.masked_lm_positions[1] = 12;  // a padded prediction's position still has to fit
  EXPECT_THROW(copy_rows(late, 0, 1, 8, out), Error);
  EXPECT_THROW(copy_rows(full, 0, 1, 0, out), Error);
  EXPECT_THROW(copy_rows(full, 0, 1, 17, out), Error);
  EXPECT_THROW(copy_rows(full, 1, 3, 16, out), Error);
}

// ---- the attention keep bits ----

// The keep bits of an attention call over S keys of a batch trimmed from Sk slots (key_seq_length = Sk) are
// the top-left [S,S] block of each (b, h) pair of the untrimmed call's; key_seq_length = S is the plain key.
template <typename T>
void expect_trimmed_keep_bits(Backend<T>& be, const std::string& what) {
  const int B = 3, H = 2, D = 4, Sk = 21, S = 13;
  const float dropout = 0.3f;
  const auto make_key = [&](int key_seq) {
    DropoutKey key{5, 6, 7, 40, static_cast<uint64_t>(H) * Sk * Sk};
    key.key_seq_length = key_seq;
    return key;
  };
  const auto run = [&](int seq, const DropoutKey& key) {
    const std::vector<double> values = test::random_values(static_cast<size_t>(B) * seq * 3 * H * D, 17);
    std::vector<T> host(values.begin(), values.end());
    std::vector<int32_t> mask(static_cast<size_t>(B) * seq, 1);
    const size_t n = static_cast<size_t>(B) * H * seq * seq;
    T* qkv = be.allocate(host.size());
    T* context = be.allocate(static_cast<size_t>(B) * seq * H * D);
    T* probs = be.allocate(n);
    uint8_t* keep = be.allocate_bytes(n);
    int32_t* m = be.allocate_ints(mask.size());
    be.copy_from_host(qkv, host.data(), host.size());
    be.copy_ints_from_host(m, mask.data(), mask.size());
    be.attention_forward(context, probs, keep, qkv, m, B, seq, H, D, dropout, key);
    std::vector<uint8_t> bits(n);
    std::copy_n(keep, n, bits.data());  // CPU memory
    be.deallocate(qkv), be.deallocate(context), be.deallocate(probs), be.deallocate_bytes(keep), be.deallocate_ints(m);
    return bits;
  };
  const std::vector<uint8_t> full = run(Sk, make_key(0));
  EXPECT_EQ(run(Sk, make_key(Sk)), full) << what << ": key_seq_length = S is the plain key";
  const std::vector<uint8_t> cut = run(S, make_key(Sk));
  size_t dropped = 0;
  for (int bh = 0; bh < B * H; ++bh) {
    for (int q = 0; q < S; ++q) {
      for (int k = 0; k < S; ++k) {
        const uint8_t want = full[(static_cast<size_t>(bh) * Sk + q) * Sk + k];
        ASSERT_EQ(cut[(static_cast<size_t>(bh) * S + q) * S + k], want)
            << what << " pair " << bh << " (" << q << ", " << k << ")";
        dropped += want == 0;
      }
    }
  }
  EXPECT_GT(dropped, 0u) << what;
  // The same bits through cpu::attention_keep_mask, which the fused kernels call.
  std::vector<uint8_t> bits(static_cast<size_t>(S) * S);
  cpu::attention_keep_mask(bits.data(), 2, 1, H, S, dropout, make_key(Sk));
  EXPECT_TRUE(std::equal(bits.begin(), bits.end(), cut.begin() + static_cast<long>(5) * S * S)) << what;
  DropoutKey short_key = make_key(S - 1);  // a key shorter than the call is refused
  EXPECT_THROW(cpu::attention_keep_mask(bits.data(), 0, 0, H, S, dropout, short_key), Error) << what;
}

TEST(TrimPadding, AttentionKeepBitsAreTheUntrimmedOnes) {
  auto f = make_cpu_backend<float>();
  expect_trimmed_keep_bits(*f, "cpu-float");
  auto d = make_cpu_backend<double>();
  expect_trimmed_keep_bits(*d, "cpu-double");
  auto ref = make_cpu_bf16_backend(*f);
  expect_trimmed_keep_bits(*ref, "cpu-bf16");
  if (test::onednn_built()) {
    auto fast = make_onednn_bf16_backend(*f);
    expect_trimmed_keep_bits(*fast, "cpu-bf16-onednn");
  }
}

// ---- whole steps ----

// fp32 and fp64 reference: one step of a batch of short rows, trimmed and not, for both attention
// implementations and 1 or 2 parallel chunks (each trimmed model against the untrimmed one with the same
// settings).
template <typename T>
void expect_trimmed_step_matches(double tol, const std::string& what) {
  const PretrainerConfig c = test::small_config();  // 4 heads, dropout 0.1, max positions 64
  auto be = make_cpu_backend<T>();
  ElectraPretrainer<T> model(c, *be);
  model.init_parameters(72);
  Batch full = short_rows(6, 64, c.num_token_predictions, c.vocab_size, 73, 27);
  full.global_row_offset = 12;
  const Batch cut = trimmed(full, 0, full.rows);
  ASSERT_LE(cut.seq_length, 32);
  ASSERT_EQ(cut.slot_seq_length, 64);
  const StepContext ctx = training_context();
  for (AttentionImpl impl : {AttentionImpl::kMaterialized, AttentionImpl::kFused}) {
    for (int chunks : {1, 2}) {
      const std::string label = what + ", " + to_string(impl) + ", " + std::to_string(chunks) + " chunk(s)";
      model.set_attention_impl(impl);
      model.set_parallel_chunks(chunks);
      const test::StepResult<Wide<T>> want = test::run_step(model, full, ctx);
      const test::StepResult<Wide<T>> got = test::run_step(model, cut, ctx);
      EXPECT_EQ(got.out.seq_length, cut.seq_length) << label;
      test::expect_same_step(got, want, model.layout(), tol, 0, label);
      expect_same_real_tokens(got.out, want.out, full, cut.seq_length, tol, label);
    }
  }
}

TEST(TrimPadding, StepMatchesTheUntrimmedStepFp32) { expect_trimmed_step_matches<float>(2e-5, "fp32"); }
TEST(TrimPadding, StepMatchesTheUntrimmedStepFp64) { expect_trimmed_step_matches<double>(1e-11, "fp64"); }

// Micro-batches, as electra-train runs them: each trimmed to its own rows' longest (different lengths),
// losses normalised by the global batch's counts, gradients accumulated over the micro-batches: the one
// untrimmed step's losses and gradients.
TEST(TrimPadding, MicroBatchesTrimmedOneByOne) {
  const PretrainerConfig c = test::small_config();
  auto be = make_cpu_backend<double>();
  ElectraPretrainer<double> model(c, *be);
  model.init_parameters(74);
  Batch full = short_rows(8, 64, c.num_token_predictions, c.vocab_size, 75, 20);
  for (int s = 0; s < 45; ++s) full.input_mask[6 * 64 + s] = 1;  // one long row in the second half
  StepContext ctx = training_context();
  double weights = 0, tokens = 0;
  for (float w : full.masked_lm_weights) weights += w;
  for (int32_t m : full.input_mask) tokens += m;
  ctx.global = GlobalNormalizers{weights, tokens, static_cast<double>(full.rows)};
  const test::StepResult<double> want = test::run_step(model, full, ctx);

  model.zero_gradients();
  Batch micro;  // reused, as the trainer's
  test::StepResult<double> got;
  std::vector<int> lengths;
  for (int begin = 0; begin < full.rows; begin += 4) {
    copy_rows(full, begin, begin + 4, needed_seq_length(full, begin, begin + 4), micro);
    lengths.push_back(micro.seq_length);
    const PretrainerOutputs<double>& out = model.forward(micro, ctx);
    got.out.losses.total_loss += out.losses.total_loss;
    got.out.losses.mlm_loss += out.losses.mlm_loss;
    got.out.losses.disc_loss += out.losses.disc_loss;
    got.out.losses.sentence_loss += out.losses.sentence_loss;
    got.out.losses.mlm_weight_sum += out.losses.mlm_weight_sum;
    got.out.losses.disc_token_count += out.losses.disc_token_count;
    got.out.sampled_ids.insert(got.out.sampled_ids.end(), out.sampled_ids.begin(), out.sampled_ids.end());
    model.backward();
  }
  got.grads = model.gradients_to_host();
  ASSERT_EQ(lengths.size(), 2u);
  EXPECT_LE(lengths[0], 24);
  EXPECT_EQ(lengths[1], 48);
  test::expect_same_step(got, want, model.layout(), 1e-11, 0, "fp64, 2 micro-batches of 4");
}

// Both CPU backends of bf16 storage: a trimmed step against the untrimmed one on the same backend. Sums over
// fewer (zero) terms round differently in fp32, and a bf16 store can then round the other way, so the
// tolerance is bf16's; the key lines up all the same (the keep bits are checked exactly above).
class TrimPaddingBf16 : public ::testing::TestWithParam<std::string> {};

TEST_P(TrimPaddingBf16, StepMatchesTheUntrimmedStep) {
  if (GetParam() == "onednn" && !test::onednn_built()) GTEST_SKIP() << "this build has no oneDNN";
  const PretrainerConfig c = test::small_config();
  auto wide = make_cpu_backend<float>();
  ElectraPretrainer<bfloat16> model(
      c, GetParam() == "onednn" ? make_onednn_bf16_backend(*wide) : make_cpu_bf16_backend(*wide));
  model.init_parameters(76);
  Batch full = short_rows(6, 64, c.num_token_predictions, c.vocab_size, 77, 30);
  full.global_row_offset = 3;
  const Batch cut = trimmed(full, 0, full.rows);
  ASSERT_LE(cut.seq_length, 32);
  const StepContext ctx = training_context();
  for (int chunks : {1, 2}) {
    model.set_parallel_chunks(chunks);
    const std::string label = "bf16 " + GetParam() + ", " + std::to_string(chunks) + " chunk(s)";
    const test::StepResult<float> want = test::run_step(model, full, ctx);
    const test::StepResult<float> got = test::run_step(model, cut, ctx);
    test::expect_same_step(got, want, model.layout(), 1e-2, want.out.sampled_ids.size() / 10, label);
  }
}

INSTANTIATE_TEST_SUITE_P(CpuBackends, TrimPaddingBf16, ::testing::Values("reference", "onednn"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// Plans are sized for the untrimmed length: after the first step, trimmed batches of every length (and the
// untrimmed one) run without a new plan, with one chunk or two.
TEST(TrimPadding, NoPlanAfterTheFirstStep) {
  const PretrainerConfig c = test::small_config();
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(78);
  const StepContext ctx = training_context();
  for (int chunks : {1, 2}) {
    model.set_parallel_chunks(chunks);
    const size_t before = model.plans_made();
    std::vector<int> seen;
    for (int max_length : {5, 13, 30, 50, 64, 9}) {
      const Batch full = short_rows(4, 64, c.num_token_predictions, c.vocab_size, 79 + max_length, max_length);
      const Batch cut = trimmed(full, 0, full.rows);
      seen.push_back(cut.seq_length);
      test::run_step(model, cut, ctx);
      EXPECT_EQ(model.plans_made(), before + chunks) << "chunks " << chunks << ", trimmed to " << cut.seq_length;
    }
    test::run_step(model, short_rows(4, 64, c.num_token_predictions, c.vocab_size, 90, 64), ctx);
    EXPECT_EQ(model.plans_made(), before + chunks) << "chunks " << chunks << ", untrimmed";
    std::sort(seen.begin(), seen.end());
    EXPECT_GE(std::unique(seen.begin(), seen.end()) - seen.begin(), 4) << "the lengths should vary";
  }
  // A batch claiming a slot length shorter than its own is refused.
  Batch bad = short_rows(2, 32, c.num_token_predictions, c.vocab_size, 91, 10);
  bad.slot_seq_length = 16;
  EXPECT_THROW(model.forward(bad, ctx), Error);
}

}  // namespace
}  // namespace electra
