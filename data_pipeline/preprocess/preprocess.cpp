#include "data_pipeline/preprocess/preprocess.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <string_view>

#include "data_pipeline/preprocess/example_builder.h"
#include "data_pipeline/preprocess/file_util.h"
#include "data_pipeline/preprocess/row_packer.h"
#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "data_pipeline/tokenizer/text_files.h"
#include "data_pipeline/tokenizer/unicode.h"
#include "lib/core/atomic_file.h"
#include "lib/core/dir_lock.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/core/philox.h"

namespace electra::data {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// Input listing and assignment

std::string printable_path(std::string_view path, bool* invalid_utf8) {
  std::string out;
  bool invalid = false;
  const auto* p = reinterpret_cast<const unsigned char*>(path.data());
  const auto* end = p + path.size();
  while (p < end) {
    const text::unicode::Decoded d = text::unicode::decode_utf8(p, end);
    if (d.invalid) {
      invalid = true;
      for (uint32_t i = 0; i < d.len; ++i) {
        char hex[5];
        std::snprintf(hex, sizeof(hex), "\\x%02X", p[i]);
        out += hex;
      }
    } else {
      out.append(reinterpret_cast<const char*>(p), d.len);
    }
    p += d.len;
  }
  if (invalid_utf8 != nullptr) *invalid_utf8 = invalid;
  return out;
}

namespace {

// The path, refused when it is not UTF-8: the manifest and the plan the ranks share are JSON.
const std::string& checked_utf8(const std::string& path, std::string_view what) {
  bool invalid = false;
  const std::string shown = printable_path(path, &invalid);
  if (invalid) {
    fail(shown, ": ", what, " is not valid UTF-8 (shown with \\xNN for its other bytes); rename it");
  }
  return path;
}

// Whether `path` is `dir` or lies below it; `dir` is weakly_canonical already, `path` is made so (absolute,
// free of "..", links resolved).
bool is_within(const fs::path& path, const fs::path& dir) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(path, ec);
  if (ec || dir.empty()) return false;
  const auto d_end = std::mismatch(dir.begin(), dir.end(), p.begin(), p.end()).first;
  return d_end == dir.end() || (std::next(d_end) == dir.end() && d_end->empty());  // "dir/" ends in an empty part
}

}  // namespace

std::vector<InputFile> list_input_files(const std::vector<std::string>& inputs, const std::string& skip_dir) {
  struct Found {
    InputFile file;
    dev_t device;
    ino_t inode;
  };
  std::vector<Found> found;
  std::error_code canonical_error;
  const fs::path output = skip_dir.empty() ? fs::path() : fs::weakly_canonical(skip_dir, canonical_error);
  const auto add = [&](const std::string& path, uint64_t size) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) fail(printable_path(path), ": ", std::strerror(errno));
    // Unreadable: refused here, whichever file it is (the first one read was bad input, a later one an error
    // in the middle of the run).
    if (::access(path.c_str(), R_OK) != 0) {
      fail(printable_path(path), ": cannot read input file: ", std::strerror(errno));
    }
    found.push_back({{checked_utf8(path, "an input file's path"), size}, st.st_dev, st.st_ino});
  };
  for (const std::string& input : inputs) {
    checked_utf8(input, "--input");
    std::error_code ec;
    const fs::file_status status = fs::status(input, ec);
    if (ec || !fs::exists(status)) fail(input, ": input does not exist");
    if (is_within(input, output)) {
      fail(input, ": --input lies inside --output ", skip_dir, ", where the shards are written");
    }
    if (fs::is_directory(status)) {
      for (fs::recursive_directory_iterator it(input, fs::directory_options::follow_directory_symlink, ec), end;
           it != end; it.increment(ec)) {
        if (ec) fail(input, ": cannot list directory: ", ec.message());
        // The error-code forms: a symbolic-link loop or a vanished file is bad input, not an exception that
        // rank 0 could not hand to the other ranks.
        const bool directory = it->is_directory(ec);
        if (ec) fail(printable_path(it->path().string()), ": ", ec.message());
        if (directory && is_within(it->path(), output)) {
          // An earlier run's shards, manifest and vocab.txt are not text to read.
          ELECTRA_LOG(info) << printable_path(it->path().string()) << ": not read, it is the --output directory";
          it.disable_recursion_pending();
          continue;
        }
        const bool regular = it->is_regular_file(ec);
        if (ec) fail(printable_path(it->path().string()), ": ", ec.message());
        if (!regular) continue;
        const uintmax_t size = it->file_size(ec);
        if (ec) fail(printable_path(it->path().string()), ": ", ec.message());
        add(it->path().string(), static_cast<uint64_t>(size));
      }
      if (ec) fail(input, ": cannot list directory: ", ec.message());
    } else if (fs::is_regular_file(status)) {
      const uintmax_t size = fs::file_size(input, ec);
      if (ec) fail(input, ": ", ec.message());
      add(input, static_cast<uint64_t>(size));
    } else {
      fail(input, ": not a regular file or directory");
    }
  }
  std::stable_sort(found.begin(), found.end(),
                   [](const Found& a, const Found& b) { return a.file.path < b.file.path; });
  // The same file under two paths (`--input dir dir/a.txt`, a link to a directory) is read once: its first.
  std::set<std::pair<dev_t, ino_t>> seen;
  std::vector<InputFile> files;
  uint64_t repeated = 0;
  for (const Found& f : found) {
    if (seen.insert({f.device, f.inode}).second) {
      files.push_back(f.file);
    } else if (files.empty() || files.back().path != f.file.path) {
      ++repeated;
    }
  }
  if (repeated > 0) {
    ELECTRA_LOG(info) << repeated << " input file(s) reached under a second path (a link, or a file inside a "
                      << "directory also given) are read once";
  }
  if (files.empty()) fail("no input files found under the given --input paths");
  return files;
}

