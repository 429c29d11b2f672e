// Helpers shared by the data tests: temporary directories, a vocabulary covering generated text, a
// generated corpus, synthetic shards whose content is a known function of the example index, and a
// plain HDF5 reader of shard rows (independent of the loader).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "data_pipeline/preprocess/manifest.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/core/batch.h"

namespace electra::data::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The generated corpus's words (lower-case ASCII), without punctuation.
const std::vector<std::string>& corpus_words();
// [PAD] [UNK] [CLS] [SEP] [MASK], "." "," and corpus_words() (plus `extra` tokens at the end).
text::Vocab corpus_vocab(size_t extra = 0);

struct CorpusOptions {
  int files = 6;
  int docs_per_file = 12;
  int max_sentences = 6;
  int max_words = 8;
  uint64_t seed = 7;
  bool messy = true;  // CRLF line ends, blank lines with spaces, upper case, an invalid UTF-8 byte, no final newline
};
// Writes a corpus (files in nested directories) under `dir`; returns the files written, sorted.
std::vector<std::string> write_corpus(const std::string& dir, const CorpusOptions& options);

struct Row {
  std::vector<int32_t> ids;
  std::vector<uint8_t> segments;
  int length = 0;
  bool operator<(const Row& o) const { return ids != o.ids ? ids < o.ids : segments < o.segments; }
  bool operator==(const Row& o) const { return ids == o.ids && segments == o.segments && length == o.length; }
};
// Short form for gtest messages: length and the first tokens.
void PrintTo(const Row& row, std::ostream* out);
// All rows of one shard file, read with the HDF5 C API.
std::vector<Row> read_shard_rows(const std::string& path);
// All rows of a data directory in manifest order.
std::vector<Row> read_all_rows(const std::string& dir);
// example_ids of every row of a packed data directory in manifest order (one vector of L entries per row).
std::vector<std::vector<uint8_t>> read_all_example_ids(const std::string& dir);

// Synthetic example i: length 4 + (i * 37) % (seq - 4) real tokens, [CLS] t.. [SEP] with tokens
// 5 + (i * 7919 + c * 1031) % (vocab_size - 5), segment 1 on the second half.
Row synthetic_row(uint64_t i, int seq_length, size_t vocab_size);
// Writes shards with the given row counts (examples numbered consecutively across shards), vocab.txt
// and manifest.json into `dir`.
void write_synthetic_dataset(const std::string& dir, const text::Vocab& vocab, const std::vector<uint64_t>& shard_rows,
                             int seq_length, int chunk_rows = 64);

// The original tokens of row i of a batch: input_word_ids with the masked positions put back.
std::vector<int32_t> unmasked_row(const Batch& b, int i);
// Every tensor and key of two batches is equal (GoogleTest expectations).
void expect_same_batch(const Batch& a, const Batch& b);

}  // namespace electra::data::testing
