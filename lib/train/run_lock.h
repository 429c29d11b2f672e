// One electra-train per run directory. Two runs writing the same RUN_DIR (a job submitted twice, a requeue
// while the old job still runs) would overwrite each other's checkpoints and metrics, so rank 0 holds an
// exclusive flock() on RUN_DIR/.lock for the whole run. The kernel releases it when the process ends, however
// it ends, so a lock is never stale. On a file system without locks (Lustre mounted without -o flock) the run
// goes on with a warning.
#pragma once

#include <filesystem>

#include "lib/core/dir_lock.h"

namespace electra::train {

class RunLock {
 public:
  // Creates run_dir (and RUN_DIR/.lock) when missing and takes the lock. Fails naming the holder (pid, host,
  // start time, as it wrote them into the file) when another process has it.
  explicit RunLock(const std::filesystem::path& run_dir);

  bool held() const { return lock_.state() == DirectoryLock::State::kHeld; }
  // After a refused set-up: removes the lock file, and the run directory when this lock made it (and it is
  // still empty), so that the refused run leaves nothing behind; then lets the lock go.
  void abandon();
  static constexpr const char* kFileName = ".lock";
  static std::filesystem::path path_in(const std::filesystem::path& run_dir) { return run_dir / kFileName; }

 private:
  DirectoryLock lock_;
};

}  // namespace electra::train
