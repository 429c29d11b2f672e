// DirectoryLock (dir_lock.h): held by one open file at a time, the holder named to the others, the file's
// earlier existence reported, and remove_file() leaves nothing behind.
#include "lib/core/dir_lock.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <string>

namespace electra {
namespace {
namespace fs = std::filesystem;

TEST(DirectoryLock, OneHolderTheOthersSeeWhoAndTheFileCanGo) {
  const fs::path dir = fs::temp_directory_path() / ("electra-dir-lock-" + std::to_string(::getpid())) / "sub";
  fs::remove_all(dir.parent_path());
  std::optional<DirectoryLock> first(std::in_place, dir, ".lock");
  ASSERT_EQ(first->state(), DirectoryLock::State::kHeld);
  EXPECT_FALSE(first->file_existed());
  EXPECT_TRUE(first->made_dir());
  EXPECT_TRUE(fs::is_directory(dir));  // made when missing
  {
    const DirectoryLock second(dir, ".lock");  // flock() locks are per open file: one process conflicts too
    EXPECT_EQ(second.state(), DirectoryLock::State::kBusy);
    EXPECT_TRUE(second.file_existed());
    EXPECT_FALSE(second.made_dir());
    EXPECT_NE(second.holder().find("pid " + std::to_string(::getpid()) + " on "), std::string::npos) << second.holder();
  }
  first.reset();  // the lock goes, the file stays
  {
    DirectoryLock third(dir, ".lock");
    EXPECT_EQ(third.state(), DirectoryLock::State::kHeld);
    EXPECT_TRUE(third.file_existed());
    third.remove_file();
    EXPECT_FALSE(fs::exists(dir / ".lock"));
  }
  const DirectoryLock fourth(dir, ".lock");
  EXPECT_FALSE(fourth.file_existed());
  fs::remove_all(dir.parent_path());
}

}  // namespace
}  // namespace electra
