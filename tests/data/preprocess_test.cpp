#include "data_pipeline/preprocess/preprocess.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "data_pipeline/preprocess/file_util.h"
#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;
using testing::Row;
using testing::TempDir;

// run_preprocess is collective over an MPI communicator; a plain test process is a singleton world.
class MpiEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Finalize();
  }
};
[[maybe_unused]] ::testing::Environment* const mpi_env = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

void ensure_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
}

PreprocessOptions options_for(const std::string& corpus, const std::string& vocab, const std::string& out) {
  PreprocessOptions o;
  o.inputs = {corpus};
  o.vocab_path = vocab;
  o.output_dir = out;
  o.max_seq_length = 128;
  o.seed = 3;
  o.progress_interval_s = 0;
  o.command_line = "electra-preprocess (test)";
  return o;
}

Manifest preprocess_single(const PreprocessOptions& o) {
  ensure_mpi();
  return run_preprocess(o, MPI_COMM_SELF);
}

// Python's str.strip() for the ASCII whitespace the generated corpus uses.
std::string_view strip(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// The tokens of every non-blank line of the files, in order.
std::vector<int32_t> expected_tokens(const std::vector<std::string>& files, const text::BertTokenizer& tokenizer,
                                     std::string* text_out) {
  std::vector<int32_t> out;
  for (const std::string& path : files) {
    std::ifstream in(path, std::ios::binary);
    std::string line;
    while (std::getline(in, line)) {
      const std::string_view s = strip(line);
      if (s.empty()) continue;
      tokenizer.encode_append(s, out);
      *text_out += std::string(s) + "\n";
    }
  }
  return out;
}

// The real tokens of rows without [CLS]/[SEP], in order.
std::vector<int32_t> row_tokens(const std::vector<Row>& rows, const text::Vocab& vocab) {
  std::vector<int32_t> out;
  for (const Row& r : rows)
    for (int c = 0; c < r.length; ++c) {
      const int32_t id = r.ids[static_cast<size_t>(c)];
      if (id != vocab.cls_id() && id != vocab.sep_id()) out.push_back(id);
    }
  return out;
}

// Lower-cases and puts spaces around "." and "," and collapses whitespace (what decode gives back).
std::string normalise(const std::string& text) {
  std::string spaced;
  for (const char c : text) {
    if (c == '.' || c == ',') {
      spaced += ' ';
      spaced += c;
      spaced += ' ';
    } else if (static_cast<unsigned char>(c) < 0x80) {
      spaced += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }  // the invalid UTF-8 bytes are dropped by the tokenizer
  }
  std::istringstream words(spaced);
  std::string word, out;
  while (words >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}

TEST(Preprocess, RoundTripReproducesTheText) {
  TempDir tmp("pre-roundtrip");
  const std::vector<std::string> files = testing::write_corpus(tmp / "corpus", {});
  const text::Vocab vocab = testing::corpus_vocab();
  vocab.save(tmp / "vocab.txt");
  const Manifest manifest = preprocess_single(options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "out"));

  const std::vector<Row> rows = testing::read_all_rows(tmp / "out");
  ASSERT_EQ(rows.size(), manifest.total_rows);
  ASSERT_GT(rows.size(), 20u);
  const text::BertTokenizer tokenizer(vocab, text::TokenizerOptions{});
  std::string text;
  const std::vector<int32_t> expected = expected_tokens(files, tokenizer, &text);
  // Documents are shorter than max_seq_length - 3 tokens, so the builder never trims: every token of
  // the input comes back, in order.
  const std::vector<int32_t> got = row_tokens(rows, vocab);
  EXPECT_EQ(got, expected);
  EXPECT_EQ(tokenizer.decode(got), normalise(text));
  EXPECT_EQ(std::count(got.begin(), got.end(), vocab.unk_id()), 0);
  for (const Row& r : rows) {
    EXPECT_EQ(r.ids[0], vocab.cls_id());
    EXPECT_EQ(r.ids[static_cast<size_t>(r.length - 1)], vocab.sep_id());
    for (size_t c = static_cast<size_t>(r.length); c < r.ids.size(); ++c) ASSERT_EQ(r.ids[c], vocab.pad_id());
  }
  EXPECT_GE(manifest.stats.at("invalid_utf8").get<uint64_t>(), 1u);
  EXPECT_EQ(manifest.stats.at("examples").get<uint64_t>(), rows.size());
  EXPECT_EQ(manifest.stats.at("files").get<uint64_t>(), files.size());
}

// reStructuredText-like text: short paragraphs separated by blank lines. --blanks-separate-docs true (the
// BERT layout) makes each paragraph a document and so a short example of its own; false (google-research/
// electra's choice for such text) makes each file one document, packed into fewer, fuller rows.
TEST(Preprocess, BlankLinesSeparateDocumentsOrOnlyParagraphs) {
  TempDir tmp("pre-blanks");
  const testing::CorpusOptions corpus{
      .files = 3, .docs_per_file = 4, .max_sentences = 2, .max_words = 5, .seed = 11, .messy = false};
  const std::vector<std::string> files = testing::write_corpus(tmp / "corpus", corpus);
  const text::Vocab vocab = testing::corpus_vocab();
  vocab.save(tmp / "vocab.txt");
  const PreprocessOptions by_paragraph = options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "paragraphs");
  PreprocessOptions by_file = options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "files");
  by_file.blanks_separate_docs = false;
  EXPECT_TRUE(preprocess_single(by_paragraph).blanks_separate_docs);
  EXPECT_FALSE(preprocess_single(by_file).blanks_separate_docs);
  EXPECT_TRUE(Manifest::load((fs::path(tmp / "paragraphs") / kManifestName).string()).blanks_separate_docs);
  EXPECT_FALSE(Manifest::load((fs::path(tmp / "files") / kManifestName).string()).blanks_separate_docs);

  const std::vector<Row> paragraph_rows = testing::read_all_rows(tmp / "paragraphs");
  const std::vector<Row> file_rows = testing::read_all_rows(tmp / "files");
  const text::BertTokenizer tokenizer(vocab, text::TokenizerOptions{});
  // Every token comes back in order either way (no document is longer than a row, so nothing is trimmed).
  std::string text;
  const std::vector<int32_t> expected = expected_tokens(files, tokenizer, &text);
  EXPECT_EQ(row_tokens(paragraph_rows, vocab), expected);
  EXPECT_EQ(row_tokens(file_rows, vocab), expected);

  EXPECT_EQ(paragraph_rows.size(), 12u);  // 3 files x 4 paragraphs: an example each
  EXPECT_GE(file_rows.size(), files.size());
  EXPECT_LT(file_rows.size(), paragraph_rows.size());
  // A document per file: every file boundary is a row boundary (no row mixes two files).
  std::vector<size_t> row_ends, file_ends;
  for (const Row& r : file_rows)
    row_ends.push_back((row_ends.empty() ? 0 : row_ends.back()) + row_tokens({r}, vocab).size());
  for (const std::string& f : files) {
    std::string ignored;
    file_ends.push_back((file_ends.empty() ? 0 : file_ends.back()) + expected_tokens({f}, tokenizer, &ignored).size());
  }
  for (size_t end : file_ends) EXPECT_NE(std::find(row_ends.begin(), row_ends.end(), end), row_ends.end()) << end;
}

