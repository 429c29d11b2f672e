// electra-preprocess as a library: text files -> HDF5 shards + manifest.json, split over MPI ranks.
//
// Every rank sees the same sorted list of input files (rank 0 lists them and broadcasts). Files are
// assigned to ranks by size (largest first, to the least-loaded rank), each rank streams its files in
// global order and writes its own shards; the example builder of file i draws its random numbers from
// Philox(seed, kPreprocess, 0, i), so the set of rows is the same for any number of ranks (only the
// shard they land in differs). Rank 0 gathers the shard lists and writes manifest.json last.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data_pipeline/preprocess/manifest.h"
#include "data_pipeline/tokenizer/vocab.h"

namespace electra::data {

struct PreprocessOptions {
  std::vector<std::string> inputs;  // files or directories (recursed)
  std::string vocab_path;
  std::string output_dir;
  int max_seq_length = 128;
  bool lower_case = true;
  // true (the BERT layout): a blank line ends a document. false (google-research/electra's
  // --blanks-separate-docs=False, for text whose blank lines separate paragraphs, such as
  // reStructuredText or Markdown): a document is a whole file and blank lines are skipped.
  bool blanks_separate_docs = true;
  uint64_t seed = 1;
  uint64_t rows_per_shard = 65536;
  int chunk_rows = 64;  // rows per HDF5 chunk (see ShardWriterOptions)
  int deflate_level = 4;
  std::string command_line;           // recorded in the manifest
  double progress_interval_s = 10.0;  // seconds between progress lines (<= 0: none)
};

struct InputFile {
  std::string path;
  uint64_t size = 0;
};

// All regular files under `inputs` (directories recursed), sorted by path, duplicates removed.
// Errors name a missing input. An empty result is an error.
std::vector<InputFile> list_input_files(const std::vector<std::string>& inputs);

// Owner rank of each file: largest files first, each to the rank with the fewest bytes so far (ties:
// lowest rank). Deterministic.
std::vector<int> assign_files_to_ranks(const std::vector<InputFile>& files, int world_size);

struct PreprocessStats {
  uint64_t files = 0;
  uint64_t bytes = 0;
  uint64_t lines = 0;
  uint64_t examples = 0;
  uint64_t tokens = 0;          // real tokens in written examples, [CLS]/[SEP] included
  uint64_t invalid_utf8 = 0;    // lines (or sequences) the tokenizer found invalid
  uint64_t unknown_tokens = 0;  // words mapped to [UNK]
  uint64_t words = 0;
  double seconds = 0;

  void add(const PreprocessStats& other);
  nlohmann::json to_json() const;
  static PreprocessStats from_json(const nlohmann::json& j);
};

struct RankResult {
  std::vector<ShardInfo> shards;  // file names relative to the output directory
  PreprocessStats stats;
};

// Processes the files owned by `rank` (owner[i] == rank) into "<output>/shard-r<rank>-<k>.h5".
RankResult preprocess_rank(const PreprocessOptions& options, const text::Vocab& vocab,
                           const std::vector<InputFile>& files, const std::vector<int>& owner, int rank);

// The whole program on every rank of `comm` (collective). Returns the manifest on every rank once rank
// 0 has written it. Any rank's failure is an electra::Error on every rank (no hang, no manifest).
Manifest run_preprocess(const PreprocessOptions& options, MPI_Comm comm);

}  // namespace electra::data
