// Random access to the examples of a data directory, in one of two layouts:
//   - electra-mpi shards (manifest.json + shard-*.h5, see data_pipeline/preprocess/shard_writer.h), packed
//     (several examples per row, example_ids, format 2) or not; one directory is all one or all the other,
//     as its manifest's "pack" says (a shard that disagrees is refused at open);
//   - NVIDIA DeepLearningExamples BERT shards (no manifest; *.hdf5 / *.h5 files with input_ids,
//     input_mask, segment_ids, masked_lm_positions, masked_lm_ids, next_sentence_labels). Their static
//     masking is undone (masked_lm_ids written back at masked_lm_positions up to the first 0 position)
//     so that the loader can mask dynamically.
// Everything is validated when the dataset is opened: every shard's datasets, element types, shapes,
// attributes and row counts, so a bad file fails the job at start-up with its name, not hours later. Row
// contents are checked when their chunk is first read (token ids in the vocabulary, lengths; for packed
// rows, example_ids against lengths and the [CLS] ... [SEP] bounds of each example), with the file,
// dataset and row named.
// Reading goes through an LRU cache of decompressed HDF5 chunks (rows are stored in chunks of e.g. 64
// rows; a random row read costs one chunk decompression unless the chunk is cached). read() is
// thread-safe: HDF5 calls and the cache are serialised by a mutex, but for electra-mpi shards the
// compressed chunk bytes are fetched with H5Dread_chunk and inflated (zlib + HDF5 shuffle) outside it,
// so several reader threads decompress in parallel (HDF5's own filter pipeline runs under its global
// lock in thread-safe builds).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "data_pipeline/tokenizer/vocab.h"
#include "lib/core/h5.h"

namespace electra::data {

struct DatasetOptions {
  std::string data_dir;
  std::string vocab_path;                    // electra-mpi: optional (default <data_dir>/vocab.txt); NVIDIA: required
  int seq_length = 128;                      // must equal the data's sequence length
  uint64_t cache_bytes = uint64_t{1} << 30;  // decompressed chunks kept (LRU)
  int max_open_files = 64;
  bool verify_checksums = false;  // electra-mpi: compare each shard's CRC-32 with the manifest at open
};

enum class ShardFormat { kElectra, kNvidia };

// Fails naming `dir` unless it is a directory of shards: electra-mpi shards (manifest.json), not left
// half-written by electra-preprocess (check_not_half_written), or NVIDIA shards (*.hdf5 / *.h5 files and
// no manifest.json). Says which; the files themselves are checked when ShardDataset opens them.
ShardFormat check_data_directory(const std::string& dir);

class ShardDataset {
 public:
  using Format = ShardFormat;

  explicit ShardDataset(const DatasetOptions& options);
  ~ShardDataset();
  ShardDataset(const ShardDataset&) = delete;
  ShardDataset& operator=(const ShardDataset&) = delete;

  Format format() const { return format_; }
  uint64_t num_examples() const { return num_examples_; }
  int seq_length() const { return seq_length_; }
  size_t num_shards() const { return shards_.size(); }
  const text::Vocab& vocab() const { return *vocab_; }
  bool has_next_sentence_labels() const { return format_ == Format::kNvidia; }
  // Rows hold several examples (electra-mpi shards written with --pack true).
  bool packed() const { return packed_; }
  // The manifest's tokenizer.lower_case: how the text was tokenized. Unknown (nullopt) for NVIDIA shards.
  std::optional<bool> lower_case() const { return lower_case_; }
  // What the data is, to compare the ranks' views of it (node-local copies must be the same data): its
  // layout, counts, vocabulary hash and a hash of every shard's file name, rows and recorded CRC-32. The
  // directory's path is not part of it.
  nlohmann::json identity() const;

  // Reads every chunk once, so that a bad row (each is checked when its chunk is first read) fails now,
  // naming file, dataset and row, rather than when a batch reaches it. For small data read up front
  // (held-out shards during training).
  void check_every_row();

  // Row `index` (< num_examples()), thread-safe: the original tokens (seq_length, [PAD] after the real ones),
  // segment ids, number of real tokens and next-sentence label (-1 when the data has none). `example_ids`
  // (seq_length entries, may be nullptr) receives each token's 1-based example within the row, 0 on padding:
  // example_ids of a packed shard, else 1 on the real tokens.
  void read(uint64_t index, int32_t* ids, int32_t* segments, int* length, int32_t* next_sentence_label,
            int32_t* example_ids = nullptr);

  struct CacheStats {
    uint64_t hits = 0, misses = 0, bytes = 0, chunks = 0;
  };
  CacheStats cache_stats() const;

 private:
  struct Shard;
  struct Chunk;
  void open_electra(const std::string& manifest_path);
  void open_nvidia();
  void validate_electra_shard(Shard& shard, uint64_t expected_rows, uint64_t vocab_hash, uint64_t vocab_size,
                              const std::string& manifest_path);
  void validate_nvidia_shard(Shard& shard);
  struct RawChunk;
  Shard& open_shard(size_t shard_index);
  std::shared_ptr<const Chunk> load_chunk(size_t shard_index, uint64_t chunk_index);
  std::shared_ptr<Chunk> read_chunk_hdf5(Shard& shard, uint64_t first, uint64_t rows);
  void check_electra_chunk(const Shard& shard, const Chunk& chunk, uint64_t first) const;

  DatasetOptions options_;
  Format format_ = Format::kElectra;
  std::optional<text::Vocab> vocab_;
  int seq_length_ = 0;
  bool packed_ = false;
  std::optional<bool> lower_case_;
  uint64_t num_examples_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<uint64_t> shard_begin_;  // first example index of each shard (plus the total at the end)
  mutable std::mutex mutex_;           // guards HDF5 calls, open files and the cache
  std::list<size_t> open_lru_;         // shards with open files, most recent first

  using ChunkKey = uint64_t;
  struct CacheEntry {
    std::shared_ptr<const Chunk> chunk;
    std::list<ChunkKey>::iterator lru;
  };
  std::list<ChunkKey> chunk_lru_;  // most recent first
  std::unordered_map<ChunkKey, CacheEntry> cache_;
  uint64_t cache_used_ = 0;
  CacheStats stats_;
};

}  // namespace electra::data