std::vector<int> assign_files_to_ranks(const std::vector<InputFile>& files, int world_size) {
  ELECTRA_CHECK(world_size >= 1, "world size must be positive");
  std::vector<size_t> order(files.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return files[a].size > files[b].size; });
  std::vector<uint64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<int> owner(files.size(), 0);
  for (const size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end());  // first minimum: lowest rank
    owner[i] = static_cast<int>(least - load.begin());
    *least += files[i].size + 1;  // +1: empty files still spread out
  }
  return owner;
}

// ---------------------------------------------------------------------------------------------------
// Stats

void PreprocessStats::add(const PreprocessStats& o) {
  files += o.files;
  bytes += o.bytes;
  lines += o.lines;
  examples += o.examples;
  rows += o.rows;
  tokens += o.tokens;
  invalid_utf8 += o.invalid_utf8;
  unknown_tokens += o.unknown_tokens;
  words += o.words;
  truncated_tokens += o.truncated_tokens;
  long_lines += o.long_lines;
  long_line_tokens += o.long_line_tokens;
  seconds = std::max(seconds, o.seconds);
}

nlohmann::json PreprocessStats::to_json() const {
  return {{"files", files},
          {"bytes", bytes},
          {"lines", lines},
          {"examples", examples},
          {"rows", rows},
          {"tokens", tokens},
          {"invalid_utf8", invalid_utf8},
          {"unknown_tokens", unknown_tokens},
          {"words", words},
          {"truncated_tokens", truncated_tokens},
          {"long_lines", long_lines},
          {"long_line_tokens", long_line_tokens},
          {"seconds", seconds}};
}

PreprocessStats PreprocessStats::from_json(const nlohmann::json& j) {
  PreprocessStats s;
  s.files = j.at("files").get<uint64_t>();
  s.bytes = j.at("bytes").get<uint64_t>();
  s.lines = j.at("lines").get<uint64_t>();
  s.examples = j.at("examples").get<uint64_t>();
  s.rows = j.value("rows", s.examples);  // older manifests: one example per row
  s.tokens = j.at("tokens").get<uint64_t>();
  s.invalid_utf8 = j.at("invalid_utf8").get<uint64_t>();
  s.unknown_tokens = j.at("unknown_tokens").get<uint64_t>();
  s.words = j.at("words").get<uint64_t>();
  s.truncated_tokens = j.value("truncated_tokens", uint64_t{0});  // older manifests: not counted
  s.long_lines = j.value("long_lines", uint64_t{0});
  s.long_line_tokens = j.value("long_line_tokens", uint64_t{0});
  s.seconds = j.at("seconds").get<double>();
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Per-rank processing

namespace {

// Python's str.strip(): ASCII whitespace and the Unicode spaces (U+0085, U+00A0, U+1680, U+2000..U+200A,
// U+2028, U+2029, U+202F, U+205F, U+3000) and the separators U+001C..U+001F.
size_t space_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  if (n == 0) return 0;
  if (p[0] == ' ' || (p[0] >= 0x09 && p[0] <= 0x0d) || (p[0] >= 0x1c && p[0] <= 0x1f)) return 1;
  if (n >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0)) return 2;
  if (n >= 3) {
    if (p[0] == 0xe1 && p[1] == 0x9a && p[2] == 0x80) return 3;
    if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] <= 0x8a || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf)) return 3;
    if (p[0] == 0xe2 && p[1] == 0x81 && p[2] == 0x9f) return 3;
    if (p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x80) return 3;
  }
  return 0;
}

bool is_blank(std::string_view line) {
  while (!line.empty()) {
    const size_t k = space_prefix(line);
    if (k == 0) return false;
    line.remove_prefix(k);
  }
  return true;
}

std::string shard_name(int rank, int index) {
  char name[64];
  std::snprintf(name, sizeof name, "shard-r%04d-%05d.h5", rank, index);
  return name;
}

}  // namespace