TEST(Preprocess, ShardLayoutAttributesAndManifest) {
  TempDir tmp("pre-layout");
  testing::write_corpus(tmp / "corpus", {});
  const text::Vocab vocab = testing::corpus_vocab();
  vocab.save(tmp / "vocab.txt");
  PreprocessOptions o = options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "out");
  o.rows_per_shard = 10;
  const Manifest manifest = preprocess_single(o);
  ASSERT_GT(manifest.shards.size(), 2u);

  // manifest.json on disk has every field and agrees with what was returned.
  std::ifstream in(tmp / "out/manifest.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const char* key : {"format_version", "shards", "total_rows", "vocab_hash", "vocab_size", "max_seq_length",
                          "tokenizer", "seed", "command_line", "stats"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["format_version"], 1);
  EXPECT_EQ(j["vocab_hash"].get<uint64_t>(), vocab.hash());
  EXPECT_EQ(j["vocab_size"].get<uint64_t>(), vocab.size());
  EXPECT_EQ(j["max_seq_length"], 128);
  EXPECT_EQ(j["tokenizer"]["lower_case"], true);
  EXPECT_EQ(j["seed"], 3);
  EXPECT_EQ(j["command_line"], "electra-preprocess (test)");
  uint64_t total = 0;
  for (const ShardInfo& s : manifest.shards) {
    const std::string path = tmp / ("out/" + s.file);
    EXPECT_EQ(file_crc32(path), s.crc32) << s.file;
    EXPECT_LE(s.rows, 10u);
    EXPECT_EQ(s.rank, 0);
    total += s.rows;

    h5::Handle file = h5::open_read_only(path);
    EXPECT_EQ(h5::read_attribute_i64(file, "format_version", path), 1);
    EXPECT_EQ(h5::read_attribute_i64(file, "max_seq_length", path), 128);
    EXPECT_EQ(h5::read_attribute_u64(file, "vocab_size", path), vocab.size());
    EXPECT_EQ(h5::read_attribute_u64(file, "vocab_hash", path), vocab.hash());
    h5::Handle ids(H5Dopen2(file, "input_ids", H5P_DEFAULT));
    h5::Handle seg(H5Dopen2(file, "segment_ids", H5P_DEFAULT));
    h5::Handle len(H5Dopen2(file, "lengths", H5P_DEFAULT));
    ASSERT_TRUE(ids.valid() && seg.valid() && len.valid());
    EXPECT_EQ(h5::describe_type(ids), "uint16");
    EXPECT_EQ(h5::describe_type(seg), "uint8");
    EXPECT_EQ(h5::describe_type(len), "uint16");
    EXPECT_EQ(h5::dims(ids), (std::vector<hsize_t>{s.rows, 128}));
    EXPECT_EQ(h5::dims(seg), (std::vector<hsize_t>{s.rows, 128}));
    EXPECT_EQ(h5::dims(len), (std::vector<hsize_t>{s.rows}));
    h5::Handle dcpl(H5Dget_create_plist(ids));
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
    bool deflate = false;
    for (int f = 0; f < H5Pget_nfilters(dcpl); ++f) {
      unsigned flags = 0;
      size_t n = 0;
      deflate |= H5Pget_filter2(dcpl, static_cast<unsigned>(f), &flags, &n, nullptr, 0, nullptr, nullptr) ==
                 H5Z_FILTER_DEFLATE;
    }
    EXPECT_TRUE(deflate);
  }
  EXPECT_EQ(total, manifest.total_rows);
  EXPECT_EQ(text::Vocab::load(tmp / "out/vocab.txt").tokens(), vocab.tokens());
  // Nothing half-written stays behind.
  for (const auto& entry : fs::directory_iterator(tmp / "out"))
    EXPECT_NE(entry.path().extension(), ".tmp") << "temporary file left: " << entry.path();
}

