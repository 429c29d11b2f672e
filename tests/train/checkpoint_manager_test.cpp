#include "lib/train/checkpoint_manager.h"

#include <gtest/gtest.h>

#include <set>

#include "lib/core/error.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

using testing::layout_size;
using testing::read_bytes;
using testing::small_layout;
using testing::TempDir;
using testing::write_bytes;

// Saves checkpoints whose params are all `step`, so a read tells which step it came from.
class Saver {
 public:
  explicit Saver(CheckpointManager& manager) : manager_(manager), layout_(small_layout()) {}
  std::filesystem::path save(int64_t step) {
    std::vector<float> params(layout_size(layout_), static_cast<float>(step));
    CheckpointContent content;
    content.layout = layout_;
    content.params = params;
    content.adam_m = params;
    content.adam_v = params;
    content.state = {{"step", step}};
    return manager_.save(content);
  }
  float first_param(const std::filesystem::path& path) const {
    std::vector<float> params(layout_size(layout_));
    read_checkpoint(path).read_into(Section::kParams, layout_, params);
    return params[0];
  }

 private:
  CheckpointManager& manager_;
  std::vector<TensorSlice> layout_;
};

std::set<int64_t> steps_of(const std::vector<CheckpointEntry>& entries) {
  std::set<int64_t> steps;
  for (const auto& e : entries) steps.insert(e.step);
  return steps;
}

TEST(CheckpointManager, NamesAndParsing) {
  CheckpointManager manager("/runs/x/checkpoints");
  EXPECT_EQ(manager.path_for(1200), std::filesystem::path("/runs/x/checkpoints/ckpt-00001200.h5"));
  EXPECT_EQ(manager.path_for(123456789012), std::filesystem::path("/runs/x/checkpoints/ckpt-123456789012.h5"));
  EXPECT_EQ(checkpoint_step_from_name("ckpt-00001200.h5"), 1200);
  EXPECT_EQ(checkpoint_step_from_name("ckpt-7.h5"), 7);
  EXPECT_FALSE(checkpoint_step_from_name(".ckpt-00001200.h5.tmp").has_value());
  EXPECT_FALSE(checkpoint_step_from_name("ckpt-00001200.h5.abandoned").has_value());
  EXPECT_FALSE(checkpoint_step_from_name("ckpt-.h5").has_value());
  EXPECT_FALSE(checkpoint_step_from_name("ckpt-12a.h5").has_value());
  EXPECT_FALSE(checkpoint_step_from_name("latest").has_value());
  EXPECT_THROW(CheckpointManager("/tmp/x", 1), Error);
  EXPECT_THROW(CheckpointManager("/tmp/x", 3, -1), Error);
}

TEST(CheckpointManager, EmptyDirectoryHasNothing) {
  TempDir dir;
  CheckpointManager manager(dir.path() / "checkpoints");
  EXPECT_FALSE(manager.latest_complete().has_value());
  EXPECT_TRUE(manager.list().empty());
  EXPECT_FALSE(manager.latest_pointer().has_value());
}

TEST(CheckpointManager, SavePointsLatestAndPrunesKeepLastAndKeepEvery) {
  TempDir dir;
  CheckpointManager manager(dir.path() / "checkpoints", 3, 4);
  Saver saver(manager);
  for (int64_t step = 1; step <= 10; ++step) {
    const auto path = saver.save(step);
    EXPECT_EQ(path, manager.path_for(step));
    ASSERT_TRUE(manager.latest_pointer().has_value());
    EXPECT_EQ(manager.latest_pointer()->step, step);
    EXPECT_EQ(manager.latest_pointer()->path, path);
  }
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{4, 8, 9, 10}));
  const auto latest = manager.latest_complete();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 10);
  EXPECT_EQ(saver.first_param(latest->path), 10.0f);
  // No temporaries are left behind by successful saves.
  for (const auto& item : std::filesystem::directory_iterator(manager.dir())) {
    EXPECT_EQ(item.path().filename().string().find(".tmp"), std::string::npos) << item.path();
  }
}

TEST(CheckpointManager, KeepLastWithoutKeepEvery) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  Saver saver(manager);
  for (int64_t step = 100; step <= 500; step += 100) saver.save(step);
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{400, 500}));
}

TEST(CheckpointManager, FallsBackWhenTheNewestIsTruncatedOrCorrupt) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  Saver saver(manager);
  for (int64_t step = 1; step <= 3; ++step) saver.save(step);
  const auto newest = manager.path_for(3);
  const std::string bytes = read_bytes(newest);

  write_bytes(newest, bytes.substr(0, bytes.size() * 2 / 3));  // truncated
  auto latest = manager.latest_complete();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 2);
  EXPECT_EQ(saver.first_param(latest->path), 2.0f);

  std::string garbage = bytes;
  for (size_t i = 0; i < 512; ++i) garbage[i] = '\x5a';  // the superblock is gone
  write_bytes(newest, garbage);
  latest = manager.latest_complete();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 2);

  std::filesystem::remove(newest);  // `latest` names a missing file
  latest = manager.latest_complete();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 2);
}

TEST(CheckpointManager, WorksWithoutOrWithBrokenLatestPointer) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  Saver saver(manager);
  saver.save(5);
  saver.save(6);
  std::filesystem::remove(dir.path() / "latest");
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 6);
  write_bytes(dir.path() / "latest", "{\"checkpoint\": \"ckpt-000");  // torn pointer
  EXPECT_FALSE(manager.latest_pointer().has_value());
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 6);
}

