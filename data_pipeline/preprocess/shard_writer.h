// Writer of electra-mpi shards, one HDF5 file per shard:
//   input_ids   [N, L]  uint16 when the vocabulary has <= 65,536 entries, else int32
//   segment_ids [N, L]  uint8 (per example: 0 for [CLS] A [SEP], 1 for B [SEP])
//   lengths     [N]     uint16: real tokens including [CLS]/[SEP]; positions >= length hold [PAD]
//   example_ids [N, L]  uint8, packed shards only: 1-based index of the token's example within its row,
//                       0 on padding. A packed row holds up to 255 examples one after another from slot 0,
//                       each [CLS] A [SEP] (B [SEP]); `lengths` is the row's total of real tokens.
// chunked by rows and deflate-compressed; file attributes format_version (1, or 2 for packed shards, so that
// a build that does not know packing refuses them instead of reading a row as one example), max_seq_length,
// vocab_size, vocab_hash (uint64, Vocab::hash()). The file is written under a temporary name and renamed by
// finish().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/core/h5.h"

namespace electra::data {

inline constexpr int kShardFormatVersion = 1;
inline constexpr int kPackedShardFormatVersion = 2;  // version 1 plus example_ids
inline constexpr const char* kInputIds = "input_ids";
inline constexpr const char* kSegmentIds = "segment_ids";
inline constexpr const char* kLengths = "lengths";
inline constexpr const char* kExampleIds = "example_ids";
inline constexpr int kMaxExamplesPerRow = 255;  // example_ids is uint8, 0 meaning padding

inline int shard_format_version(bool packed) { return packed ? kPackedShardFormatVersion : kShardFormatVersion; }

// Shards store token ids as uint16 when every id fits.
inline bool shard_ids_are_uint16(uint64_t vocab_size) { return vocab_size <= 65536; }

struct ShardWriterOptions {
  int max_seq_length = 128;
  uint64_t vocab_size = 0;
  uint64_t vocab_hash = 0;
  // Rows per HDF5 chunk: the unit the loader decompresses for a random read. 64 rows read about 3x
  // faster than 256 with a cold cache (tests/bench/data_bench.cpp) for ~8% larger files.
  int chunk_rows = 64;
  int deflate_level = 4;  // zlib level 1..9
  bool packed = false;    // rows hold several examples: example_ids is written, format_version 2
};

// What a finished shard looks like, as the manifest lists it.
struct ShardInfo {
  std::string file;  // path relative to the output directory
  uint64_t rows = 0;
  uint32_t crc32 = 0;
  int rank = 0;
};

class ShardWriter {
 public:
  // Creates "<dir>/.<name>.tmp"; finish() renames it to "<dir>/<name>".
  ShardWriter(std::string path, ShardWriterOptions options);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  // Removes the temporary file when finish() was not reached (error paths).
  ~ShardWriter();

  // One row: `ids` and `segments` (and `example_ids` when packed, else nullptr) have max_seq_length entries
  // (padded), `length` real tokens.
  void add(const int32_t* ids, const uint8_t* segments, int length, const uint8_t* example_ids = nullptr);
  uint64_t rows() const { return rows_ + static_cast<uint64_t>(buffered_); }  // including unflushed rows
  const std::string& path() const { return path_; }

  // Flushes, writes the attributes, closes, fsyncs and renames; returns rows and the file's CRC-32
  // (ShardInfo::file is the file name; the caller makes it relative to its output directory).
  ShardInfo finish();

 private:
  void flush_chunk();

  std::string path_, tmp_path_;
  ShardWriterOptions options_;
  bool uint16_ids_;
  h5::Handle file_, ids_, segments_, lengths_, example_ids_;
  std::vector<uint16_t> buf_ids16_;
  std::vector<int32_t> buf_ids32_;
  std::vector<uint8_t> buf_segments_;
  std::vector<uint16_t> buf_lengths_;
  std::vector<uint8_t> buf_example_ids_;
  int buffered_ = 0;
  uint64_t rows_ = 0;
  bool finished_ = false;
};

}  // namespace electra::data