RankResult preprocess_rank(const PreprocessOptions& options, const text::Vocab& vocab,
                           const std::vector<InputFile>& files, const std::vector<int>& owner, int rank) {
  ELECTRA_CHECK(owner.size() == files.size(), "owner list does not match the file list");
  if (options.rows_per_shard == 0) fail("--rows-per-shard must be positive");
  SpecialTokenIds special{vocab.pad_id(), vocab.cls_id(), vocab.sep_id()};
  if (special.pad < 0 || special.cls < 0 || special.sep < 0)
    fail(options.vocab_path, ": the vocabulary lacks [PAD], [CLS] or [SEP]");

  text::TokenizerOptions tokenizer_options;
  tokenizer_options.lower_case = options.lower_case;
  const text::BertTokenizer tokenizer(vocab, tokenizer_options);
  ShardWriterOptions writer_options;
  writer_options.max_seq_length = options.max_seq_length;
  writer_options.vocab_size = vocab.size();
  writer_options.vocab_hash = vocab.hash();
  writer_options.chunk_rows = options.chunk_rows;
  writer_options.deflate_level = options.deflate_level;
  writer_options.packed = options.pack;

  RankResult result;
  std::unique_ptr<ShardWriter> writer;
  int shard_index = 0;
  auto finish_shard = [&] {
    if (writer && writer->rows() > 0) {
      ShardInfo info = writer->finish();
      info.rank = rank;
      result.shards.push_back(info);
      ++shard_index;
    }
    writer.reset();
  };

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto last_report = start;
  uint64_t files_total = 0, bytes_total = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    if (owner[i] == rank) {
      ++files_total;
      bytes_total += files[i].size;
    }
  }
  auto report = [&](bool final_line) {
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double mb = static_cast<double>(result.stats.bytes) / 1e6;
    ELECTRA_LOG(info) << (final_line ? "preprocess done: " : "preprocess: ") << result.stats.files << "/" << files_total
                      << " files, " << mb << "/" << static_cast<double>(bytes_total) / 1e6 << " MB, "
                      << (seconds > 0 ? mb / seconds : 0.0) << " MB/s, " << result.stats.examples << " examples written"
                      << (options.pack ? " (packed into " : "")
                      << (options.pack ? std::to_string(result.stats.rows) + " rows)" : std::string()) << ", "
                      << result.shards.size() << " shards";
  };

  // One row into the current shard (opened on demand); a full shard is finished at once.
  auto write_row = [&](const int32_t* ids, const uint8_t* segments, int length, const uint8_t* example_ids) {
    if (!writer) {
      writer = std::make_unique<ShardWriter>((fs::path(options.output_dir) / shard_name(rank, shard_index)).string(),
                                             writer_options);
    }
    writer->add(ids, segments, length, example_ids);
    ++result.stats.rows;
    if (writer->rows() >= options.rows_per_shard) finish_shard();
  };
  RowPacker packer(options.max_seq_length, special.pad, [&](const PackedRow& row) {
    write_row(row.input_ids.data(), row.segment_ids.data(), row.length, row.example_ids.data());
  });

  Example example;
  std::vector<int32_t> tokens;
  text::TokenizeStats tstats;
  for (size_t i = 0; i < files.size(); ++i) {
    if (owner[i] != rank) continue;
    const std::string& path = files[i].path;
    try {
      ExampleBuilder builder(options.max_seq_length, special,
                             PhiloxSequence(options.seed, RandomPurpose::kPreprocess, 0, i));
      auto emit = [&] {
        ++result.stats.examples;
        result.stats.tokens += static_cast<uint64_t>(example.length);
        if (options.pack) {
          packer.add(example);
        } else {
          write_row(example.input_ids.data(), example.segment_ids.data(), example.length, nullptr);
        }
      };
      text::LineReader reader(path);
      std::string_view line;
      const uint64_t invalid_before = tstats.invalid_utf8;
      uint64_t first_invalid_line = 0;
      while (reader.next(line)) {
        ++result.stats.lines;
        result.stats.bytes += line.size() + 1;
        bool done;
        if (is_blank(line)) {
          done = options.blanks_separate_docs && builder.add_blank_line(example);
        } else {
          tokens.clear();
          const uint64_t invalid_so_far = tstats.invalid_utf8;
          tokenizer.encode_append(line, tokens, &tstats);
          if (first_invalid_line == 0 && tstats.invalid_utf8 > invalid_so_far)
            first_invalid_line = reader.line_number();
          if (const size_t room = static_cast<size_t>(options.max_seq_length - 2); tokens.size() > room) {
            ++result.stats.long_lines;
            result.stats.long_line_tokens += tokens.size() - room;
          }
          done = builder.add_sentence(tokens, example);
        }
        if (done) emit();
        if (options.progress_interval_s > 0 && (result.stats.lines & 1023) == 0 &&
            std::chrono::duration<double>(Clock::now() - last_report).count() >= options.progress_interval_s) {
          last_report = Clock::now();
          report(false);
        }
      }
      if (builder.flush(example)) emit();
      result.stats.truncated_tokens += builder.truncated_tokens();
      packer.flush();                              // rows never span files (see the top of preprocess.h)
      if (tstats.invalid_utf8 > invalid_before) {  // a binary or non-UTF-8 file among the text (as electra-vocab)
        ELECTRA_LOG(warning) << path << ": " << tstats.invalid_utf8 - invalid_before
                             << " invalid UTF-8 sequence(s) replaced and dropped, the first on line "
                             << first_invalid_line;
      }
      ++result.stats.files;
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.find(path) != std::string::npos) throw;
      fail(path, ": ", what);
    }
  }
  finish_shard();
  result.stats.bytes = std::min(result.stats.bytes, bytes_total);  // a missing final newline
  result.stats.invalid_utf8 = tstats.invalid_utf8;
  result.stats.unknown_tokens = tstats.unknown_tokens;
  result.stats.words = tstats.words;
  result.stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  report(true);
  return result;
}

