#include "lib/train/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "lib/train/checkpoint_manager.h"

namespace electra::train {
namespace {

// The named fields in output order.
std::vector<std::pair<const char*, double>> named_fields(const MetricsRecord& m) {
  return {{"loss", m.loss},
          {"gen_loss", m.gen_loss},
          {"disc_loss", m.disc_loss},
          {"mlm_accuracy", m.mlm_accuracy},
          {"disc_accuracy", m.disc_accuracy},
          {"lr", m.lr},
          {"grad_norm", m.grad_norm},
          {"tokens_per_s", m.tokens_per_s}};
}

// Keeps lines whose "step" is <= resume_step; drops unparsable (torn) lines.
void drop_lines_after(const std::filesystem::path& path, int64_t resume_step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      const auto record = nlohmann::json::parse(line);
      if (record.contains("step") && record["step"].is_number_integer() &&
          record["step"].get<int64_t>() > resume_step) {
        continue;
      }
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    kept += line;
    kept += '\n';
  }
  in.close();
  write_file_atomically(path, kept);
}

// Whether run_dir/checkpoints holds a checkpoint past `step`: the run went further once, and a resume of
// `step` leaves that course (its checkpoints are set aside at the first save, CheckpointManager::save).
bool has_checkpoint_after(const std::filesystem::path& run_dir, int64_t step) {
  std::error_code error;
  for (std::filesystem::directory_iterator it(run_dir / "checkpoints", error), end; !error && it != end;
       it.increment(error)) {
    const std::optional<int64_t> saved = checkpoint_step_from_name(it->path().filename().string());
    if (saved && *saved > step) return true;
  }
  return false;
}

// Copies `path` to abandoned_name(path).
void keep_abandoned_copy(const std::filesystem::path& path) {
  const std::filesystem::path copy = abandoned_name(path);
  std::error_code error;
  std::filesystem::copy_file(path, copy, error);
  if (error) fail("cannot keep ", path.string(), " as ", copy.string(), ": ", error.message());
}

bool ends_in_torn_line(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in || in.tellg() <= 0) return false;
  in.seekg(-1, std::ios::end);
  char last = '\n';
  in.get(last);
  return last != '\n';
}

}  // namespace

nlohmann::json MetricsRecord::to_json() const {
  nlohmann::json record = nlohmann::json::object();
  record["step"] = step;
  for (const auto& [name, value] : named_fields(*this)) {
    if (!std::isnan(value)) record[name] = value;  // +-inf is kept and serialised as null
  }
  if (extra.is_object()) {
    for (const auto& [key, value] : extra.items()) record[key] = value;
  }
  return record;
}

std::vector<std::pair<std::string, double>> MetricsRecord::scalars() const {
  std::vector<std::pair<std::string, double>> result;
  for (const auto& [name, value] : named_fields(*this)) {
    if (!std::isnan(value)) result.emplace_back(name, value);
  }
  if (extra.is_object()) {
    for (const auto& [key, value] : extra.items()) {
      if (value.is_number()) result.emplace_back(key, value.get<double>());
    }
  }
  return result;
}

MetricsWriter::MetricsWriter(const std::filesystem::path& run_dir, std::optional<int64_t> resume_step)
    : path_(run_dir / "metrics.jsonl") {
  std::filesystem::create_directories(run_dir);
  if (resume_step) {
    // Resuming an earlier checkpoint than the run's newest: the lines of the course it leaves are kept
    // aside, as its checkpoints are, before they are cut (a run that dies before its first save would
    // otherwise lose them while their checkpoints stay).
    // A fresh start (step 0) over lines is kept aside too: a run that died before its first checkpoint, or
    // one whose checkpoints were removed by hand to start over.
    std::error_code error;
    const bool lines = std::filesystem::file_size(path_, error) > 0 && !error;
    if (lines && (*resume_step == 0 || has_checkpoint_after(run_dir, *resume_step))) keep_abandoned_copy(path_);
    drop_lines_after(path_, *resume_step);
  } else if (ends_in_torn_line(path_)) {
    drop_lines_after(path_, std::numeric_limits<int64_t>::max());  // else the next line would be glued on
  }
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open ", path_.string(), " for appending: ", std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsWriter::write(const MetricsRecord& metrics) { write(metrics.to_json()); }

void MetricsWriter::write(const nlohmann::json& record) {
  if (!record.is_object()) fail("MetricsWriter: a record must be a JSON object, got ", record.dump());
  // Replacement for invalid UTF-8 in tags: a metrics line must never throw mid-run.
  const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  // One write() per line: with O_APPEND the line lands whole at the end of the file.
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + written, line.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot append to ", path_.string(), ": ", std::strerror(errno));
    written += static_cast<size_t>(n);
  }
}

}  // namespace electra::train
