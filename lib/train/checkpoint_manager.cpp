#include "lib/train/checkpoint_manager.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::train {
namespace {

constexpr const char* kLatest = "latest";

}  // namespace

std::optional<int64_t> checkpoint_step_from_name(const std::string& filename) {
  constexpr std::string_view kPrefix = "ckpt-";
  constexpr std::string_view kSuffix = ".h5";
  if (filename.size() <= kPrefix.size() + kSuffix.size() || !filename.starts_with(kPrefix) ||
      !filename.ends_with(kSuffix)) {
    return std::nullopt;
  }
  const std::string digits = filename.substr(kPrefix.size(), filename.size() - kPrefix.size() - kSuffix.size());
  if (digits.size() > 18) return std::nullopt;
  int64_t step = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

CheckpointManager::CheckpointManager(std::filesystem::path dir, int keep_last, int64_t keep_every)
    : dir_(std::move(dir)), keep_last_(keep_last), keep_every_(keep_every) {
  if (keep_last_ < 2) fail("CheckpointManager: keep_last must be at least 2, got ", keep_last_);
  if (keep_every_ < 0) fail("CheckpointManager: keep_every must be >= 0, got ", keep_every_);
}

std::filesystem::path CheckpointManager::path_for(int64_t step) const {
  if (step < 0) fail("CheckpointManager: negative step ", step);
  char name[40];
  std::snprintf(name, sizeof(name), "ckpt-%08lld.h5", static_cast<long long>(step));
  return dir_ / name;
}

std::vector<CheckpointEntry> CheckpointManager::list() const {
  std::vector<CheckpointEntry> entries;
  std::error_code error;
  if (!std::filesystem::is_directory(dir_, error)) return entries;
  for (const auto& item : std::filesystem::directory_iterator(dir_)) {
    if (!item.is_regular_file(error)) continue;
    if (auto step = checkpoint_step_from_name(item.path().filename().string())) {
      entries.push_back(CheckpointEntry{*step, item.path()});
    }
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return entries;
}

std::optional<CheckpointEntry> CheckpointManager::latest_pointer() const {
  std::ifstream in(dir_ / kLatest);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  try {
    const auto pointer = nlohmann::json::parse(text.str());
    const auto name = pointer.at("checkpoint").get<std::string>();
    if (name.find('/') != std::string::npos) return std::nullopt;  // only names inside dir_
    return CheckpointEntry{pointer.at("step").get<int64_t>(), dir_ / name};
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::optional<CheckpointEntry> CheckpointManager::latest_complete() const {
  const std::vector<CheckpointEntry> complete = complete_newest_first();
  if (complete.empty()) return std::nullopt;
  return complete.front();
}

std::vector<CheckpointEntry> CheckpointManager::complete_newest_first() const {
  // Candidates newest first. `latest` is normally the newest; a newer file exists only when a crash
  // came between its rename and the pointer update, and it is complete (renamed after fsync).
  std::vector<CheckpointEntry> candidates = list();
  std::set<std::filesystem::path> seen;  // the files in the directory now; the pointer's may be missing
  for (const CheckpointEntry& entry : candidates) seen.insert(entry.path);
  if (auto pointer = latest_pointer()) {
    const bool listed = std::any_of(candidates.begin(), candidates.end(),
                                    [&](const CheckpointEntry& e) { return e.path == pointer->path; });
    if (!listed) candidates.push_back(*pointer);
  }
  std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) { return a.step > b.step; });
  std::vector<CheckpointEntry> complete;
  for (const CheckpointEntry& candidate : candidates) {
    if (auto problem = CheckpointFile::check(candidate.path)) {
      std::error_code ignored;
      if (seen.count(candidate.path) && !std::filesystem::exists(candidate.path, ignored)) {
        // Gone since the listing: a run still training removed it (train.keep_last), not damage.
        ELECTRA_LOG(info) << "skipping checkpoint " << candidate.path.string() << ": removed while looked at";
      } else {
        ELECTRA_LOG(warning) << "skipping checkpoint " << candidate.path.string() << ": " << *problem;
      }
    } else {
      complete.push_back(candidate);
    }
  }
  return complete;
}

void CheckpointManager::write_latest_pointer(int64_t step, const std::filesystem::path& path) {
  const nlohmann::json pointer = {{"checkpoint", path.filename().string()}, {"step", step}};
  write_file_atomically(dir_ / kLatest, pointer.dump() + "\n");
}

std::filesystem::path CheckpointManager::save(const CheckpointContent& content) {
  if (!content.state.is_object() || !content.state.contains("step") || !content.state["step"].is_number_integer()) {
    fail("CheckpointManager::save: state must be a JSON object with an integer \"step\"");
  }
  const int64_t step = content.state["step"].get<int64_t>();
  std::filesystem::create_directories(dir_);
  const std::filesystem::path path = path_for(step);
  // Checkpoints at this step or later belong to a run that went on from an earlier checkpoint (a resume
  // of an older file): they are set aside, never written over, whether or not the steps line up.
  set_aside(step, "which this run saves now");
  write_checkpoint(path, content);
  write_latest_pointer(step, path);
  prune();
  return path;
}

int CheckpointManager::set_aside(int64_t first_step, const char* why) {
  int moved_count = 0;
  for (const CheckpointEntry& entry : list()) {
    if (entry.step < first_step) continue;
    const std::filesystem::path moved = abandoned_name(entry.path);  // an earlier abandoned file of that step stays
    ELECTRA_LOG(warning) << "checkpoint " << entry.path.string() << " is at or past step " << first_step << ", " << why
                         << ": it belongs to the course the run left when it resumed an earlier checkpoint; renaming "
                         << "it to " << moved.filename().string();
    std::filesystem::rename(entry.path, moved);
    ++moved_count;
  }
  return moved_count;
}

int CheckpointManager::adopt_resumed(int64_t step, const std::filesystem::path& file) {
  int moved = set_aside(step + 1, "after the checkpoint this run resumed");
  const std::filesystem::path own = path_for(step);
  std::error_code error;
  if (!std::filesystem::equivalent(own, file, error)) {  // also false (with `error`) when `own` is missing
    if (std::filesystem::exists(own)) moved += set_aside(step, "the step of the checkpoint this run resumed");
    std::filesystem::create_directories(own.parent_path());  // a new --output has no checkpoints/ yet
    copy_file_atomically(file, own);
    ELECTRA_LOG(info) << "copied the resumed checkpoint " << file.string() << " to " << own.string()
                      << ": the run directory resumes from it until its next save";
  } else if (moved == 0) {
    return 0;  // the newest: nothing changes
  }
  write_latest_pointer(step, own);
  return moved;
}

void CheckpointManager::prune() {
  const std::vector<CheckpointEntry> entries = list();
  std::set<std::filesystem::path> keep;
  for (size_t i = entries.size() > static_cast<size_t>(keep_last_) ? entries.size() - keep_last_ : 0;
       i < entries.size(); ++i) {
    keep.insert(entries[i].path);
  }
  if (auto pointer = latest_pointer()) keep.insert(pointer->path);
  for (const CheckpointEntry& entry : entries) {
    if (keep_every_ > 0 && entry.step % keep_every_ == 0) continue;
    if (keep.contains(entry.path)) continue;
    std::error_code error;
    if (!std::filesystem::remove(entry.path, error) && error) {
      ELECTRA_LOG(warning) << "cannot delete old checkpoint " << entry.path.string() << ": " << error.message();
    }
  }
}

int CheckpointManager::remove_temp_files() {
  int removed = 0;
  std::error_code error;
  if (!std::filesystem::is_directory(dir_, error)) return 0;
  for (const auto& item : std::filesystem::directory_iterator(dir_)) {
    const std::string name = item.path().filename().string();
    const bool temp_checkpoint = name.starts_with(".ckpt-") && name.ends_with(".h5.tmp");
    const bool temp_pointer = name == std::string(".") + kLatest + ".tmp";
    if ((temp_checkpoint || temp_pointer) && std::filesystem::remove(item.path(), error)) ++removed;
  }
  return removed;
}

}  // namespace electra::train
