// BERT's tokenization rules, case by case, with small hand-made vocabularies.
#include <gtest/gtest.h>

#include <thread>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "data_pipeline/tokenizer/unicode.h"
#include "lib/core/error.h"
#include "tests/tokenizer/edge_lines.h"

namespace electra::text {
namespace {

using Words = std::vector<std::string>;

TokenizerOptions lower() { return TokenizerOptions{}; }
TokenizerOptions cased() {
  TokenizerOptions o;
  o.lower_case = false;
  return o;
}

Words words(std::string_view text, TokenizerOptions options = lower(), TokenizeStats* stats = nullptr) {
  return BasicTokenizer(options).words(text, stats);
}

Vocab small_vocab() {
  return Vocab::from_tokens(
      {"[PAD]",  "[UNK]",    "[CLS]",  "[SEP]",  "[MASK]",     "hello",      "world", ",",   "!",
       ".",      "un",       "##aff",  "##able", "play",       "##ing",      "##ed",  "a",   "##a",
       "\u00e9", "##\u00e9", "\u4e2d", "\u6587", "h\u00e9llo", "H\u00e9llo", "Hello", "##s", "the"},
      "small_vocab");
}

TEST(BasicTokenizer, AccentsStrippedWhenLowercasing) {
  EXPECT_EQ(words("H\u00e9llo W\u00d6RLD"), (Words{"hello", "world"}));
  // Decomposed input gives the same words.
  EXPECT_EQ(words("He\u0301llo"), (Words{"hello"}));
}

TEST(BasicTokenizer, AccentsAndCaseKeptWhenCased) {
  EXPECT_EQ(words("H\u00e9llo W\u00d6RLD", cased()), (Words{"H\u00e9llo", "W\u00d6RLD"}));
  // NFC: a decomposed accent is composed, as Hugging Face's BertTokenizer does.
  EXPECT_EQ(words("He\u0301llo", cased()), (Words{"H\u00e9llo"}));
}

TEST(BasicTokenizer, StripAccentsCanBeSetApartFromCase) {
  TokenizerOptions strip_only = cased();
  strip_only.strip_accents = true;
  EXPECT_EQ(words("H\u00e9llo", strip_only), (Words{"Hello"}));
  TokenizerOptions lower_keep = lower();
  lower_keep.strip_accents = false;
  EXPECT_EQ(words("H\u00e9llo", lower_keep), (Words{"h\u00e9llo"}));
}

TEST(BasicTokenizer, LowercasingIsPerCharacterFullMapping) {
  // U+0130 lowercases to "i" + U+0307 (Python's str.lower); stripping removes the dot.
  EXPECT_EQ(words("\u0130stanbul"), (Words{"istanbul"}));
  TokenizerOptions lower_keep = lower();
  lower_keep.strip_accents = false;
  EXPECT_EQ(words("\u0130", lower_keep), (Words{"i\u0307"}));
  // No final-sigma rule: HF lowercases character by character before its BasicTokenizer runs.
  EXPECT_EQ(words("\u039f\u0394\u039f\u03a3"), (Words{"\u03bf\u03b4\u03bf\u03c3"}));
  EXPECT_EQ(words("Stra\u00dfe \u1e9e"), (Words{"stra\u00dfe", "\u00df"}));
}

TEST(BasicTokenizer, CjkIdeographsAreSingleWords) {
  EXPECT_EQ(words("ab\u4e2d\u6587cd \u3400x\U00020000"),
            (Words{"ab", "\u4e2d", "\u6587", "cd", "\u3400", "x", "\U00020000"}));
  // Hiragana, Katakana and Hangul are not in the ranges.
  EXPECT_EQ(words("\u3072\u3089\u30ab\ud55c\uad6d", cased()), (Words{"\u3072\u3089\u30ab\ud55c\uad6d"}));
  // Accent stripping's NFD turns Hangul syllables into jamo (as in BERT's uncased models).
  EXPECT_EQ(words("\ud55c"), (Words{"\u1112\u1161\u11ab"}));
  // A compatibility ideograph is its own word and normalizes to the unified one (U+F900 -> U+8C48).
  EXPECT_EQ(words("a\uf900b", cased()), (Words{"a", "\u8c48", "b"}));
  TokenizerOptions no_cjk = lower();
  no_cjk.tokenize_chinese_chars = false;
  EXPECT_EQ(words("ab\u4e2d\u6587cd", no_cjk), (Words{"ab\u4e2d\u6587cd"}));
}

TEST(BasicTokenizer, PunctuationIsSplitOff) {
  EXPECT_EQ(words("Hello,world!"), (Words{"hello", ",", "world", "!"}));
  // ASCII symbols that are not Unicode punctuation still split: $ + < = > ^ ` | ~
  EXPECT_EQ(words("$5+x<y=z>w^v`u|t~s"),
            (Words{"$", "5", "+", "x", "<", "y", "=", "z", ">", "w", "^", "v", "`", "u", "|", "t", "~", "s"}));
  // Unicode punctuation (P*) splits; symbols (S*) do not.
  EXPECT_EQ(words("\u00abquote\u00bb a\u2014b \u00bfqu\u00e9? x\u2264y", cased()),
            (Words{"\u00ab", "quote", "\u00bb", "a", "\u2014", "b", "\u00bf", "qu\u00e9", "?", "x\u2264y"}));
  // Stripping accents decomposes U+2260 into "=" + U+0338 and drops the mark, leaving ASCII punctuation.
  EXPECT_EQ(words("x\u2260y"), (Words{"x", "=", "y"}));
  EXPECT_EQ(words("x\u2260y", cased()), (Words{"x\u2260y"}));
  EXPECT_EQ(words("..."), (Words{".", ".", "."}));
}

TEST(BasicTokenizer, PunctuationIsDecidedAfterNormalization) {
  // U+1FEF GREEK VARIA is a symbol, but its canonical decomposition is "`", which is ASCII punctuation.
  EXPECT_EQ(words("x\u1fefa", cased()), (Words{"x", "`", "a"}));
  EXPECT_EQ(words("x\u1fefa"), (Words{"x", "`", "a"}));
  // "=" + U+0338 composes to U+2260 (a symbol) under NFC; stripping accents removes the mark instead.
  EXPECT_EQ(words("a=\u0338b", cased()), (Words{"a\u2260b"}));
  EXPECT_EQ(words("a=\u0338b"), (Words{"a", "=", "b"}));
}

TEST(BasicTokenizer, ControlCharactersAreDropped) {
  EXPECT_EQ(words("hel\x01lo wo\x7frld"), (Words{"hello", "world"}));
  std::string with_nul = "ab";
  with_nul += '\0';
  with_nul += "cd";
  EXPECT_EQ(words(with_nul), (Words{"abcd"}));
  // Cf (zero-width space, BOM), private use, U+FFFD and U+0085 (Cc) are dropped too.
  EXPECT_EQ(words("a\u200bb\ufeffc\ue000d\ufffde\xc2\x85"
                  "f"),
            (Words{"abcdef"}));
}

TEST(BasicTokenizer, WhitespaceSeparatesWords) {
  EXPECT_EQ(words("a\tb\nc\rd e\u00a0f\u3000g\u2028h\u2029i\u2003j"),
            (Words{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}));
  EXPECT_EQ(words("  \t leading and trailing \n "), (Words{"leading", "and", "trailing"}));
  // \v and \f are control characters in BERT (dropped, not whitespace).
  EXPECT_EQ(words("a\x0b"
                  "b\x0c"
                  "c"),
            (Words{"abc"}));
}

TEST(BasicTokenizer, EmptyInputsGiveNoWords) {
  EXPECT_TRUE(words("").empty());
  EXPECT_TRUE(words("   \t\r\n ").empty());
  EXPECT_TRUE(words("\x01\x02\u200b").empty());
  EXPECT_TRUE(words("\u0301\u0302").empty());  // only marks: stripped away when lowercasing
}

struct InvalidCase {
  std::string bytes;
  Words expected;
  uint64_t substitutions;  // U+FFFD per maximal subpart (Unicode 15, 3.9)
};

TEST(BasicTokenizer, InvalidUtf8IsReplacedCountedAndDoesNotShiftText) {
  const std::vector<InvalidCase> cases = {
      {"abc\xff"
       "def ghi",
       {"abcdef", "ghi"},
       1},
      {"truncated \xe2\x82"
       "next word",
       {"truncated", "next", "word"},
       1},
      {"truncated \xe2\x82 next", {"truncated", "next"}, 1},
      {"overlong \xc0\xaf"
       "x",
       {"overlong", "x"},
       2},
      {"overlong3 \xe0\x80\xaf"
       "y",
       {"overlong3", "y"},
       3},
      {"surrogate \xed\xa0\x80"
       "z \xed\xbf\xbf"
       "w",
       {"surrogate", "z", "w"},
       6},
      {"lone \x80\x80"
       "cont \xbf"
       "end",
       {"lone", "cont", "end"},
       3},
      {"cut4 \xf0\x9f\x98"
       "z",
       {"cut4", "z"},
       1},
      {"big \xf4\x90\x80\x80"
       "above",
       {"big", "above"},
       4},
      {"f5 \xf5\x80"
       "x",
       {"f5", "x"},
       2},
      {"ends with a cut \xe4\xb8", {"ends", "with", "a", "cut"}, 1},
      {"\xc3", {}, 1},
      // A cut sequence right before a valid multi-byte character keeps that character.
      {"x\xe4\xb8\xc3\xa9y", {"xey"}, 1},
      {"x\xe4\xb8\xe4\xb8\xad", {"x", "\u4e2d"}, 1},
  };
  for (const auto& c : cases) {
    TokenizeStats stats;
    EXPECT_EQ(words(c.bytes, lower(), &stats), c.expected) << c.bytes;
    EXPECT_EQ(stats.invalid_utf8, c.substitutions) << c.bytes;
    EXPECT_EQ(stats.words, c.expected.size()) << c.bytes;
  }
  // A real U+FFFD in valid text is dropped but is not invalid UTF-8.
  TokenizeStats stats;
  EXPECT_EQ(words("a\ufffdb", lower(), &stats), (Words{"ab"}));
  EXPECT_EQ(stats.invalid_utf8, 0u);
}

TEST(Utf8, DecoderRoundTripsEveryScalarValue) {
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    char buf[4];
    const size_t n = unicode::encode_utf8(cp, buf);
    const auto* p = reinterpret_cast<const unsigned char*>(buf);
    const unicode::Decoded d = unicode::decode_utf8(p, p + n);
    ASSERT_FALSE(d.invalid) << std::hex << static_cast<uint32_t>(cp);
    ASSERT_EQ(static_cast<uint32_t>(d.cp), static_cast<uint32_t>(cp));
    ASSERT_EQ(d.len, n);
  }
}

TEST(WordPiece, GreedyLongestMatchFirstWithContinuations) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  EXPECT_EQ(tok.tokenize("unaffable"), (Words{"un", "##aff", "##able"}));
  EXPECT_EQ(tok.tokenize("Playing played plays"), (Words{"play", "##ing", "play", "##ed", "play", "##s"}));
  EXPECT_EQ(tok.tokenize("Hello, world!"), (Words{"hello", ",", "world", "!"}));
  // Longest match first: "aaa" is a ##a ##a, not three starts.
  EXPECT_EQ(tok.tokenize("aaa"), (Words{"a", "##a", "##a"}));
}