TEST(Preprocess, LargeVocabularyStoresInt32) {
  TempDir tmp("pre-int32");
  const text::Vocab vocab = testing::corpus_vocab(70000);
  ASSERT_GT(vocab.size(), 65536u);
  vocab.save(tmp / "vocab.txt");
  fs::create_directories(tmp / "corpus");
  std::ofstream(tmp / "corpus/t.txt") << "extra69999 kaka extra65600.\nlolo extra0.\n\nsusu extra69000\n";
  const Manifest manifest = preprocess_single(options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "out"));
  ASSERT_EQ(manifest.total_rows, 2u);
  const std::string path = tmp / ("out/" + manifest.shards.at(0).file);
  h5::Handle file = h5::open_read_only(path);
  h5::Handle ids(H5Dopen2(file, "input_ids", H5P_DEFAULT));
  EXPECT_EQ(h5::describe_type(ids), "int32");
  const std::vector<Row> rows = testing::read_all_rows(tmp / "out");
  const text::BertTokenizer tokenizer(vocab, text::TokenizerOptions{});
  EXPECT_EQ(tokenizer.decode(row_tokens(rows, vocab)), "extra69999 kaka extra65600 . lolo extra0 . susu extra69000");
  EXPECT_EQ(rows[0].ids[1], vocab.id("extra69999"));
}

