#include "lib/train/run_lock.h"

#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::train {

RunLock::RunLock(const std::filesystem::path& run_dir) : lock_(run_dir, kFileName) {
  switch (lock_.state()) {
    case DirectoryLock::State::kHeld:
      return;
    case DirectoryLock::State::kBusy:
      fail("run directory ", run_dir.string(), " is in use by another electra-train (", lock_.holder(), "; ",
           lock_.path().string(),
           "): two runs in one directory would overwrite each other's checkpoints and metrics. Wait for it to "
           "end or stop it (SIGTERM writes a checkpoint), or use another --output");
    case DirectoryLock::State::kNoLocks:
      // Say so once and go on, as before this check existed.
      ELECTRA_LOG(warning) << lock_.path().string() << ": cannot lock the run directory (" << lock_.reason()
                           << "; a file system without flock, such as Lustre without -o flock): make sure no other "
                           << "electra-train writes to " << run_dir.string();
      return;
  }
}

void RunLock::abandon() {
  lock_.remove_file();
  if (!lock_.made_dir()) return;
  // The run directory and the parents made for it, each only when empty.
  std::error_code error;
  const std::filesystem::path top = lock_.first_made();
  for (std::filesystem::path dir = std::filesystem::absolute(lock_.path().parent_path(), error);
       !error && !top.empty() && dir.string().size() >= top.string().size(); dir = dir.parent_path()) {
    if (!std::filesystem::remove(dir, error) || error) return;
    if (dir == top) return;
  }
}

}  // namespace electra::train