TEST(WordPiece, UnmatchedWordsBecomeOneUnk) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  TokenizeStats stats;
  // "unaffablez" matches a prefix but not the whole word: the whole word is [UNK], not a partial split.
  EXPECT_EQ(tok.tokenize("xyz unaffablez the", &stats), (Words{"[UNK]", "[UNK]", "the"}));
  EXPECT_EQ(stats.unknown_tokens, 2u);
  EXPECT_EQ(stats.words, 3u);
}

TEST(WordPiece, WordsOverTheCharacterLimitBecomeUnk) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  const std::vector<int32_t> two_hundred = tok.encode(std::string(200, 'a'));
  ASSERT_EQ(two_hundred.size(), 200u);
  EXPECT_EQ(two_hundred[0], vocab.id("a"));
  EXPECT_EQ(two_hundred[199], vocab.id("##a"));
  EXPECT_EQ(tok.tokenize(std::string(201, 'a')), (Words{"[UNK]"}));
  // The limit counts characters, not bytes: 200 two-byte characters are fine.
  const BertTokenizer cased_tok(vocab, cased());
  const std::string e200 = testing::repeat("\u00e9", 200);
  EXPECT_EQ(cased_tok.encode(e200).size(), 200u);
  EXPECT_EQ(cased_tok.tokenize(e200 + "\u00e9"), (Words{"[UNK]"}));
  TokenizerOptions hf_limit = lower();
  hf_limit.max_input_chars_per_word = 100;
  const BertTokenizer hf(vocab, hf_limit);
  EXPECT_EQ(hf.tokenize(std::string(101, 'a')), (Words{"[UNK]"}));
}