TEST(Preprocess, SameRowsWhateverTheRankCount) {
  TempDir tmp("pre-ranks");
  testing::CorpusOptions co;
  co.files = 7;
  co.docs_per_file = 20;
  co.max_sentences = 12;  // long documents: examples are split and trimmed
  testing::write_corpus(tmp / "corpus", co);
  const text::Vocab vocab = testing::corpus_vocab();
  vocab.save(tmp / "vocab.txt");
  PreprocessOptions o = options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "one");
  o.max_seq_length = 32;
  preprocess_single(o);
  std::vector<Row> one = testing::read_all_rows(tmp / "one");

  // Three ranks simulated in one process: each processes its own files into the same directory.
  const std::vector<InputFile> files = list_input_files(o.inputs);
  const std::vector<int> owner = assign_files_to_ranks(files, 3);
  EXPECT_EQ(std::set<int>(owner.begin(), owner.end()).size(), 3u);
  o.output_dir = tmp / "three";
  fs::create_directories(o.output_dir);
  std::vector<Row> three;
  for (int r = 2; r >= 0; --r) {  // reverse rank order: the rows come out in another order
    const RankResult result = preprocess_rank(o, vocab, files, owner, r);
    for (const ShardInfo& s : result.shards) {
      std::vector<Row> part = testing::read_shard_rows(o.output_dir + "/" + s.file);
      three.insert(three.end(), part.begin(), part.end());
    }
  }
  ASSERT_GT(one.size(), 50u);
  EXPECT_TRUE(one != three) << "expected a different row order across shards";
  std::sort(one.begin(), one.end());
  std::sort(three.begin(), three.end());
  EXPECT_TRUE(one == three) << one.size() << " vs " << three.size() << " rows";

  // Another seed changes the packing.
  o.seed = 4;
  o.output_dir = tmp / "seed4";
  preprocess_single(o);
  std::vector<Row> other = testing::read_all_rows(tmp / "seed4");
  std::sort(other.begin(), other.end());
  EXPECT_TRUE(one != other);
}

