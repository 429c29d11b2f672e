// An exclusive flock() on one file in a directory, held while the object lives: electra-train keeps one run
// per run directory with it (lib/train/run_lock.h), electra-preprocess one writer per output directory. The
// kernel drops the lock when the process ends, however it ends, so a lock is never stale; the file holds
// the holder's pid, host and start time for whoever is refused.
#pragma once

#include <filesystem>
#include <string>

namespace electra {

class DirectoryLock {
 public:
  enum class State {
    kHeld,     // this process holds the lock
    kBusy,     // another process holds it: holder() says who
    kNoLocks,  // the file system refuses flock() (Lustre without -o flock): not held, reason() says why
  };

  // Creates `dir` when missing, opens (creating) dir/name and tries the lock without waiting. Fails (Error)
  // only when the directory or the file cannot be made.
  DirectoryLock(const std::filesystem::path& dir, const std::string& name);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

  State state() const { return state_; }
  // kBusy: "pid P on HOST, started T" as the holder wrote it ("holder unknown" if it wrote nothing).
  const std::string& holder() const { return holder_; }
  // kNoLocks: flock()'s error.
  const std::string& reason() const { return reason_; }
  // Whether dir/name was there before this object opened it (left by an earlier holder).
  bool file_existed() const { return file_existed_; }
  // Whether this object created `dir`, and the topmost directory it created for it (absolute; `dir` or an
  // ancestor; empty when it created none).
  bool made_dir() const { return made_dir_; }
  const std::filesystem::path& first_made() const { return first_made_; }
  const std::filesystem::path& path() const { return path_; }
  // Removes the file, then lets the lock go: for a holder whose finished work should leave no trace. Does
  // nothing when another process holds the lock.
  void remove_file();

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  State state_ = State::kNoLocks;
  std::string holder_, reason_;
  bool file_existed_ = false;
  bool made_dir_ = false;
  std::filesystem::path first_made_;
};

}  // namespace electra
