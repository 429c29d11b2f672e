#include "tests/data/test_util.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "data_pipeline/preprocess/shard_writer.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "lib/core/philox.h"

namespace electra::data::testing {
namespace fs = std::filesystem;

TempDir::TempDir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/electra-" + tag + "-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) fail("mkdtemp failed for ", pattern);
  path_ = buffer.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

const std::vector<std::string>& corpus_words() {
  static const std::vector<std::string> words = [] {
    const char* syllables[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "du", "ga", "ho"};
    std::vector<std::string> out;
    for (const char* a : syllables)
      for (const char* b : syllables) out.push_back(std::string(a) + b);
    for (const char* a : syllables) out.push_back(std::string(a) + "x" + a + "n");
    return out;
  }();
  return words;
}

text::Vocab corpus_vocab(size_t extra) {
  std::vector<std::string> tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","};
  for (const std::string& w : corpus_words()) tokens.push_back(w);
  for (size_t i = 0; i < extra; ++i) tokens.push_back("extra" + std::to_string(i));
  return text::Vocab::from_tokens(tokens, "test corpus vocab");
}

std::vector<std::string> write_corpus(const std::string& dir, const CorpusOptions& options) {
  const std::vector<std::string>& words = corpus_words();
  PhiloxSequence rng(options.seed, RandomPurpose::kTest, 0, 0);
  std::vector<std::string> files;
  for (int f = 0; f < options.files; ++f) {
    const fs::path sub = fs::path(dir) / (f % 2 == 0 ? "a" : "b/c");
    fs::create_directories(sub);
    const std::string path = (sub / ("part-" + std::to_string(f) + ".txt")).string();
    std::ofstream out(path, std::ios::binary);
    const int docs = f == options.files - 1 && options.messy ? 0 : options.docs_per_file;  // last file empty
    for (int d = 0; d < docs; ++d) {
      const int sentences = 1 + static_cast<int>(rng.next_below(static_cast<uint32_t>(options.max_sentences)));
      for (int s = 0; s < sentences; ++s) {
        const int n = 1 + static_cast<int>(rng.next_below(static_cast<uint32_t>(options.max_words)));
        std::string line = options.messy && rng.next_below(4) == 0 ? "  " : "";
        for (int w = 0; w < n; ++w) {
          std::string word = words[rng.next_below(static_cast<uint32_t>(words.size()))];
          if (options.messy && rng.next_below(10) == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
          line += (w ? " " : "") + word;
          if (w + 1 < n && rng.next_below(8) == 0) line += ",";
        }
        line += ".";
        if (options.messy && f == 1 && d == 2 && s == 0) line += " \xff\xfe";  // invalid UTF-8
        const bool crlf = options.messy && f == 2;
        const bool last_line = d == docs - 1 && s == sentences - 1;
        out << line << (last_line && options.messy && f == 0 ? "" : (crlf ? "\r\n" : "\n"));
      }
      if (d + 1 < docs) out << (options.messy && d % 3 == 1 ? " \t\n" : "\n");
    }
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

void PrintTo(const Row& row, std::ostream* out) {
  *out << "Row(length " << row.length << ":";
  for (size_t i = 0; i < row.ids.size() && i < 8; ++i) *out << " " << row.ids[i];
  *out << " ...)";
}

std::vector<Row> read_shard_rows(const std::string& path) {
  h5::Handle file = h5::open_read_only(path);
  h5::Handle ids(h5::check(H5Dopen2(file, kInputIds, H5P_DEFAULT), path + ": input_ids"));
  h5::Handle seg(h5::check(H5Dopen2(file, kSegmentIds, H5P_DEFAULT), path + ": segment_ids"));
  h5::Handle len(h5::check(H5Dopen2(file, kLengths, H5P_DEFAULT), path + ": lengths"));
  const std::vector<hsize_t> d = h5::dims(ids);
  const size_t n = d[0], L = d[1];
  std::vector<int32_t> all_ids(n * L);
  std::vector<uint8_t> all_seg(n * L);
  std::vector<uint16_t> all_len(n);
  if (n > 0) {
    h5::check(H5Dread(ids, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, all_ids.data()), "read ids");
    h5::check(H5Dread(seg, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all_seg.data()), "read segments");
    h5::check(H5Dread(len, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, all_len.data()), "read lengths");
  }
  std::vector<Row> rows(n);
  for (size_t r = 0; r < n; ++r) {
    rows[r].ids.assign(all_ids.begin() + static_cast<std::ptrdiff_t>(r * L),
                       all_ids.begin() + static_cast<std::ptrdiff_t>((r + 1) * L));
    rows[r].segments.assign(all_seg.begin() + static_cast<std::ptrdiff_t>(r * L),
                            all_seg.begin() + static_cast<std::ptrdiff_t>((r + 1) * L));
    rows[r].length = all_len[r];
  }
  return rows;
}

std::vector<Row> read_all_rows(const std::string& dir) {
  const Manifest manifest = Manifest::load(dir + "/" + kManifestName);
  std::vector<Row> rows;
  for (const ShardInfo& s : manifest.shards) {
    std::vector<Row> part = read_shard_rows(dir + "/" + s.file);
    rows.insert(rows.end(), part.begin(), part.end());
  }
  return rows;
}

std::vector<std::vector<uint8_t>> read_all_example_ids(const std::string& dir) {
  const Manifest manifest = Manifest::load(dir + "/" + kManifestName);
  std::vector<std::vector<uint8_t>> rows;
  for (const ShardInfo& s : manifest.shards) {
    const std::string path = dir + "/" + s.file;
    h5::Handle file = h5::open_read_only(path);
    h5::Handle ds(h5::check(H5Dopen2(file, kExampleIds, H5P_DEFAULT), path + ": example_ids"));
    const std::vector<hsize_t> d = h5::dims(ds);
    std::vector<uint8_t> all(d[0] * d[1]);
    if (!all.empty())
      h5::check(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all.data()), path + ": read example_ids");
    for (size_t r = 0; r < d[0]; ++r)
      rows.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(r * d[1]),
                        all.begin() + static_cast<std::ptrdiff_t>((r + 1) * d[1]));
  }
  return rows;
}

Row synthetic_row(uint64_t i, int seq_length, size_t vocab_size) {
  Row row;
  const uint64_t L = static_cast<uint64_t>(seq_length);
  row.length = static_cast<int>(4 + (i * 37) % (L - 4));
  row.ids.assign(L, 0);
  row.segments.assign(L, 0);
  row.ids[0] = 2;                                    // [CLS]
  row.ids[static_cast<size_t>(row.length - 1)] = 3;  // [SEP]
  for (int c = 1; c < row.length - 1; ++c)
    row.ids[static_cast<size_t>(c)] =
        static_cast<int32_t>(5 + (i * 7919 + static_cast<uint64_t>(c) * 1031) % (vocab_size - 5));
  for (int c = row.length / 2; c < row.length; ++c) row.segments[static_cast<size_t>(c)] = 1;
  return row;
}

void write_synthetic_dataset(const std::string& dir, const text::Vocab& vocab, const std::vector<uint64_t>& shard_rows,
                             int seq_length, int chunk_rows) {
  fs::create_directories(dir);
  Manifest manifest;
  manifest.vocab_hash = vocab.hash();
  manifest.vocab_size = vocab.size();
  manifest.max_seq_length = seq_length;
  ShardWriterOptions options;
  options.max_seq_length = seq_length;
  options.vocab_size = vocab.size();
  options.vocab_hash = vocab.hash();
  options.chunk_rows = chunk_rows;
  uint64_t next = 0;
  for (size_t s = 0; s < shard_rows.size(); ++s) {
    ShardWriter writer(dir + "/shard-" + std::to_string(s) + ".h5", options);
    for (uint64_t r = 0; r < shard_rows[s]; ++r, ++next) {
      const Row row = synthetic_row(next, seq_length, vocab.size());
      writer.add(row.ids.data(), row.segments.data(), row.length);
    }
    manifest.shards.push_back(writer.finish());
    manifest.total_rows += shard_rows[s];
  }
  vocab.save(dir + "/" + kVocabFileName);
  manifest.save(dir);
}

std::vector<int32_t> unmasked_row(const Batch& b, int i) {
  std::vector<int32_t> ids(b.input_word_ids.begin() + i * b.seq_length,
                           b.input_word_ids.begin() + (i + 1) * b.seq_length);
  for (int k = 0; k < b.num_predictions; ++k) {
    const size_t p = static_cast<size_t>(i) * b.num_predictions + k;
    if (b.masked_lm_weights[p] > 0) ids[static_cast<size_t>(b.masked_lm_positions[p])] = b.masked_lm_ids[p];
  }
  return ids;
}

void expect_same_batch(const Batch& a, const Batch& b) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.example_index, b.example_index);
  EXPECT_EQ(a.input_word_ids, b.input_word_ids);
  EXPECT_EQ(a.input_mask, b.input_mask);
  EXPECT_EQ(a.input_type_ids, b.input_type_ids);
  EXPECT_EQ(a.position_ids, b.position_ids);
  EXPECT_EQ(a.next_sentence_labels, b.next_sentence_labels);
  EXPECT_EQ(a.masked_lm_positions, b.masked_lm_positions);
  EXPECT_EQ(a.masked_lm_ids, b.masked_lm_ids);
  EXPECT_EQ(a.masked_lm_weights, b.masked_lm_weights);
  EXPECT_EQ(a.global_row_offset, b.global_row_offset);
  EXPECT_EQ(a.global_batch_rows, b.global_batch_rows);
}

}  // namespace electra::data::testing
