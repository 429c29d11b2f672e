// Same output as Hugging Face's slow BertTokenizer (tests/tokenizer/hf_reference.py), run with the
// reference Python (ELECTRA_PYTHON): every assigned code point through the basic tokenizer, hand-written
// edge lines, and ids on ~2 MB of the Python documentation with vocabularies trained by electra-vocab.
#include <gtest/gtest.h>

#include <filesystem>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "data_pipeline/tokenizer/unicode.h"
#include "lib/core/philox.h"
#include "tests/tokenizer/edge_lines.h"
#include "tests/tokenizer/test_util.h"

namespace electra::text {
namespace {

using testing::TempDir;

std::string escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// "U+00E9 U+0301" for a UTF-8 string (invalid bytes as "\xff").
std::string code_points(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  char buf[16];
  while (p < end) {
    const unicode::Decoded d = unicode::decode_utf8(p, end);
    if (d.invalid) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", *p);
    } else {
      std::snprintf(buf, sizeof(buf), "U+%04X", static_cast<unsigned>(d.cp));
    }
    if (!out.empty()) out += ' ';
    out += buf;
    p += d.len;
  }
  return out;
}

std::vector<std::string> split_spaces(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t sp = s.find(' ', pos);
    if (sp == std::string::npos) sp = s.size();
    out.push_back(s.substr(pos, sp - pos));
    pos = sp + 1;
  }
  return out;
}

std::string script() { return testing::source_dir() + "/tests/tokenizer/hf_reference.py"; }

void run_reference(const std::string& python, const std::string& args) {
  const std::string cmd = testing::shell_quote(python) + " " + testing::shell_quote(script()) + " " + args;
  ASSERT_EQ(testing::run(cmd), 0) << cmd;
}

// Compares our lines with the reference's; on a difference prints the first differing input line, both
// outputs from the first differing item on, and how many lines differ.
void expect_same_lines(const std::vector<std::string>& inputs, const std::vector<std::string>& ours,
                       const std::vector<std::string>& reference, const std::string& what) {
  ASSERT_EQ(ours.size(), inputs.size());
  ASSERT_EQ(reference.size(), inputs.size()) << what << ": reference produced a different number of lines";
  size_t differing = 0, first = inputs.size();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (ours[i] != reference[i]) {
      if (differing++ == 0) first = i;
    }
  }
  if (differing == 0) return;
  const std::vector<std::string> a = split_spaces(ours[first]), b = split_spaces(reference[first]);
  size_t at = 0;
  while (at < a.size() && at < b.size() && a[at] == b[at]) ++at;
  auto item = [](const std::vector<std::string>& v, size_t i) {
    return i < v.size() ? escape(v[i]) + " (" + code_points(v[i]) + ")" : std::string("<end>");
  };
  ADD_FAILURE() << what << ": " << differing << " of " << inputs.size() << " lines differ; first is line " << first + 1
                << ":\n  input:     " << escape(inputs[first]) << "\n  ours:      " << escape(ours[first])
                << "\n  reference: " << escape(reference[first]) << "\n  first difference at item " << at << ": ours "
                << item(a, at) << " vs reference " << item(b, at);
}

std::vector<std::string> our_words(const BasicTokenizer& basic, const std::vector<std::string>& lines) {
  std::vector<std::string> out;
  for (const auto& line : lines) {
    std::string joined;
    basic.for_each_word(line, [&](std::string_view word, uint32_t) {
      if (!joined.empty()) joined += ' ';
      joined += word;
    });
    out.push_back(joined);
  }
  return out;
}

class HfCompare : public ::testing::TestWithParam<bool> {  // parameter: cased
 protected:
  void SetUp() override {
    std::string why;
    python_ = testing::reference_python(&why);
    if (python_.empty()) GTEST_SKIP() << why;
  }
  bool cased() const { return GetParam(); }
  TokenizerOptions options() const {
    TokenizerOptions o;
    o.lower_case = !cased();
    return o;
  }
  std::string flag() const { return cased() ? " --cased" : ""; }
  std::string python_;
};

TEST_P(HfCompare, EveryCodePointThroughTheBasicTokenizer) {
  TempDir dir;
  const std::string input = dir.file("unicode.txt"), expected = dir.file("expected.txt");
  run_reference(python_, "unicode --output " + testing::shell_quote(input));
  run_reference(python_, "basic --input " + input + " --output " + expected + flag());
  const auto inputs = testing::split_lines(testing::read_file(input));
  ASSERT_GT(inputs.size(), 2000u);
  expect_same_lines(inputs, our_words(BasicTokenizer(options()), inputs),
                    testing::split_lines(testing::read_file(expected)), "basic tokenizer words");
}

