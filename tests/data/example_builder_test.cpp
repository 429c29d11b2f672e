#include "data_pipeline/preprocess/example_builder.h"

#include <gtest/gtest.h>

#include <map>

namespace electra::data {
namespace {

constexpr SpecialTokenIds kSpecial{0, 2, 3};

// Splits an example into its segments, checking the [CLS] A [SEP] (B [SEP]) [PAD]... layout.
void split(const Example& e, int max_len, std::vector<int32_t>& a, std::vector<int32_t>& b) {
  ASSERT_EQ(static_cast<int>(e.input_ids.size()), max_len);
  ASSERT_EQ(static_cast<int>(e.segment_ids.size()), max_len);
  ASSERT_GE(e.length, 2);
  ASSERT_LE(e.length, max_len);
  ASSERT_EQ(e.input_ids[0], kSpecial.cls);
  a.clear();
  b.clear();
  int p = 1;
  while (e.input_ids[static_cast<size_t>(p)] != kSpecial.sep) {
    EXPECT_EQ(e.segment_ids[static_cast<size_t>(p)], 0);
    a.push_back(e.input_ids[static_cast<size_t>(p++)]);
  }
  EXPECT_EQ(e.segment_ids[static_cast<size_t>(p)], 0);
  ++p;
  if (p < e.length) {
    while (e.input_ids[static_cast<size_t>(p)] != kSpecial.sep) {
      EXPECT_EQ(e.segment_ids[static_cast<size_t>(p)], 1);
      b.push_back(e.input_ids[static_cast<size_t>(p++)]);
    }
    EXPECT_EQ(e.segment_ids[static_cast<size_t>(p)], 1);
    ++p;
  }
  EXPECT_EQ(p, e.length);
  for (int q = e.length; q < max_len; ++q) {
    EXPECT_EQ(e.input_ids[static_cast<size_t>(q)], kSpecial.pad);
    EXPECT_EQ(e.segment_ids[static_cast<size_t>(q)], 0);
  }
}

TEST(ExampleBuilder, SegmentSplitFollowsTheReference) {
  // One-token sentences, target 128: the first-segment target is (128 - 3) / 2 = 62, so the first
  // segment takes 61 sentences, then the 62nd with probability 1/2; with probability 0.1 the example is
  // a single segment of 126 tokens (128 sentences collected, trimmed to max_len - 2).
  const int max_len = 128;
  ExampleBuilder builder(max_len, kSpecial, PhiloxSequence(5, RandomPurpose::kTest, 0, 0));
  std::map<int, int> first_lengths;
  int examples = 0, token = 10;
  Example e;
  std::vector<int32_t> a, b;
  int target = builder.target_length();
  while (examples < 4000) {
    if (!builder.add_sentence({token++}, e)) continue;
    split(e, max_len, a, b);
    if (target == max_len) {
      ++examples;
      ++first_lengths[static_cast<int>(a.size())];
      if (a.size() == 126) {
        EXPECT_TRUE(b.empty());
      }
      if (a.size() == 61 || a.size() == 62) {
        EXPECT_EQ(a.size() + b.size(), static_cast<size_t>(max_len - 3));
      }
    }
    // Whole sentences in order: A then B are increasing runs of consecutive tokens.
    for (size_t i = 1; i < a.size(); ++i) EXPECT_EQ(a[i], a[i - 1] + 1);
    for (size_t i = 1; i < b.size(); ++i) EXPECT_EQ(b[i], b[i - 1] + 1);
    if (!b.empty()) {
      EXPECT_EQ(b.front(), a.back() + 1);
    }
    target = builder.target_length();
  }
  EXPECT_EQ(first_lengths.size(), 3u) << "first segment lengths other than 61, 62, 126";
  EXPECT_NEAR(first_lengths[61] / 4000.0, 0.45, 0.03);
  EXPECT_NEAR(first_lengths[62] / 4000.0, 0.45, 0.03);
  EXPECT_NEAR(first_lengths[126] / 4000.0, 0.10, 0.02);
}

TEST(ExampleBuilder, RandomTargetLengthFivePercent) {
  const int max_len = 64;
  ExampleBuilder builder(max_len, kSpecial, PhiloxSequence(9, RandomPurpose::kTest, 0, 0));
  Example e;
  int examples = 0, short_targets = 0, min_target = max_len, max_short = 0;
  while (examples < 20000) {
    if (!builder.add_sentence({7, 8, 9}, e)) continue;
    ++examples;
    const int t = builder.target_length();
    ASSERT_GE(t, 5);
    ASSERT_LE(t, max_len);
    if (t < max_len) {
      ++short_targets;
      max_short = std::max(max_short, t);
    }
    min_target = std::min(min_target, t);
  }
  // randint(5, 64) is below 64 with probability 59/60.
  EXPECT_NEAR(short_targets / 20000.0, 0.05 * 59.0 / 60.0, 0.006);
  EXPECT_EQ(min_target, 5);
  EXPECT_EQ(max_short, 63);
}

TEST(ExampleBuilder, BlankLinesEndDocumentsAndTrimKeepsLimits) {
  const int max_len = 16;
  ExampleBuilder builder(max_len, kSpecial, PhiloxSequence(1, RandomPurpose::kTest, 0, 0));
  Example e;
  std::vector<int32_t> a, b;
  EXPECT_FALSE(builder.add_blank_line(e));  // nothing pending: no example
  EXPECT_FALSE(builder.add_sentence({10, 11}, e));
  ASSERT_TRUE(builder.add_blank_line(e));  // document boundary
  split(e, max_len, a, b);
  EXPECT_EQ(a.size() + b.size(), 2u);
  EXPECT_FALSE(builder.flush(e));
  // A 40-token sentence is cut to max_len - 2 tokens in one segment.
  std::vector<int32_t> longest(40);
  for (int i = 0; i < 40; ++i) longest[static_cast<size_t>(i)] = 100 + i;
  ASSERT_TRUE(builder.add_sentence(longest, e));
  split(e, max_len, a, b);
  EXPECT_EQ(a.size(), 14u);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(e.length, max_len);
  // Pending tokens are emitted by flush() at the end of a file.
  EXPECT_FALSE(builder.add_sentence({12}, e));
  ASSERT_TRUE(builder.flush(e));
  split(e, max_len, a, b);
  EXPECT_EQ(a, std::vector<int32_t>{12});
}

TEST(ExampleBuilder, SameSeedSameExamplesOtherSeedOtherSplits) {
  auto run = [](uint64_t seed) {
    ExampleBuilder builder(32, kSpecial, PhiloxSequence(seed, RandomPurpose::kPreprocess, 0, 3));
    std::vector<std::vector<int32_t>> out;
    Example e;
    for (int i = 0; i < 2000; ++i)
      if (builder.add_sentence({10 + i % 50, 11, 12}, e)) out.push_back(e.input_ids);
    return out;
  };
  EXPECT_EQ(run(1), run(1));
  EXPECT_NE(run(1), run(2));
}

}  // namespace
}  // namespace electra::data