// ---------------------------------------------------------------------------------------------------
// MPI driver

namespace {

std::string broadcast_string(std::string value, int root, MPI_Comm comm) {
  unsigned long long size = value.size();
  MPI_Bcast(&size, 1, MPI_UNSIGNED_LONG_LONG, root, comm);
  value.resize(size);
  if (size > 0) MPI_Bcast(value.data(), static_cast<int>(size), MPI_CHAR, root, comm);
  return value;
}

// Rank 0 receives every rank's string (others get an empty vector).
std::vector<std::string> gather_strings(const std::string& value, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int length = static_cast<int>(value.size());
  std::vector<int> lengths(static_cast<size_t>(size));
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, comm);
  std::vector<int> displs(static_cast<size_t>(size), 0);
  std::vector<char> all;
  if (rank == 0) {
    for (int r = 1; r < size; ++r)
      displs[static_cast<size_t>(r)] = displs[static_cast<size_t>(r - 1)] + lengths[static_cast<size_t>(r - 1)];
    all.resize(static_cast<size_t>(displs.back() + lengths.back()));
  }
  MPI_Gatherv(value.data(), length, MPI_CHAR, all.data(), lengths.data(), displs.data(), MPI_CHAR, 0, comm);
  std::vector<std::string> out;
  if (rank == 0) {
    for (int r = 0; r < size; ++r)
      out.emplace_back(all.data() + displs[static_cast<size_t>(r)],
                       static_cast<size_t>(lengths[static_cast<size_t>(r)]));
  }
  return out;
}

// "shard-rRRRR-NNNNN.h5": the name of a shard electra-preprocess writes (shard_name), with no directory part.
bool is_shard_name(const std::string& name) {
  return name.rfind("shard-r", 0) == 0 && name.ends_with(".h5") && name.find('/') == std::string::npos;
}

// ".<name>.tmp" for a shard, manifest.json or vocab.txt: the temporary files electra-preprocess writes
// (temp_path_for); a run that stopped may have left them.
bool is_own_temp_name(const std::string& name) {
  if (name.size() < 6 || name.front() != '.' || !name.ends_with(".tmp")) return false;
  const std::string target = name.substr(1, name.size() - 5);
  return is_shard_name(target) || target == kManifestName || target == kVocabFileName;
}

// The shard files listed by <dir>/manifest.json: what a finished run wrote there. Empty when there is no
// manifest or it cannot be read (a warning says so).
std::set<std::string> shards_listed_in_manifest(const fs::path& dir) {
  std::set<std::string> listed;
  const fs::path manifest_path = dir / kManifestName;
  std::error_code ec;
  if (!fs::exists(manifest_path, ec)) return listed;
  try {
    for (const ShardInfo& info : Manifest::load(manifest_path.string()).shards) {
      if (is_shard_name(info.file)) listed.insert(info.file);
    }
  } catch (const Error& e) {
    ELECTRA_LOG(warning) << "--force: " << e.what() << "; it is replaced, and no shard counts as written by it";
  }
  return listed;
}

}  // namespace