TEST_P(HfCompare, EdgeLinesThroughTheBasicTokenizer) {
  TempDir dir;
  const auto inputs = testing::edge_lines();
  const std::string input = dir.file("edge.txt"), expected = dir.file("expected.txt");
  testing::write_file(input, testing::join_lines(inputs));
  run_reference(python_, "basic --input " + input + " --output " + expected + flag());
  expect_same_lines(inputs, our_words(BasicTokenizer(options()), inputs),
                    testing::split_lines(testing::read_file(expected)), "basic tokenizer words");
}

TEST_P(HfCompare, IdsOnPythonDocsWithTrainedVocab) {
  const std::string docs = testing::python_docs_sources();
  if (docs.empty()) GTEST_SKIP() << "no /usr/share/doc/python3*/html/_sources (Debian package python3-doc)";
  TempDir dir;
  // ~2 MB of the documentation plus the edge lines (so their characters are in the vocabulary).
  std::string text = testing::corpus_prefix(docs, 2'000'000) + testing::join_lines(testing::edge_lines());
  const std::string corpus = dir.file("corpus.txt"), vocab_path = dir.file("vocab.txt");
  testing::write_file(corpus, text);
  const std::string trainer = testing::build_dir() + "/bin/electra-vocab";
  ASSERT_TRUE(std::filesystem::exists(trainer)) << trainer << " is not built";
  ASSERT_EQ(testing::run(testing::shell_quote(trainer) + " --input " + corpus +
                         " --vocab-size 5000 --min-frequency 2 --output " + vocab_path +
                         (cased() ? " --no-lower-case" : "") + " 2>/dev/null"),
            0);

  const std::string expected = dir.file("expected.txt");
  run_reference(python_, "ids --vocab " + vocab_path + " --input " + corpus + " --output " + expected + flag());
  const Vocab vocab = Vocab::load(vocab_path);
  ASSERT_EQ(vocab.size(), 5000u);
  const BertTokenizer tokenizer(vocab, options());
  const auto inputs = testing::split_lines(text);
  std::vector<std::string> ours;
  uint64_t pieces = 0, continuations = 0;
  for (const auto& line : inputs) {
    std::string joined;
    for (int32_t id : tokenizer.encode(line)) {
      if (!joined.empty()) joined += ' ';
      joined += std::to_string(id);
      ++pieces;
      continuations += vocab.token(id).rfind("##", 0) == 0;
    }
    ours.push_back(joined);
  }
  // The comparison means something only if WordPiece really splits words.
  EXPECT_GT(pieces, 400'000u);
  EXPECT_GT(continuations, 20'000u);
  expect_same_lines(inputs, ours, testing::split_lines(testing::read_file(expected)), "ids");
}

// The decoder against Python's bytes.decode("utf-8", errors="replace") on random, mostly-broken UTF-8.
TEST(Utf8Decoder, MatchesPythonReplacement) {
  const char* env = std::getenv("ELECTRA_PYTHON");
  if (!env || !*env) GTEST_SKIP() << "ELECTRA_PYTHON is not set";
  // Bytes that make interesting sequences: ASCII, every lead-byte class, continuation bytes of each range.
  const unsigned char alphabet[] = {'a',  'Z',  ' ',  0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2,
                                    0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xf8, 0xff};
  PhiloxSequence rng(7, RandomPurpose::kTest, 0, 0);
  std::vector<std::string> lines;
  for (int i = 0; i < 20000; ++i) {
    std::string line;
    const uint32_t len = rng.next_below(12);
    for (uint32_t j = 0; j < len; ++j) line += static_cast<char>(alphabet[rng.next_below(sizeof(alphabet))]);
    lines.push_back(line);
  }
  TempDir dir;
  const std::string input = dir.file("bytes.txt"), expected = dir.file("expected.txt");
  testing::write_file(input, testing::join_lines(lines));
  run_reference(env, "utf8 --input " + input + " --output " + expected);
  std::vector<std::string> ours;
  for (const auto& line : lines) {
    std::string hex;
    const auto* p = reinterpret_cast<const unsigned char*>(line.data());
    const auto* end = p + line.size();
    while (p < end) {
      const unicode::Decoded d = unicode::decode_utf8(p, end);
      EXPECT_EQ(d.invalid, d.cp == unicode::kReplacement);
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%x", static_cast<unsigned>(d.cp));
      if (!hex.empty()) hex += ' ';
      hex += buf;
      p += d.len;
    }
    ours.push_back(hex);
  }
  expect_same_lines(lines, ours, testing::split_lines(testing::read_file(expected)), "decoded code points");
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, HfCompare, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Cased" : "Lowercase"; });

}  // namespace
}  // namespace electra::text
