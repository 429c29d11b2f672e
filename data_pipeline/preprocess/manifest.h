// manifest.json: the table of contents of a preprocessed data directory. Written last (atomically) by
// rank 0 of electra-preprocess; the loader trusts nothing it does not list.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data_pipeline/preprocess/shard_writer.h"

namespace electra::data {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kVocabFileName = "vocab.txt";
// Rank 0's lock on the output directory while a run writes it (lib/core/dir_lock.h), removed once the
// manifest is written: found at the start of a run, it says that an earlier run did not finish.
inline constexpr const char* kOutputLockName = ".electra-preprocess.lock";
// Where a run writes its shards before they replace an earlier output (electra-preprocess --force).
inline constexpr const char* kStagingDirName = ".electra-preprocess-staging";

// Fails naming `dir` when it has no manifest.json but electra-preprocess's kOutputLockName: a run is still
// writing it or did not finish, so its shards are not to be read.
void check_not_half_written(const std::string& dir);

struct Manifest {
  // shard_format_version(pack): 2 when the shards are packed.
  int format_version = kShardFormatVersion;
  std::vector<ShardInfo> shards;  // in a fixed order (rank, then shard index); files relative to the dir
  uint64_t total_rows = 0;
  uint64_t vocab_hash = 0;
  uint64_t vocab_size = 0;
  int max_seq_length = 0;
  bool lower_case = true;
  bool blanks_separate_docs = true;  // PreprocessOptions::blanks_separate_docs (absent in older manifests: true)
  // PreprocessOptions::pack: every shard holds packed rows (example_ids). Absent in older manifests: false.
  bool pack = false;
  uint64_t seed = 0;
  std::string command_line;
  // Counts reported by electra-preprocess; "examples" counts examples (several per row when packed) and
  // "slot_fill" is the share of the total_rows x max_seq_length slots holding real tokens.
  nlohmann::json stats = nlohmann::json::object();

  nlohmann::json to_json() const;
  // Parses and checks the fields; `where` names the file in errors.
  static Manifest from_json(const nlohmann::json& j, const std::string& where);
  static Manifest load(const std::string& path);
  // Writes <dir>/manifest.json atomically.
  void save(const std::string& dir) const;
};

}  // namespace electra::data
