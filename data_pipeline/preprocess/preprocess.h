// electra-preprocess as a library: text files -> HDF5 shards + manifest.json, split over MPI ranks.
//
// Every rank sees the same sorted list of input files (rank 0 lists them and broadcasts). Files are
// assigned to ranks by size (largest first, to the least-loaded rank), each rank streams its files in
// global order and writes its own shards; the example builder of file i draws its random numbers from
// Philox(seed, kPreprocess, 0, i), so the set of rows is the same for any number of ranks (only the
// shard they land in differs). Rank 0 gathers the shard lists and writes manifest.json last.
//
// With PreprocessOptions::pack the examples of each input file are packed into rows (row_packer.h); the
// rows of a file never take examples of another, which keeps the set of rows independent of the rank
// count (at the price of up to RowPacker::kDefaultLookBack partly filled rows per file).
//
// The output directory must be missing or empty unless PreprocessOptions::force; with force, only what
// electra-preprocess owns there is replaced (manifest.json, the shards it lists, vocab.txt, its temporary
// files), and a shard-r*.h5 that manifest.json does not list is refused. Rank 0 decides before any rank
// writes, and every rank throws the same BadInputError when it refuses. The ranks write their shards under
// OUTPUT/.electra-preprocess-staging/; only a run that succeeded replaces the earlier output with them, so a
// run that fails (a full disk, a rank lost) leaves an earlier output whole.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data_pipeline/preprocess/manifest.h"
#include "data_pipeline/tokenizer/vocab.h"
#include "lib/core/error.h"

namespace electra::data {

// The arguments, the inputs or the output directory were refused before any rank wrote anything
// (electra-preprocess exits with 2).
class BadInputError : public Error {
 public:
  using Error::Error;
};

struct PreprocessOptions {
  std::vector<std::string> inputs;  // files or directories (recursed)
  std::string vocab_path;
  std::string output_dir;
  // false: refuse an output directory that is not empty. true: replace electra-preprocess's own files in it
  // (manifest.json, the shards it lists, vocab.txt, temporary files) and leave everything else alone.
  bool force = false;
  int max_seq_length = 128;
  bool lower_case = true;
  // true (the BERT layout): a blank line ends a document. false (google-research/electra's
  // --blanks-separate-docs=False, for text whose blank lines separate paragraphs, such as
  // reStructuredText or Markdown): a document is a whole file and blank lines are skipped.
  bool blanks_separate_docs = true;
  // Sequence packing (row_packer.h): several examples per row, recorded in example_ids (shard format 2).
  bool pack = false;
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

// All regular files under `inputs` (directories recursed), sorted by path; a file reached twice (two
// spellings, a link) is read once, under its first path. Files under `skip_dir` (the output directory, when
// it lies inside an input) are left out; an input inside it is an error. Errors name a missing input and a
// path that is not UTF-8 (the manifest is JSON). An empty result is an error.
std::vector<InputFile> list_input_files(const std::vector<std::string>& inputs, const std::string& skip_dir = "");

// `path` with the bytes that are not UTF-8 written as \xNN, and whether there were any.
std::string printable_path(std::string_view path, bool* invalid_utf8 = nullptr);

// Owner rank of each file: largest files first, each to the rank with the fewest bytes so far (ties:
// lowest rank). Deterministic.
std::vector<int> assign_files_to_ranks(const std::vector<InputFile>& files, int world_size);

struct PreprocessStats {
  uint64_t files = 0;
  uint64_t bytes = 0;
  uint64_t lines = 0;
  uint64_t examples = 0;        // examples written (several per row when packed)
  uint64_t rows = 0;            // shard rows written (= examples unless packed)
  uint64_t tokens = 0;          // real tokens in written examples, [CLS]/[SEP] included
  uint64_t invalid_utf8 = 0;    // lines (or sequences) the tokenizer found invalid
  uint64_t unknown_tokens = 0;  // words mapped to [UNK]
  uint64_t words = 0;
  uint64_t truncated_tokens = 0;  // word pieces cut off segments longer than an example (ExampleBuilder)
  uint64_t long_lines = 0;        // lines of more word pieces than an example holds (max_seq_length - 2)
  uint64_t long_line_tokens = 0;  // their word pieces past that: never in any example
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

// Makes `dir` ready for a run (see the top of this file): creates it when missing; refuses a non-empty
// one unless `force`. With `force` it removes only temporary files and an earlier run's staging
// directory, and returns the entries the new output will replace: the shards manifest.json lists and,
// when `unfinished_run` (an earlier run's kOutputLockName was found), every shard file (that run's).
// Refusals are BadInputError naming the path; nothing is removed then. The lock file itself does not count.
std::vector<std::string> prepare_output_directory(const std::string& dir, bool force, bool unfinished_run = false);

// Replaces an output by the shards written under dir/kStagingDirName: removes manifest.json first (no
// reader trusts the old shards from then on), then `replaced`, moves the staged shards in by rename and
// removes the staging directory. manifest.json is written after it.
void install_staged_output(const std::string& dir, const std::vector<std::string>& staged_shards,
                           const std::vector<std::string>& replaced);

// The whole program on every rank of `comm` (collective). Returns the manifest on every rank once rank
// 0 has written it. Any rank's failure is an electra::Error on every rank (no hang, no manifest); a
// refusal of the arguments, inputs or output directory is a BadInputError on every rank.
Manifest run_preprocess(const PreprocessOptions& options, MPI_Comm comm);

}  // namespace electra::data