TEST(CheckpointManager, NewerCompleteFileWinsOverAStalePointer) {
  // A crash between renaming ckpt-7 into place and updating `latest`.
  TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  Saver saver(manager);
  saver.save(6);
  const std::string pointer = read_bytes(dir.path() / "latest");
  saver.save(7);
  write_bytes(dir.path() / "latest", pointer);
  ASSERT_EQ(manager.latest_pointer()->step, 6);
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 7);
}

TEST(CheckpointManager, TemporariesAreNeverCheckpoints) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  Saver saver(manager);
  saver.save(1);
  // Even a complete file under the temporary name is not a checkpoint: only rename publishes it.
  std::filesystem::copy_file(manager.path_for(1), dir.path() / ".ckpt-00000002.h5.tmp");
  write_bytes(dir.path() / ".ckpt-00000003.h5.tmp", "half");
  write_bytes(dir.path() / ".latest.tmp", "{}");
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{1}));
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 1);
  EXPECT_EQ(manager.remove_temp_files(), 3);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / ".ckpt-00000002.h5.tmp"));
  EXPECT_TRUE(std::filesystem::exists(manager.path_for(1)));
}

TEST(CheckpointManager, PruneNeverDeletesWhatLatestNames) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  Saver saver(manager);
  for (int64_t step = 1; step <= 3; ++step) saver.save(step);
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{2, 3}));
  // Someone points `latest` at step 2 by hand; later saves must not delete it.
  write_bytes(dir.path() / "latest", "{\"checkpoint\": \"ckpt-00000002.h5\", \"step\": 2}");
  manager.prune();
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{2, 3}));
  write_bytes(dir.path() / "latest", "{\"checkpoint\": \"ckpt-00000002.h5\", \"step\": 2}");
  std::filesystem::copy_file(manager.path_for(3), manager.path_for(4));
  std::filesystem::copy_file(manager.path_for(3), manager.path_for(5));
  manager.prune();
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{2, 4, 5}));
}

TEST(CheckpointManager, SavingAnOlderStepSetsNewerOnesAside) {
  // The run was restarted from step 2 (e.g. after a divergence); 3..4 belong to the abandoned branch.
  TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  Saver saver(manager);
  for (int64_t step = 1; step <= 4; ++step) saver.save(step);
  const std::string old_step3 = read_bytes(manager.path_for(3));
  saver.save(3);
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{2, 3}));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000004.h5.abandoned"));
  // The branch's own step-3 file is set aside too, not written over (the steps line up here).
  ASSERT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000003.h5.abandoned"));
  EXPECT_EQ(read_bytes(dir.path() / "ckpt-00000003.h5.abandoned"), old_step3);
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 3);
  // A second restart keeps the first branch's file under another name.
  saver.save(3);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000003.h5.abandoned"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000003.h5.abandoned.1"));
}

// A run that resumed step 2 sets 3 and 4 aside at start-up and points `latest` back at 2 (adopt_resumed);
// nothing happens when it resumed the newest. A checkpoint resumed from elsewhere is copied in, so a run
// that ends before its first save still resumes there (with nothing left here, `--resume auto` started over).
TEST(CheckpointManager, AdoptResumedSetsLaterOnesAsideAndCopiesAnOutsideFileIn) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 5);
  Saver saver(manager);
  for (int64_t step = 1; step <= 4; ++step) saver.save(step);
  EXPECT_EQ(manager.adopt_resumed(4, manager.path_for(4)), 0);
  EXPECT_EQ(manager.adopt_resumed(2, manager.path_for(2)), 2);
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{1, 2}));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000003.h5.abandoned"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt-00000004.h5.abandoned"));
  ASSERT_TRUE(manager.latest_pointer().has_value());
  EXPECT_EQ(manager.latest_pointer()->step, 2);
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 2);

  TempDir other;
  CheckpointManager elsewhere(other.path(), 5);
  Saver other_saver(elsewhere);
  for (int64_t step = 1; step <= 3; ++step) other_saver.save(step);
  const std::string outside = read_bytes(elsewhere.path_for(1));
  EXPECT_EQ(manager.adopt_resumed(1, elsewhere.path_for(1)), 2);  // 2 goes aside, and 1 (another file)
  EXPECT_EQ(read_bytes(manager.path_for(1)), outside);
  EXPECT_EQ(steps_of(manager.list()), (std::set<int64_t>{1}));
  ASSERT_TRUE(manager.latest_complete().has_value());
  EXPECT_EQ(manager.latest_complete()->step, 1);
  EXPECT_EQ(manager.latest_pointer()->step, 1);

  // Into a new run directory, whose checkpoints/ does not exist yet (the copy failed: "cannot create").
  TempDir fresh;
  CheckpointManager empty(fresh.path() / "checkpoints", 5);
  EXPECT_EQ(empty.adopt_resumed(3, elsewhere.path_for(3)), 0);
  EXPECT_EQ(read_bytes(empty.path_for(3)), read_bytes(elsewhere.path_for(3)));
  EXPECT_EQ(empty.latest_pointer()->step, 3);
}

}  // namespace
}  // namespace electra::train
