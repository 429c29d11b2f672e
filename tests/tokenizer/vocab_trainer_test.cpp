// The WordPiece vocabulary trainer: merge order on a worked example, size and layout guarantees, [UNK]
// rate on its own training text, options.
#include "data_pipeline/tokenizer/vocab_trainer.h"

#include <gtest/gtest.h>

#include <set>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "lib/core/philox.h"
#include "tests/tokenizer/edge_lines.h"
#include "tests/tokenizer/test_util.h"

namespace electra::text {
namespace {

const std::vector<std::string> kSpecials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

// A corpus with a Zipf-like word distribution over a mixed-script alphabet, reproducible (Philox).
std::string synthetic_corpus(size_t lines) {
  const std::vector<std::string> syllables = {"ka", "ru",      "mi",     "to",           "sen",          "la", "\u00e9",
                                              "do", "qu",      "\u00df", "\u03b1\u03b2", "\u0434\u0430", "in", "ng",
                                              "th", "\u00f1o", "ra"};
  PhiloxSequence rng(11, RandomPurpose::kTest, 0, 0);
  std::vector<std::string> lexicon;
  for (int w = 0; w < 3000; ++w) {
    std::string word;
    const uint32_t n = 1 + rng.next_below(4);
    for (uint32_t s = 0; s < n; ++s) word += syllables[rng.next_below(syllables.size())];
    if (rng.next_below(5) == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
    lexicon.push_back(word);
  }
  std::string text;
  for (size_t l = 0; l < lines; ++l) {
    const uint32_t n = 3 + rng.next_below(12);
    for (uint32_t i = 0; i < n; ++i) {
      // Squaring a uniform index favours the first words (a rough Zipf).
      const double u = rng.next_uniform();
      text += lexicon[static_cast<size_t>(u * u * u * lexicon.size())];
      text += rng.next_below(8) == 0 ? ", " : " ";
    }
    text += rng.next_below(4) == 0 ? "\u4e2d\u6587.\n" : ".\n";
  }
  return text;
}

void expect_well_formed(const Vocab& v, size_t size) {
  ASSERT_EQ(v.size(), size);
  for (size_t i = 0; i < kSpecials.size(); ++i) EXPECT_EQ(v.token(static_cast<int32_t>(i)), kSpecials[i]);
  std::set<std::string> seen;
  for (const auto& t : v.tokens()) {
    EXPECT_TRUE(seen.insert(t).second) << "duplicate " << t;
    EXPECT_FALSE(t.empty());
  }
  for (const auto& s : kSpecials) EXPECT_EQ(std::count(v.tokens().begin(), v.tokens().end(), s), 1) << s;
}

double unk_rate(const Vocab& v, const std::string& text, TokenizerOptions options) {
  const BertTokenizer tok(v, options);
  uint64_t pieces = 0, unk = 0;
  for (const auto& line : testing::split_lines(text)) {
    for (int32_t id : tok.encode(line)) {
      ++pieces;
      unk += id == v.unk_id();
    }
  }
  EXPECT_GT(pieces, 1000u);
  return static_cast<double>(unk) / static_cast<double>(pieces);
}

TEST(VocabTrainer, MergesMostFrequentPairsInOrder) {
  // The Hugging Face course's example: hug 10, pug 5, pun 12, bun 4, hugs 5.
  WordCounter counter(TokenizerOptions{});
  counter.add_word("hug", 3, 10);
  counter.add_word("pug", 3, 5);
  counter.add_word("pun", 3, 12);
  counter.add_word("bun", 3, 4);
  counter.add_word("hugs", 4, 5);
  VocabTrainerOptions options;
  options.vocab_size = 100;
  options.min_frequency = 1;
  VocabTrainerReport report;
  const Vocab v = train_wordpiece_vocab(counter, options, &report);
  const std::vector<std::string> expected = {
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "b", "g", "h", "n", "p", "s", "u",  // alphabet by code point
      "##g", "##n", "##s", "##u",                                                       // characters seen inside words
      // ##u+##g 20, ##u+##n 16, h+##ug 15, p+##un 12, then a tie at 5 (p+##ug before hug+##s: smaller ids), bun 4
      "##ug", "##un", "hug", "pun", "pug", "hugs", "bun"};
  EXPECT_EQ(v.tokens(), expected);
  EXPECT_EQ(report.merges, 7u);
  EXPECT_EQ(report.alphabet, 7u);
}

TEST(VocabTrainer, StopsAtTheRequestedSizeAndMinFrequency) {
  WordCounter counter(TokenizerOptions{});
  counter.add_word("hug", 3, 10);
  counter.add_word("pug", 3, 5);
  counter.add_word("pun", 3, 12);
  counter.add_word("bun", 3, 4);
  counter.add_word("hugs", 4, 5);
  VocabTrainerOptions options;
  options.min_frequency = 1;
  options.vocab_size = 18;
  EXPECT_EQ(train_wordpiece_vocab(counter, options).tokens().back(), "##un");
  options.vocab_size = 100;
  options.min_frequency = 12;  // ##ug 20, ##un 16, hug 15, pun 12; pug (5) is below
  EXPECT_EQ(train_wordpiece_vocab(counter, options).size(), 16u + 4u);
}

TEST(VocabTrainer, SyntheticCorpusGivesExactSizeAndFewUnknowns) {
  const std::string text = synthetic_corpus(6000) + testing::join_lines(testing::edge_lines());
  for (bool lower_case : {true, false}) {
    VocabTrainerOptions options;
    options.tokenizer.lower_case = lower_case;
    options.vocab_size = 1500;
    WordCounter counter(options.tokenizer);
    for (const auto& line : testing::split_lines(text)) counter.add_text(line);
    const Vocab v = train_wordpiece_vocab(counter, options);
    expect_well_formed(v, 1500);
    const double rate = unk_rate(v, text, options.tokenizer);
    // The only unknowns are the edge lines' over-long words.
    EXPECT_LT(rate, 0.005) << "lower_case=" << lower_case;
    // Deterministic: the same text gives the same vocabulary.
    WordCounter again(options.tokenizer);
    again.add_text(text);
    EXPECT_EQ(train_wordpiece_vocab(again, options).hash(), v.hash());
  }
}

TEST(VocabTrainer, PythonDocsGiveExactSizeAndFewUnknowns) {
  const std::string docs = testing::python_docs_sources();
  if (docs.empty()) GTEST_SKIP() << "no /usr/share/doc/python3*/html/_sources (Debian package python3-doc)";
  const std::string text = testing::corpus_prefix(docs, 1'000'000);
  testing::TempDir dir;
  testing::write_file(dir.file("corpus.txt"), text);
  VocabTrainerOptions options;
  options.vocab_size = 4000;
  WordCounter counter(options.tokenizer);
  counter.add_file(dir.file("corpus.txt"));
  EXPECT_EQ(counter.bytes(), text.size());
  const Vocab v = train_wordpiece_vocab(counter, options);
  expect_well_formed(v, 4000);
  EXPECT_LT(unk_rate(v, text, options.tokenizer), 0.005);
}

TEST(VocabTrainer, LimitAlphabetKeepsTheMostFrequentCharacters) {
  WordCounter counter(TokenizerOptions{});
  counter.add_text("aaa bbb aab aba abba ccc z \u00e9t\u00e9");
  VocabTrainerOptions options;
  options.vocab_size = 40;
  options.min_frequency = 1;
  options.limit_alphabet = 2;
  VocabTrainerReport report;
  const Vocab v = train_wordpiece_vocab(counter, options, &report);
  EXPECT_EQ(report.alphabet, 2u);
  EXPECT_GE(v.id("a"), 0);
  EXPECT_GE(v.id("b"), 0);
  EXPECT_EQ(v.id("c"), -1);
  EXPECT_EQ(v.id("z"), -1);
  // Words with left-out characters tokenize to [UNK].
  const BertTokenizer tok(v, TokenizerOptions{});
  TokenizeStats stats;
  tok.encode("abba baab", &stats);
  EXPECT_EQ(stats.unknown_tokens, 0u);
  EXPECT_EQ(tok.tokenize("ccc abz"), (std::vector<std::string>{"[UNK]", "[UNK]"}));
}

TEST(VocabTrainer, TooSmallForTheAlphabetKeepsTheFrequentCharacters) {
  WordCounter counter(TokenizerOptions{});
  counter.add_text("aaaa aaaa bbb cc d e f g h");
  VocabTrainerOptions options;
  options.vocab_size = 9;  // 5 specials + a ##a b ##b
  const Vocab v = train_wordpiece_vocab(counter, options);
  EXPECT_EQ(v.tokens(),
            (std::vector<std::string>{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##a", "##b"}));
}

TEST(VocabTrainer, CountsWordsAfterBasicTokenization) {
  WordCounter counter(TokenizerOptions{});
  counter.add_text("Caf\u00e9, cafe! " + std::string(201, 'x') + " \u4e2d\u6587");
  const auto& table = counter.table();
  EXPECT_EQ(table.at("cafe").count, 2u);
  EXPECT_EQ(table.at(",").count, 1u);
  EXPECT_EQ(table.at("\u4e2d").chars, 1u);
  EXPECT_EQ(counter.skipped_long_words(), 1u);
  EXPECT_EQ(counter.total_words(), 7u);
}

}  // namespace
}  // namespace electra::text
