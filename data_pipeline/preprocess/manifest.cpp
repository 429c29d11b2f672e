#include "data_pipeline/preprocess/manifest.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "data_pipeline/preprocess/file_util.h"
#include "lib/core/atomic_file.h"
#include "lib/core/error.h"

namespace electra::data {

nlohmann::json Manifest::to_json() const {
  nlohmann::json shard_list = nlohmann::json::array();
  for (const ShardInfo& s : shards)
    shard_list.push_back({{"file", s.file}, {"rows", s.rows}, {"crc32", crc32_hex(s.crc32)}, {"rank", s.rank}});
  return {{"format", "electra-mpi shards"},
          {"format_version", format_version},
          {"shards", shard_list},
          {"total_rows", total_rows},
          {"vocab_hash", vocab_hash},
          {"vocab_size", vocab_size},
          {"max_seq_length", max_seq_length},
          {"tokenizer", {{"lower_case", lower_case}}},
          {"blanks_separate_docs", blanks_separate_docs},
          {"pack", pack},
          {"seed", seed},
          {"command_line", command_line},
          {"stats", stats}};
}

Manifest Manifest::from_json(const nlohmann::json& j, const std::string& where) {
  Manifest m;
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key)) fail(where, ": missing key '", key, "'");
    return j.at(key);
  };
  try {
    m.format_version = field("format_version").get<int>();
    m.pack = j.value("pack", false);
    if (m.format_version != shard_format_version(m.pack))
      fail(where, ": format_version ", m.format_version, " is not supported with pack ", m.pack ? "true" : "false",
           " (expected ", shard_format_version(m.pack), ")");
    m.total_rows = field("total_rows").get<uint64_t>();
    m.vocab_hash = field("vocab_hash").get<uint64_t>();
    m.vocab_size = field("vocab_size").get<uint64_t>();
    m.max_seq_length = field("max_seq_length").get<int>();
    if (m.max_seq_length <= 0) fail(where, ": max_seq_length ", m.max_seq_length, " must be positive");
    m.lower_case = field("tokenizer").at("lower_case").get<bool>();
    m.blanks_separate_docs = j.value("blanks_separate_docs", true);
    m.seed = field("seed").get<uint64_t>();
    m.command_line = j.value("command_line", std::string());
    m.stats = j.value("stats", nlohmann::json::object());
    uint64_t sum = 0;
    std::set<std::string> files;
    for (const nlohmann::json& s : field("shards")) {
      ShardInfo info;
      info.file = s.at("file").get<std::string>();
      info.rows = s.at("rows").get<uint64_t>();
      // Exactly what crc32_hex writes: std::stoul alone took "-1", 9 digits and trailing letters.
      const std::string crc = s.at("crc32").get<std::string>();
      if (crc.size() != 8 || crc.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
        fail(where, ": shard '", info.file, "' has crc32 \"", crc, "\" (expected 8 hex digits)");
      info.crc32 = static_cast<uint32_t>(std::stoul(crc, nullptr, 16));
      info.rank = s.value("rank", 0);
      if (info.file.empty() || std::filesystem::path(info.file).is_absolute() ||
          info.file.find("..") != std::string::npos)
        fail(where, ": shard file name '", info.file, "' must be relative to the data directory");
      // Listed twice, a shard's rows would be read twice per epoch (and counted twice by electra-eval).
      if (!files.insert(std::filesystem::path(info.file).lexically_normal().string()).second)
        fail(where, ": shard '", info.file, "' is listed twice");
      sum += info.rows;
      m.shards.push_back(std::move(info));
    }
    if (sum != m.total_rows) fail(where, ": total_rows ", m.total_rows, " but the shards add up to ", sum);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": malformed manifest: ", e.what());
  }
  return m;
}

void check_not_half_written(const std::string& dir) {
  const std::filesystem::path lock = std::filesystem::path(dir) / kOutputLockName;
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(dir) / kManifestName, ec) || !std::filesystem::exists(lock, ec))
    return;
  fail(dir, ": electra-preprocess has not finished writing it (", lock.string(),
       " is there, manifest.json is not: a run is still writing it, or it did not finish); wait for it, or run "
       "electra-preprocess again with --force");
}

Manifest Manifest::load(const std::string& path) {
  // A FIFO would block the open below for good.
  if (std::filesystem::exists(path) && !std::filesystem::is_regular_file(path)) fail(path, ": not a regular file");
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open manifest");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);  // the whole file: text after the object is an error too
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

void Manifest::save(const std::string& dir) const {
  // Replacement, not an exception, for a command line that is not UTF-8: the run is done by now.
  write_file_atomically(std::filesystem::path(dir) / kManifestName,
                        to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

}  // namespace electra::data