// HDF5 stamps each object with its modification time unless told not to: two runs a second apart then
// gave different bytes and CRCs, so a rerun could not be checked against an earlier output with cmp.
TEST(Preprocess, TheSameInputGivesByteIdenticalShards) {
  TempDir tmp("pre-bytes");
  testing::write_corpus(tmp / "corpus", testing::CorpusOptions{});
  testing::corpus_vocab().save(tmp / "vocab.txt");
  const auto bytes = [](const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  const Manifest first = preprocess_single(options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "first"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // the stamps count seconds
  const Manifest second = preprocess_single(options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "second"));
  ASSERT_EQ(first.shards.size(), second.shards.size());
  ASSERT_FALSE(first.shards.empty());
  for (size_t i = 0; i < first.shards.size(); ++i) {
    EXPECT_EQ(first.shards[i].crc32, second.shards[i].crc32) << first.shards[i].file;
    EXPECT_TRUE(bytes(fs::path(tmp / "first") / first.shards[i].file) ==
                bytes(fs::path(tmp / "second") / second.shards[i].file))
        << first.shards[i].file;
  }
}

TEST(ShardWriter, AbandonedOrFailedWriterLeavesNothing) {
  TempDir tmp("writer");
  ShardWriterOptions o;
  o.max_seq_length = 8;
  o.vocab_size = 100;
  o.chunk_rows = 2;
  const std::vector<int32_t> ids = {2, 10, 11, 3, 0, 0, 0, 0};
  const std::vector<uint8_t> seg(8, 0);
  {
    ShardWriter writer(tmp / "a.h5", o);
    for (int i = 0; i < 5; ++i) writer.add(ids.data(), seg.data(), 4);
    EXPECT_TRUE(fs::exists(tmp / ".a.h5.tmp"));
  }  // never finished (an error elsewhere)
  {
    ShardWriter writer(tmp / "b.h5", o);
    writer.add(ids.data(), seg.data(), 4);
    const std::vector<int32_t> bad = {2, 100, 3, 0, 0, 0, 0, 0};
    try {
      writer.add(bad.data(), seg.data(), 3);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("b.h5"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  ShardWriter writer(tmp / "c.h5", o);
  for (int i = 0; i < 5; ++i) writer.add(ids.data(), seg.data(), 4);
  const ShardInfo info = writer.finish();
  EXPECT_EQ(info.rows, 5u);
  EXPECT_EQ(info.file, "c.h5");
  EXPECT_EQ(testing::read_shard_rows(tmp / "c.h5").size(), 5u);
  EXPECT_FALSE(fs::exists(tmp / ".c.h5.tmp"));
}

TEST(Preprocess, FilesAreBalancedBySize) {
  std::vector<InputFile> files = {{"a", 100}, {"b", 10}, {"c", 60}, {"d", 50}, {"e", 40}, {"f", 1}};
  const std::vector<int> owner = assign_files_to_ranks(files, 2);
  uint64_t load[2] = {0, 0};
  for (size_t i = 0; i < files.size(); ++i) load[owner[i]] += files[i].size;
  EXPECT_EQ(owner, (std::vector<int>{0, 1, 1, 1, 0, 1}));
  EXPECT_EQ(load[0], 140u);
  EXPECT_EQ(load[1], 121u);
  EXPECT_EQ(assign_files_to_ranks(files, 1), std::vector<int>(6, 0));
}

TEST(Preprocess, ErrorsNameTheInput) {
  TempDir tmp("pre-errors");
  const text::Vocab vocab = testing::corpus_vocab();
  vocab.save(tmp / "vocab.txt");
  try {
    preprocess_single(options_for(tmp / "missing", tmp / "vocab.txt", tmp / "out"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp / "missing"), std::string::npos) << e.what();
  }
  fs::create_directories(tmp / "corpus");
  std::ofstream(tmp / "corpus/x.txt") << "kaka lolo.\n";
  try {
    preprocess_single(options_for(tmp / "corpus", tmp / "no-vocab.txt", tmp / "out"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-vocab.txt"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
}

TEST(Preprocess, ShardsAreReadableWithH5py) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  if (python == nullptr || !fs::exists(python)) GTEST_SKIP() << "ELECTRA_PYTHON not set";
  if (std::system((std::string(python) + " -c 'import h5py' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "h5py not importable";
  TempDir tmp("pre-h5py");
  testing::write_corpus(tmp / "corpus", {});
  testing::corpus_vocab().save(tmp / "vocab.txt");
  const Manifest manifest = preprocess_single(options_for(tmp / "corpus", tmp / "vocab.txt", tmp / "out"));
  const std::string script = tmp / "check.py";
  std::ofstream(script) << R"(import h5py, json, sys
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
total = 0
for s in m["shards"]:
    with h5py.File(d + "/" + s["file"], "r") as f:
        ids, seg, lens = f["input_ids"], f["segment_ids"], f["lengths"]
        assert ids.dtype == "uint16" and seg.dtype == "uint8" and lens.dtype == "uint16", (ids.dtype, seg.dtype, lens.dtype)
        assert ids.shape == (s["rows"], m["max_seq_length"]) and lens.shape == (s["rows"],)
        assert f.attrs["format_version"] == 1 and int(f.attrs["vocab_hash"]) == m["vocab_hash"]
        assert ids.compression == "gzip" and ids.chunks[0] > 0
        for r in range(ids.shape[0]):
            assert ids[r, 0] == 2 and ids[r, lens[r] - 1] == 3 and (ids[r, lens[r]:] == 0).all()
        total += ids.shape[0]
assert total == m["total_rows"]
print("ok", total)
)";
  const std::string command = std::string(python) + " " + script + " " + (tmp / "out");
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  EXPECT_GT(manifest.total_rows, 0u);
}

}  // namespace
}  // namespace electra::data