std::vector<std::string> prepare_output_directory(const std::string& dir, bool force, bool unfinished_run) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw BadInputError(dir + ": cannot create output directory: " + ec.message());
  if (!fs::is_directory(dir, ec)) throw BadInputError(dir + ": --output is not a directory");

  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != kOutputLockName) names.push_back(it->path().filename().string());
  }
  if (ec) throw BadInputError(dir + ": cannot list output directory: " + ec.message());
  if (names.empty()) return {};
  std::sort(names.begin(), names.end());
  if (!force) {
    throw BadInputError(detail::concat(
        dir, ": output directory is not empty (", names.size(), " entries, such as ", names.front(), ")",
        unfinished_run
            ? std::string("; an electra-preprocess run into it did not finish (its ") + kOutputLockName + " remains)"
            : std::string(),
        "; pass --force to replace what electra-preprocess wrote there (manifest.json, the shards it lists, "
        "vocab.txt",
        unfinished_run ? ", the unfinished run's shards" : "", "), or choose an empty or new --output"));
  }

  // --force: a shard file the manifest does not list may be another program's, so nothing is removed;
  // after a run that did not finish, shard files are that run's.
  const std::set<std::string> listed = shards_listed_in_manifest(dir);
  // An unfinished run writes its shards under the staging directory; shard files beside the lock file and
  // no staging directory are what a run of an older version (which wrote in place) left.
  const bool unfinished_in_place = unfinished_run && !fs::exists(fs::path(dir) / kStagingDirName, ec);
  const auto ours = [&](const std::string& name) {
    return listed.count(name) > 0 || (unfinished_in_place && is_shard_name(name));
  };
  std::vector<std::string> unlisted;
  for (const std::string& name : names) {
    const bool regular_file = fs::is_regular_file(fs::path(dir) / name, ec);
    if (is_shard_name(name) && !(ours(name) && regular_file)) unlisted.push_back(name);
  }
  if (!unlisted.empty()) {
    throw BadInputError(detail::concat(
        (fs::path(dir) / unlisted.front()).string(), unlisted.size() > 1 ? " (and " : "",
        unlisted.size() > 1 ? std::to_string(unlisted.size() - 1) + " more shard files)" : std::string(),
        " is not listed in ", (fs::path(dir) / kManifestName).string(),
        ", so it was not written by a finished electra-preprocess run into this directory; --force replaces "
        "only such files: remove it yourself or choose another --output"));
  }

  // What the new output replaces once it is complete (install_staged_output); until then the old output
  // stays whole and readable. Temporary files are nobody's and go now, as does an earlier run's staging.
  std::vector<std::string> replaced;
  for (const std::string& name : names) {
    const fs::path path = fs::path(dir) / name;
    if (name == kStagingDirName) {
      fs::remove_all(path, ec);
      if (ec) fail(path.string(), ": cannot remove: ", ec.message());
    } else if (is_own_temp_name(name) && fs::is_regular_file(path, ec)) {
      fs::remove(path, ec);
      if (ec) fail(path.string(), ": cannot remove: ", ec.message());
    } else if (ours(name) && fs::is_regular_file(path, ec)) {
      replaced.push_back(name);
    }
  }
  const size_t unfinished_shards = static_cast<size_t>(std::count_if(
      replaced.begin(), replaced.end(), [&](const std::string& name) { return listed.count(name) == 0; }));
  ELECTRA_LOG(info) << "--force: replacing " << dir << " once the new output is complete: manifest.json (if any), "
                    << replaced.size() - unfinished_shards << " shards it lists"
                    << (unfinished_in_place
                            ? " and " + std::to_string(unfinished_shards) + " of a run that did not finish"
                            : std::string())
                    << " and vocab.txt; other files are left alone";
  return replaced;
}

void install_staged_output(const std::string& dir, const std::vector<std::string>& staged_shards,
                           const std::vector<std::string>& replaced) {
  const fs::path staging = fs::path(dir) / kStagingDirName;
  std::error_code ec;
  // Everything is in staging before anything of the old output goes (a full disk fails above, not here):
  // from the removal of the old manifest on there are only removals and renames.
  const fs::path manifest_path = fs::path(dir) / kManifestName;
  fs::remove(manifest_path, ec);  // first: no reader trusts the old shards from here on
  if (ec) fail(manifest_path.string(), ": cannot remove: ", ec.message());
  for (const std::string& name : replaced) {
    fs::remove(fs::path(dir) / name, ec);
    if (ec) fail((fs::path(dir) / name).string(), ": cannot remove: ", ec.message());
  }
  for (const std::string& name : staged_shards) {
    fs::rename(staging / name, fs::path(dir) / name, ec);
    if (ec) fail((staging / name).string(), ": cannot move into ", dir, ": ", ec.message());
  }
  for (const char* name : {kVocabFileName, kManifestName}) {  // the manifest last: it makes the output whole
    fs::rename(staging / name, fs::path(dir) / name, ec);
    if (ec) fail((staging / name).string(), ": cannot move into ", dir, ": ", ec.message());
  }
  fs::remove_all(staging, ec);
  if (ec) fail(staging.string(), ": cannot remove: ", ec.message());
  fsync_directory(dir);
}

