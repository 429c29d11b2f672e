// Vocab files: loading, errors that name the file and line, the documented hash, atomic saving.
#include "data_pipeline/tokenizer/vocab.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "lib/core/error.h"
#include "tests/tokenizer/test_util.h"

namespace electra::text {
namespace {

using testing::TempDir;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Vocab, LoadsOneTokenPerLine) {
  TempDir dir;
  const std::string path = dir.file("vocab.txt");
  testing::write_file(path, "[PAD]\r\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n##lo\nlast");  // CRLF, no final \n
  const Vocab v = Vocab::load(path);
  ASSERT_EQ(v.size(), 8u);
  EXPECT_EQ(v.pad_id(), 0);
  EXPECT_EQ(v.unk_id(), 1);
  EXPECT_EQ(v.cls_id(), 2);
  EXPECT_EQ(v.sep_id(), 3);
  EXPECT_EQ(v.mask_id(), 4);
  EXPECT_EQ(v.id("hello"), 5);
  EXPECT_EQ(v.id("##lo"), 6);
  EXPECT_EQ(v.id("last"), 7);
  EXPECT_EQ(v.id("absent"), -1);
  EXPECT_EQ(v.token(6), "##lo");
  EXPECT_THROW(v.token(8), Error);
  EXPECT_THROW(v.token(-1), Error);
  EXPECT_EQ(v.origin(), path);
}

TEST(Vocab, SpecialTokensAreFoundByName) {
  const Vocab v = Vocab::from_tokens({"a", "[MASK]", "[SEP]", "[CLS]", "[UNK]", "[PAD]"});
  EXPECT_EQ(v.mask_id(), 1);
  EXPECT_EQ(v.pad_id(), 5);
}

TEST(Vocab, MissingSpecialTokenNamesTheFile) {
  TempDir dir;
  const std::string path = dir.file("no_mask_vocab.txt");
  testing::write_file(path, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nword\n");
  const Vocab v = Vocab::load(path);
  EXPECT_EQ(v.sep_id(), 3);
  const std::string msg = error_of([&] { v.mask_id(); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("[MASK]"), std::string::npos) << msg;
}

TEST(Vocab, DuplicateTokenNamesBothLines) {
  TempDir dir;
  const std::string path = dir.file("dup_vocab.txt");
  testing::write_file(path, "[PAD]\nfoo\n[UNK]\nbar\nfoo\n");
  const std::string msg = error_of([&] { Vocab::load(path); });
  EXPECT_NE(msg.find(path + ":5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'foo'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_THROW(Vocab::from_tokens({"a", "b", "a"}), Error);
}

TEST(Vocab, EmptyOrMissingFileIsAnError) {
  TempDir dir;
  const std::string path = dir.file("empty_vocab.txt");
  testing::write_file(path, "");
  std::string msg = error_of([&] { Vocab::load(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  msg = error_of([&] { Vocab::load(dir.file("absent.txt")); });
  EXPECT_NE(msg.find("absent.txt"), std::string::npos) << msg;
}

TEST(Vocab, HashIsFnv1a64OfTokensJoinedByNewlines) {
  // Published FNV-1a 64 test vectors.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  EXPECT_EQ(Vocab::from_tokens({"a"}).hash(), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(Vocab::from_tokens({"foo", "bar"}).hash(), fnv1a64("foo\nbar"));
  EXPECT_NE(Vocab::from_tokens({"foo", "bar"}).hash(), Vocab::from_tokens({"bar", "foo"}).hash());
  // The file's line endings do not matter, only the tokens.
  TempDir dir;
  testing::write_file(dir.file("v.txt"), "foo\r\nbar\r\n");
  EXPECT_EQ(Vocab::load(dir.file("v.txt")).hash(), fnv1a64("foo\nbar"));
}

TEST(Vocab, SaveWritesAtomicallyAndRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("out_vocab.txt");
  testing::write_file(path, "old contents\n");
  const Vocab v = Vocab::from_tokens({"[PAD]", "[UNK]", "\u00e9", "##x", "last"});
  v.save(path);
  EXPECT_EQ(testing::read_file(path), "[PAD]\n[UNK]\n\u00e9\n##x\nlast\n");
  const Vocab back = Vocab::load(path);
  EXPECT_EQ(back.tokens(), v.tokens());
  EXPECT_EQ(back.hash(), v.hash());
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "out_vocab.txt");  // no temporary left behind
  }
  EXPECT_EQ(files, 1u);
  EXPECT_THROW(Vocab::from_tokens({"a\nb"}).save(dir.file("bad.txt")), Error);
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad.txt")));
}

TEST(Vocab, LargeVocabLookups) {
  std::vector<std::string> tokens;
  for (int i = 0; i < 50000; ++i) tokens.push_back(std::to_string(i * 7919).insert(0, 1, 't'));
  const Vocab v = Vocab::from_tokens(tokens);
  for (int i = 0; i < 50000; ++i) ASSERT_EQ(v.id(tokens[i]), i);
  EXPECT_EQ(v.id("t1"), -1);
}

}  // namespace
}  // namespace electra::text