TEST(WordPiece, CasedVocabularyKeepsAccents) {
  const Vocab vocab = small_vocab();
  EXPECT_EQ(BertTokenizer(vocab, cased()).tokenize("H\u00e9llo Hello"), (Words{"H\u00e9llo", "Hello"}));
  EXPECT_EQ(BertTokenizer(vocab, lower()).tokenize("H\u00e9llo Hello"), (Words{"hello", "hello"}));
}

TEST(WordPiece, LiteralSpecialTokensAreSplitLikeText) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  // As google-research/bert: "[MASK]" in raw text is punctuation + a word, never the mask id.
  EXPECT_EQ(tok.basic().words("[MASK] [CLS]"), (Words{"[", "mask", "]", "[", "cls", "]"}));
  for (int32_t id : tok.encode("[MASK] [CLS] [SEP] [PAD]")) EXPECT_EQ(id, vocab.unk_id());
}

TEST(BertTokenizer, EncodeAppendAppendsAndEmptyLinesGiveNothing) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  std::vector<int32_t> out = {42};
  tok.encode_append("hello world", out);
  EXPECT_EQ(out, (std::vector<int32_t>{42, vocab.id("hello"), vocab.id("world")}));
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_TRUE(tok.encode(" \t ").empty());
}

TEST(BertTokenizer, DecodeMergesContinuationsAndSkipsPadding) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  std::vector<int32_t> ids = tok.encode("unaffable playing, world!");
  ids.push_back(vocab.pad_id());
  ids.insert(ids.begin(), vocab.cls_id());
  EXPECT_EQ(tok.decode(ids), "[CLS] unaffable playing , world !");
  EXPECT_THROW(tok.decode({static_cast<int32_t>(vocab.size())}), Error);
}

