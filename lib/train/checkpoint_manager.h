// The checkpoints of one run: RUN_DIR/checkpoints/ckpt-<step>.h5 plus a `latest` pointer.
//
// save() writes the new file atomically (see write_checkpoint), then replaces `latest` the same way,
// then prunes. latest_complete() returns the newest checkpoint that opens and carries its completion
// mark — the one `latest` names, or a newer one when a crash came between the rename and the pointer
// update, or an older one when the named file is missing or damaged. A reader never sees a half-written
// file under a final name; leftover temporaries (".ckpt-*.h5.tmp") are never listed.
//
// Single writer: only one process (rank 0) saves and prunes a directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include "lib/train/checkpoint.h"

namespace electra::train {

struct CheckpointEntry {
  int64_t step = 0;
  std::filesystem::path path;
};

class CheckpointManager {
 public:
  // keep_last: how many of the newest checkpoints survive pruning (at least 2, so a damaged newest file
  // still leaves one to resume from). keep_every: also keep every step that is a multiple of it (0: none).
  explicit CheckpointManager(std::filesystem::path dir, int keep_last = 3, int64_t keep_every = 0);

  const std::filesystem::path& dir() const { return dir_; }
  // dir/ckpt-<step, 8 digits zero-padded>.h5
  std::filesystem::path path_for(int64_t step) const;

  // Writes the checkpoint of content.state["step"] (creating the directory), points `latest` at it,
  // then prunes. Checkpoints with a higher step (an abandoned branch: the run was restarted from an
  // older checkpoint) are renamed to "<name>.abandoned", out of the way of latest_complete().
  // Returns the new file's path.
  std::filesystem::path save(const CheckpointContent& content);
  // A run that resumed `file` (of `step`) settles the directory at once, as save() would at its first save:
  // a run that ends before that save must leave `--resume auto` the step it resumed, not the course it left.
  // Later checkpoints are set aside; a file from elsewhere is copied in as path_for(step) (a different
  // file of that step here is set aside first); `latest` points at it. Returns how many were set aside.
  int adopt_resumed(int64_t step, const std::filesystem::path& file);

  // The newest complete checkpoint, or nullopt when there is none. Damaged candidates are skipped with
  // a warning in the log.
  std::optional<CheckpointEntry> latest_complete() const;
  // Every complete checkpoint, newest first (latest_complete() is the first). Complete means it opens
  // and carries its completion mark; its tensors' checksums are checked only when they are read.
  std::vector<CheckpointEntry> complete_newest_first() const;
  // The entry `latest` names, unvalidated; nullopt when the pointer is missing or unreadable.
  std::optional<CheckpointEntry> latest_pointer() const;
  // Files named ckpt-<step>.h5, ascending by step, unvalidated.
  std::vector<CheckpointEntry> list() const;

  // Deletes checkpoints outside {last keep_last} ∪ {multiples of keep_every} ∪ {what `latest` names}.
  void prune();
  // Deletes temporaries left by interrupted saves; returns how many. Only while no save is running.
  int remove_temp_files();

 private:
  void write_latest_pointer(int64_t step, const std::filesystem::path& path);
  // Renames every checkpoint of step >= first_step to abandoned_name(); `why` completes the warning.
  int set_aside(int64_t first_step, const char* why);

  std::filesystem::path dir_;
  int keep_last_;
  int64_t keep_every_;
};

// The step of a final checkpoint file name ("ckpt-00001200.h5" -> 1200), nullopt for anything else
// (temporaries, abandoned files, other files).
std::optional<int64_t> checkpoint_step_from_name(const std::string& filename);

}  // namespace electra::train
