// RunLock (run_lock.h): one holder per run directory; a second is refused naming the first; the lock goes with
// its holder, so a new run takes it at once; a missing directory is made.
#include "lib/train/run_lock.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <string>

#include "lib/core/error.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

TEST(RunLock, ASecondHolderIsRefusedUntilTheFirstLetsGo) {
  testing::TempDir dir;
  const std::filesystem::path run_dir = dir.path() / "run";
  std::optional<RunLock> first;
  first.emplace(run_dir);  // makes the directory
  EXPECT_TRUE(first->held());
  EXPECT_TRUE(std::filesystem::exists(RunLock::path_in(run_dir)));
  try {
    RunLock second(run_dir);  // flock() locks are per open file: a second open in one process conflicts too
    ADD_FAILURE() << "a second lock was granted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("is in use by another electra-train (pid " + std::to_string(::getpid())), std::string::npos)
        << message;
    EXPECT_NE(message.find(run_dir.string()), std::string::npos) << message;
  }
  first.reset();
  RunLock third(run_dir);  // the file stays, the lock does not
  EXPECT_TRUE(third.held());
}

// A refused set-up abandons the run directory: the lock file goes, and the directory too when the lock made
// it; a directory that was there stays.
TEST(RunLock, AbandonRemovesWhatTheLockMade) {
  testing::TempDir dir;
  const std::filesystem::path made = dir.path() / "made";
  RunLock fresh(made);
  fresh.abandon();
  EXPECT_FALSE(std::filesystem::exists(made));

  const std::filesystem::path existing = dir.path() / "existing";
  std::filesystem::create_directories(existing);
  RunLock old(existing);
  old.abandon();
  EXPECT_FALSE(std::filesystem::exists(RunLock::path_in(existing)));
  EXPECT_TRUE(std::filesystem::is_directory(existing));

  // The parents made for a deeper run directory go too, up to the first that was there; one that gained
  // other entries meanwhile stays.
  RunLock deep(existing / "a" / "b" / "run");
  deep.abandon();
  EXPECT_FALSE(std::filesystem::exists(existing / "a"));
  EXPECT_TRUE(std::filesystem::is_directory(existing));
  RunLock shared(existing / "c" / "run");
  std::ofstream(existing / "c" / "notes.txt") << "someone else's\n";
  shared.abandon();
  EXPECT_FALSE(std::filesystem::exists(existing / "c" / "run"));
  EXPECT_TRUE(std::filesystem::exists(existing / "c" / "notes.txt"));
}

}  // namespace
}  // namespace electra::train
