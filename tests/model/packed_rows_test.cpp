// Packed rows (electra-preprocess --pack): several examples one after another in a row, Batch::input_mask
// holding each token's example index (1, 2, ...) and Batch::position_ids each token's position in its own
// example. Attention is block-diagonal over the examples and positions restart, so a step on packed rows must
// give each example what it gets alone in a row of its own: the same losses, generator samples,
// discriminator logits and every gradient, within float rounding. Checked for the fp32 and fp64 reference
// (materialised and fused attention, 1 and 2 parallel chunks) and both CPU bf16 backends (bf16 tolerance).
// Dropout is off and the generator samples at a temperature near 0: dropout bits and Gumbel noise are keyed
// by row and prediction slot, which packing moves.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/batch.h"
#include "lib/core/philox.h"
#include "lib/model/pretrainer.h"
#include "tests/model/model_test_util.h"

namespace electra {
namespace {

// small_config() without dropout, sampling its argmax (see the file comment).
PretrainerConfig packing_config() {
  PretrainerConfig c = test::small_config();
  c.discriminator.hidden_dropout = 0.0f;
  c.discriminator.attention_dropout = 0.0f;
  c.share_discriminator_settings();
  c.temperature = 1e-6f;
  return c;
}

struct Example {
  std::vector<int32_t> ids, types;  // [CLS] ... [SEP] ... [SEP], [MASK] at the predictions
  std::vector<int32_t> positions, labels;
};

constexpr int kPredictions = 3;

Example make_example(int length, int V, PhiloxSequence& rng) {
  Example e;
  for (int s = 0; s < length; ++s) {
    e.ids.push_back(4 + static_cast<int>(rng.next_below(static_cast<uint32_t>(V - 4))));
    e.types.push_back(s > length / 2 ? 1 : 0);
  }
  e.ids.front() = 1;  // [CLS]
  e.ids.back() = 2;   // [SEP]
  for (int p = 0; p < kPredictions; ++p) {
    const int position = 1 + p * (length - 2) / kPredictions;  // distinct, never [CLS] or the last [SEP]
    e.positions.push_back(position);
    e.labels.push_back(e.ids[position]);
    e.ids[position] = 3;  // [MASK]
  }
  return e;
}

// Rows of S slots; row r holds the examples rows[r] one after another, then padding. packed: input_mask is the
// example's index in the row and position_ids restart; else each row must hold one example (input_mask 1,
// position_ids empty).
Batch layout(const std::vector<Example>& examples, const std::vector<std::vector<int>>& rows, int S, bool packed) {
  Batch b;
  b.rows = static_cast<int>(rows.size());
  b.seq_length = S;
  b.global_batch_rows = b.rows;
  size_t P = 0;
  for (const auto& row : rows) P = std::max(P, row.size() * kPredictions);
  b.num_predictions = static_cast<int>(P);
  b.input_word_ids.assign(static_cast<size_t>(b.rows) * S, 0);
  b.input_type_ids.assign(b.input_word_ids.size(), 0);
  b.input_mask.assign(b.input_word_ids.size(), 0);
  if (packed) b.position_ids.assign(b.input_word_ids.size(), 0);
  b.masked_lm_positions.assign(static_cast<size_t>(b.rows) * P, 0);
  b.masked_lm_ids.assign(b.masked_lm_positions.size(), 0);
  b.masked_lm_weights.assign(b.masked_lm_positions.size(), 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) {
    int offset = 0, prediction = 0;
    for (size_t k = 0; k < rows[r].size(); ++k) {
      const Example& e = examples[static_cast<size_t>(rows[r][k])];
      for (size_t s = 0; s < e.ids.size(); ++s) {
        const size_t slot = r * S + offset + s;
        b.input_word_ids[slot] = e.ids[s];
        b.input_type_ids[slot] = e.types[s];
        b.input_mask[slot] = static_cast<int32_t>(k + 1);
        if (packed) b.position_ids[slot] = static_cast<int32_t>(s);
      }
      for (int p = 0; p < kPredictions; ++p, ++prediction) {
        const size_t slot = r * P + prediction;
        b.masked_lm_positions[slot] = offset + e.positions[p];
        b.masked_lm_ids[slot] = e.labels[p];
        b.masked_lm_weights[slot] = 1.0f;
      }
      offset += static_cast<int>(e.ids.size());
    }
  }
  return b;
}

struct Batches {
  std::vector<Example> examples;
  std::vector<std::vector<int>> packing;  // the examples of each packed row
  Batch alone, packed;
};

// Six examples of 6 to 24 tokens in rows of 32: alone, one per row; packed, two or three per row.
Batches make_batches(int V) {
  PhiloxSequence rng(91, RandomPurpose::kTest, 3, 0);
  Batches out;
  for (int length : {9, 14, 6, 20, 11, 7}) out.examples.push_back(make_example(length, V, rng));
  out.packing = {{0, 1, 2}, {3, 4}, {5}};
  std::vector<std::vector<int>> one_each;
  for (int i = 0; i < 6; ++i) one_each.push_back({i});
  out.alone = layout(out.examples, one_each, 32, false);
  out.packed = layout(out.examples, out.packing, 32, true);
  return out;
}

// Where each example's tokens and predictions sit in each layout: the samples and the real tokens' logits and
// labels of the packed step are the lone examples'.
template <typename W>
void expect_same_examples(const PretrainerOutputs<W>& packed, const PretrainerOutputs<W>& alone, const Batches& b,
                          double tol, const std::string& what) {
  const int S = b.packed.seq_length, P_packed = b.packed.num_predictions, P_alone = b.alone.num_predictions;
  ASSERT_EQ(packed.disc_logits.size(), static_cast<size_t>(b.packed.rows) * S) << what;
  double scale = 0;
  for (W x : alone.disc_logits) scale = std::max(scale, std::abs(static_cast<double>(x)));
  for (size_t r = 0; r < b.packing.size(); ++r) {
    int offset = 0, prediction = 0;
    for (int example : b.packing[r]) {
      const Example& e = b.examples[static_cast<size_t>(example)];
      for (int p = 0; p < kPredictions; ++p, ++prediction) {
        ASSERT_EQ(packed.sampled_ids[r * P_packed + prediction], alone.sampled_ids[example * P_alone + p])
            << what << " example " << example << " prediction " << p;
      }
      for (size_t s = 0; s < e.ids.size(); ++s) {
        const size_t got = r * S + offset + s, want = static_cast<size_t>(example) * S + s;
        ASSERT_NEAR(packed.disc_logits[got], alone.disc_logits[want], tol * (scale + 1))
            << what << " example " << example << " token " << s;
        ASSERT_EQ(packed.disc_label[got], alone.disc_label[want]) << what << " example " << example << " token " << s;
      }
      offset += static_cast<int>(e.ids.size());
    }
  }
}

template <typename T>
void expect_packed_step_matches(double tol, const std::string& what) {
  const PretrainerConfig c = packing_config();
  auto be = make_cpu_backend<T>();
  ElectraPretrainer<T> model(c, *be);
  model.init_parameters(92);
  const Batches b = make_batches(c.vocab_size);
  StepContext ctx;
  ctx.seed = 93;
  ctx.step = 4;
  ctx.training = true;
  for (AttentionImpl impl : {AttentionImpl::kMaterialized, AttentionImpl::kFused}) {
    for (int chunks : {1, 2}) {
      const std::string label = what + ", " + to_string(impl) + ", " + std::to_string(chunks) + " chunk(s)";
      model.set_attention_impl(impl);
      model.set_parallel_chunks(chunks);
      const test::StepResult<Wide<T>> want = test::run_step(model, b.alone, ctx);
      const test::StepResult<Wide<T>> got = test::run_step(model, b.packed, ctx);
      expect_same_examples(got.out, want.out, b, tol, label);
      // Samples compared above, slot by slot; the step's own check compares them in order, which packing moves.
      test::StepResult<Wide<T>> got_in_order = got;
      got_in_order.out.sampled_ids = want.out.sampled_ids;
      test::expect_same_step(got_in_order, want, model.layout(), tol, 0, label);
    }
  }
}

TEST(PackedRows, StepMatchesEachExampleAloneFp32) { expect_packed_step_matches<float>(2e-5, "fp32"); }
TEST(PackedRows, StepMatchesEachExampleAloneFp64) { expect_packed_step_matches<double>(1e-11, "fp64"); }

class PackedRowsBf16 : public ::testing::TestWithParam<std::string> {};

TEST_P(PackedRowsBf16, StepMatchesEachExampleAlone) {
  if (GetParam() == "onednn" && !test::onednn_built()) GTEST_SKIP() << "this build has no oneDNN";
  const PretrainerConfig c = packing_config();
  auto wide = make_cpu_backend<float>();
  ElectraPretrainer<bfloat16> model(
      c, GetParam() == "onednn" ? make_onednn_bf16_backend(*wide) : make_cpu_bf16_backend(*wide));
  model.init_parameters(94);
  const Batches b = make_batches(c.vocab_size);
  StepContext ctx;
  ctx.seed = 95;
  ctx.training = true;
  const test::StepResult<float> want = test::run_step(model, b.alone, ctx);
  const test::StepResult<float> got = test::run_step(model, b.packed, ctx);
  // bf16 rounds sums of different lengths differently, so a near-tie of two logits may sample another token.
  size_t same = 0;
  for (size_t r = 0; r < b.packing.size(); ++r) {
    int prediction = 0;
    for (int example : b.packing[r]) {
      for (int p = 0; p < kPredictions; ++p, ++prediction) {
        same += got.out.sampled_ids[r * b.packed.num_predictions + prediction] ==
                want.out.sampled_ids[example * b.alone.num_predictions + p];
      }
    }
  }
  EXPECT_GE(same, want.out.sampled_ids.size() * 8 / 10) << GetParam();
  test::StepResult<float> got_in_order = got;
  got_in_order.out.sampled_ids = want.out.sampled_ids;
  test::expect_same_step(got_in_order, want, model.layout(), 2e-2, 0, "bf16 " + GetParam());
}

INSTANTIATE_TEST_SUITE_P(CpuBackends, PackedRowsBf16, ::testing::Values("reference", "onednn"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// The model refuses packed rows it cannot run: a position past the position table, or position_ids of the
// wrong size.
TEST(PackedRows, BadPositionIdsAreRefused) {
  const PretrainerConfig c = packing_config();
  auto be = make_cpu_backend<float>();
  ElectraPretrainer<float> model(c, *be);
  model.init_parameters(96);
  StepContext ctx;
  Batches b = make_batches(c.vocab_size);
  Batch wrong_size = b.packed;
  wrong_size.position_ids.pop_back();
  EXPECT_THROW(model.forward(wrong_size, ctx), Error);
  Batch too_far = b.packed;
  too_far.position_ids[3] = c.discriminator.max_position_embeddings;
  EXPECT_THROW(model.forward(too_far, ctx), Error);
  Batch negative = b.packed;
  negative.position_ids[3] = -1;
  EXPECT_THROW(model.forward(negative, ctx), Error);
  Batch negative_mask = b.packed;
  negative_mask.input_mask[0] = -2;
  EXPECT_THROW(model.forward(negative_mask, ctx), Error);
}

}  // namespace
}  // namespace electra