TEST(BertTokenizer, NeedsUnkInTheVocab) {
  const Vocab vocab = Vocab::from_tokens({"[PAD]", "a"}, "no_unk_vocab");
  try {
    BertTokenizer tok(vocab, lower());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_unk_vocab"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[UNK]"), std::string::npos) << e.what();
  }
}

TEST(BertTokenizer, SameResultsFromSeveralThreads) {
  const Vocab vocab = small_vocab();
  const BertTokenizer tok(vocab, lower());
  std::string text;
  for (const auto& line : testing::edge_lines()) text += line + " unaffable playing ";
  const std::vector<int32_t> expected = tok.encode(text);
  std::vector<std::vector<int32_t>> results(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) results[t] = tok.encode(text);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(results[0], expected);
  EXPECT_EQ(results[1], expected);
}

TEST(BasicTokenizer, CallbacksMayTokenizeAgain) {
  const BasicTokenizer basic(lower());
  Words outer, inner;
  basic.for_each_word("Caf\u00e9 Na\u00efve", [&](std::string_view word, uint32_t) {
    outer.emplace_back(word);
    for (auto& w : basic.words("\u00c9t\u00e9 x")) inner.push_back(w);
  });
  EXPECT_EQ(outer, (Words{"cafe", "naive"}));
  EXPECT_EQ(inner, (Words{"ete", "x", "ete", "x"}));
}

}  // namespace
}  // namespace electra::text