namespace {

// Every rank reads the vocabulary and its input files by the paths rank 0 listed. On nodes with their own
// copies these must be the same, or one output's shards would disagree (the loader would refuse them, or
// a rank would fail half-way): each rank checks its vocabulary's hash and its files' sizes against rank
// 0's, and a difference is bad input on every rank before anything is written. Loads `vocab` where it is
// not loaded yet. Collective.
// The flags that decide what the shards hold, by flag name.
nlohmann::json shaping_flags(const PreprocessOptions& o) {
  return {{"max-seq-length", o.max_seq_length},
          {"lower-case", o.lower_case},
          {"blanks-separate-docs", o.blanks_separate_docs},
          {"pack", o.pack},
          {"seed", o.seed},
          {"rows-per-shard", o.rows_per_shard},
          {"chunk-rows", o.chunk_rows},
          {"deflate-level", o.deflate_level},
          {"force", o.force},
          {"output", o.output_dir}};
}

void check_ranks_see_the_plan(const PreprocessOptions& options, const nlohmann::json& plan, uint64_t vocab_hash,
                              const std::vector<InputFile>& files, const std::vector<int>& owner,
                              std::optional<text::Vocab>& vocab, int rank, MPI_Comm comm) {
  std::string difference;
  try {
    if (!vocab) vocab.emplace(text::Vocab::load(options.vocab_path));
    if (vocab->hash() != vocab_hash) {
      difference = detail::concat("--vocab ", options.vocab_path, " has vocab_hash ", vocab->hash(), " here, ",
                                  vocab_hash, " on rank 0");
    }
    // The flags that shape the shards (an MPMD launch can give each rank its own): rank 0's go into the
    // manifest, so another rank's shards must be made the same way.
    const nlohmann::json mine = shaping_flags(options), rank0 = plan.at("flags");
    for (auto it = rank0.begin(); it != rank0.end() && difference.empty(); ++it) {
      if (mine.value(it.key(), nlohmann::json()) != it.value()) {
        difference = detail::concat("--", it.key(), " is ", mine.value(it.key(), nlohmann::json()).dump(), " here, ",
                                    it.value().dump(), " on rank 0");
      }
    }
    for (size_t i = 0; i < files.size() && difference.empty(); ++i) {
      if (owner[i] != rank) continue;
      std::error_code ec;
      const uintmax_t size = fs::file_size(files[i].path, ec);
      if (ec) {
        difference = detail::concat(files[i].path, ": cannot read it here (", ec.message(), ")");
      } else if (size != files[i].size) {
        difference = detail::concat(files[i].path, ": ", size, " bytes here, ", files[i].size, " on rank 0");
      }
    }
  } catch (const std::exception& e) {
    difference = e.what();
  }
  if (!difference.empty()) difference = detail::concat("rank ", rank, " on ", host_name(), ": ", difference);
  std::string refusal;
  if (const std::vector<std::string> lines = gather_strings(difference, comm); rank == 0) {
    for (const std::string& line : lines)
      if (!line.empty()) refusal += (refusal.empty() ? "" : "; ") + line;
  }
  refusal = broadcast_string(refusal, 0, comm);
  if (!refusal.empty()) {
    throw BadInputError(
        "the ranks do not read the same vocabulary and input files as rank 0 (node-local copies "
        "must be equal); nothing was written: " +
        refusal);
  }
}

}  // namespace

namespace {

// Whether any input file holds a byte other than ASCII whitespace: reads until the first one (usually the
// first block of the first file), so inputs of blank lines are refused before the output is touched.
bool any_text(const std::vector<InputFile>& files) {
  std::vector<char> block(1 << 16);
  for (const InputFile& f : files) {
    std::ifstream in(f.path, std::ios::binary);
    if (!in) fail(f.path, ": cannot open input file: ", std::strerror(errno));
    while (in) {
      in.read(block.data(), static_cast<std::streamsize>(block.size()));
      const auto n = static_cast<size_t>(in.gcount());
      for (size_t i = 0; i < n; ++i) {
        const char c = block[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f') return true;
      }
    }
  }
  return false;
}

}  // namespace

Manifest run_preprocess(const PreprocessOptions& options, MPI_Comm comm) {
  int rank = 0, world = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world);

  // 1. Rank 0 checks the arguments, lists the inputs and reads the vocabulary; everyone gets the list, or
  //    the same BadInputError before any rank has written anything. Then every rank checks that it reads
  //    the same vocabulary and files, and rank 0 takes the output directory (or refuses it).
  nlohmann::json plan;
  std::string plan_text;             // rank 0: the plan as JSON, or the error that ends the run on every rank
  std::optional<text::Vocab> vocab;  // rank 0 reads it here (bad input), the others in check_ranks_see_the_plan
  if (rank == 0) {
    try {
      if (options.output_dir.empty()) fail("--output is required");
      if (options.max_seq_length < 5 || options.max_seq_length > 65535)
        fail("--max-seq-length ", options.max_seq_length, " is outside [5, 65535]");
      if (options.rows_per_shard == 0) fail("--rows-per-shard must be positive");
      if (options.chunk_rows < 1) fail("--chunk-rows ", options.chunk_rows, " must be positive");
      // HDF5 refuses chunks of 4 GiB or more (input_ids of int32 for the largest vocabularies).
      if (static_cast<uint64_t>(options.chunk_rows) * static_cast<uint64_t>(options.max_seq_length) * 4 >=
          (uint64_t{1} << 32)) {
        fail("--chunk-rows ", options.chunk_rows, " x --max-seq-length ", options.max_seq_length,
             " makes HDF5 chunks of 4 GiB or more");
      }
      if (options.deflate_level < 0 || options.deflate_level > 9)
        fail("--deflate-level ", options.deflate_level, " is outside [0, 9]");
      checked_utf8(options.output_dir, "--output");
      checked_utf8(options.vocab_path, "--vocab");
      const std::vector<InputFile> files = list_input_files(options.inputs, options.output_dir);
      vocab.emplace(text::Vocab::load(options.vocab_path));  // missing or malformed: bad input, nothing written
      // The special tokens the examples and the tokenizer need, before the output is touched.
      for (const std::string_view token : {text::kPadToken, text::kUnkToken, text::kClsToken, text::kSepToken}) {
        if (vocab->id(token) < 0) {
          fail(options.vocab_path, ": the vocabulary lacks the special token ", token,
               vocab->size() > 0 && vocab->tokens().front().rfind("\xEF\xBB\xBF", 0) == 0
                   ? " (its first line starts with a UTF-8 byte-order mark)"
                   : "");
        }
      }
      if (!any_text(files)) {
        throw BadInputError(detail::concat("no examples: the ", files.size(),
                                           " input file(s) hold no text (only blank lines); nothing was written to ",
                                           options.output_dir));
      }
      plan["files"] = nlohmann::json::array();
      for (const InputFile& f : files) plan["files"].push_back({f.path, f.size});
      plan["vocab_hash"] = vocab->hash();
      plan["flags"] = shaping_flags(options);
      plan_text = plan.dump();
    } catch (const std::exception& e) {  // every rank must hear of it, or the others wait for the plan forever
      plan_text = nlohmann::json{{"error", e.what()}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  plan = nlohmann::json::parse(broadcast_string(plan_text, 0, comm));
  if (plan.contains("error")) throw BadInputError(plan["error"].get<std::string>());
  std::vector<InputFile> files;
  for (const auto& f : plan["files"]) files.push_back({f[0].get<std::string>(), f[1].get<uint64_t>()});
  const std::vector<int> owner = assign_files_to_ranks(files, world);
  check_ranks_see_the_plan(options, plan, plan.at("vocab_hash").get<uint64_t>(), files, owner, vocab, rank, comm);

  std::optional<DirectoryLock> output_lock;  // rank 0, from here until the manifest is written
  std::vector<std::string> replaced;         // rank 0: the earlier output's entries the new one replaces
  const fs::path staging = fs::path(options.output_dir) / kStagingDirName;
  std::string refused;
  if (rank == 0) {
    try {
      output_lock.emplace(options.output_dir, kOutputLockName);
      if (output_lock->state() == DirectoryLock::State::kBusy) {
        throw BadInputError(detail::concat(options.output_dir, " is being written by another electra-preprocess (",
                                           output_lock->holder(), "; ", output_lock->path().string(),
                                           "): wait for it to end or stop it, or choose another --output"));
      }
      if (output_lock->state() == DirectoryLock::State::kNoLocks) {
        ELECTRA_LOG(warning) << output_lock->path().string() << ": cannot lock the output directory ("
                             << output_lock->reason() << "): make sure no other electra-preprocess writes to "
                             << options.output_dir;
      }
      replaced = prepare_output_directory(options.output_dir, options.force, output_lock->file_existed());
      fs::create_directories(staging);
    } catch (const std::exception& e) {
      // Refused before anything was written: a lock file this run made goes again.
      if (output_lock && !output_lock->file_existed()) output_lock->remove_file();
      refused = e.what();
    }
  }
  refused = broadcast_string(refused, 0, comm);
  if (!refused.empty()) throw BadInputError(refused);
  if (rank == 0)
    ELECTRA_LOG(info) << "preprocess: " << files.size() << " input files over " << world << " rank(s) into "
                      << options.output_dir;

  // 2. Every rank does its share; failures are carried to rank 0 instead of leaving others waiting.
  nlohmann::json mine;
  uint64_t vocab_hash = 0, vocab_size = 0;
  try {
    vocab_hash = vocab->hash();  // every rank's is rank 0's (check_ranks_see_the_plan)
    vocab_size = vocab->size();
    PreprocessOptions staged = options;  // the shards go under the staging directory until the run succeeds
    staged.output_dir = staging.string();
    RankResult result = preprocess_rank(staged, *vocab, files, owner, rank);
    mine["shards"] = nlohmann::json::array();
    for (const ShardInfo& s : result.shards) mine["shards"].push_back({s.file, s.rows, s.crc32});
    mine["stats"] = result.stats.to_json();
  } catch (const std::exception& e) {
    mine = {{"error", std::string("rank ") + std::to_string(rank) + ": " + e.what()}};
  }
  const std::vector<std::string> gathered =
      gather_strings(mine.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), comm);

  // 3. Rank 0 writes vocab.txt and the manifest (last), then tells everyone the outcome.
  std::string outcome;
  if (rank == 0) {
    bool installing = false;  // from the removal of the old manifest on, a failure leaves a half-replaced output
    try {
      std::string errors;
      Manifest manifest;
      PreprocessStats total;
      for (int r = 0; r < world; ++r) {
        const nlohmann::json j = nlohmann::json::parse(gathered[static_cast<size_t>(r)]);
        if (j.contains("error")) {
          errors += (errors.empty() ? "" : "; ") + j["error"].get<std::string>();
          continue;
        }
        for (const auto& s : j["shards"]) {
          ShardInfo info{s[0].get<std::string>(), s[1].get<uint64_t>(), s[2].get<uint32_t>(), r};
          manifest.total_rows += info.rows;
          manifest.shards.push_back(info);
        }
        total.add(PreprocessStats::from_json(j["stats"]));
      }
      if (!errors.empty()) fail(errors);
      if (total.examples == 0) {
        throw BadInputError(detail::concat("no examples: the ", files.size(), " input file(s) (", total.bytes,
                                           " bytes) hold no text; nothing was written to ", options.output_dir));
      }
      manifest.vocab_hash = vocab_hash;
      manifest.vocab_size = vocab_size;
      manifest.max_seq_length = options.max_seq_length;
      manifest.lower_case = options.lower_case;
      manifest.blanks_separate_docs = options.blanks_separate_docs;
      manifest.pack = options.pack;
      manifest.format_version = shard_format_version(options.pack);
      manifest.seed = options.seed;
      manifest.command_line = options.command_line;
      manifest.stats = total.to_json();
      manifest.stats["ranks"] = world;
      const double slots = static_cast<double>(manifest.total_rows) * options.max_seq_length;
      const double slot_fill = slots > 0 ? static_cast<double>(total.tokens) / slots : 0.0;
      manifest.stats["slot_fill"] = slot_fill;
      std::vector<std::string> staged_shards;
      for (const ShardInfo& shard : manifest.shards) staged_shards.push_back(shard.file);
      copy_file_atomically(options.vocab_path, staging / kVocabFileName);
      manifest.save(staging.string());
      installing = true;
      install_staged_output(options.output_dir, staged_shards, replaced);
      output_lock->remove_file();  // the run finished: nothing marks the directory as half-written
      ELECTRA_LOG(info) << "preprocess: wrote " << manifest.shards.size() << " shards, " << total.examples
                        << " examples"
                        << (options.pack ? " packed into " + std::to_string(manifest.total_rows) + " rows" : "") << ", "
                        << total.tokens << " tokens (" << 100.0 * slot_fill << "% of the sequence slots; blank lines "
                        << (options.blanks_separate_docs ? "separate documents" : "skipped, a document per file")
                        << ") from " << total.bytes / 1e6 << " MB in " << total.seconds << " s ("
                        << (total.seconds > 0 ? total.bytes / 1e6 / total.seconds : 0.0) << " MB/s overall, " << world
                        << " rank(s)); invalid UTF-8: " << total.invalid_utf8
                        << ", unknown tokens: " << total.unknown_tokens << " of " << total.words << " words";
      // What the numbers above hide when they are large: text the examples lost, or could not read.
      // Google's builder keeps a sentence's start only: a line longer than an example loses the rest (a
      // 10 MB line without breaks is one example). The last sentence of an example losing its tail is the
      // builder's ordinary cost (truncated_tokens: 8% on the Python documentation) and not warned of.
      if (const double cut = static_cast<double>(total.long_line_tokens) /
                             static_cast<double>(std::max<uint64_t>(1, total.tokens + total.truncated_tokens));
          cut > 0.01) {
        ELECTRA_LOG(warning) << "preprocess: " << total.long_lines << " line(s) held more word pieces than an "
                             << "example of " << options.max_seq_length << " tokens; " << total.long_line_tokens
                             << " word pieces past that (" << 100.0 * cut
                             << "% of the text's) are in no example, as google-research/electra's builder takes a "
                                "line for a sentence: break long lines into sentences";
      }
      if (const double unknown =
              static_cast<double>(total.unknown_tokens) / static_cast<double>(std::max<uint64_t>(1, total.words));
          unknown > 0.05) {
        ELECTRA_LOG(warning) << "preprocess: " << 100.0 * unknown
                             << "% of the words became [UNK]: " << options.vocab_path
                             << " does not fit this text (made from other text, too small, "
                             << "or of other casing: --no-lower-case is for a cased vocabulary)";
      }
      outcome = manifest.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } catch (const BadInputError& e) {
      outcome = nlohmann::json{{"error", e.what()}, {"bad_input", true}}.dump(-1, ' ', false,
                                                                              nlohmann::json::error_handler_t::replace);
    } catch (const std::exception& e) {
      outcome = nlohmann::json{{"error", e.what()}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    // A run that failed before replacing anything leaves the directory as it found it: its staged shards
    // go, and so does a lock file it made (the earlier output, if any, is whole). Every rank is past its
    // writes (the gather above).
    if (!outcome.empty() && nlohmann::json::parse(outcome).contains("error") && !installing) {
      std::error_code ignored;
      fs::remove_all(staging, ignored);
      if (!output_lock->file_existed()) output_lock->remove_file();
    }
  }
  const nlohmann::json result = nlohmann::json::parse(broadcast_string(outcome, 0, comm));
  if (result.contains("bad_input")) throw BadInputError(result["error"].get<std::string>());
  if (result.contains("error")) fail(result["error"].get<std::string>());
  return Manifest::from_json(result, (fs::path(options.output_dir) / kManifestName).string());
}

}  // namespace electra::data
