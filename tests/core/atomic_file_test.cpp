// lib/core/atomic_file.h: a write that fails leaves the old file and no temporary file behind.
#include "lib/core/atomic_file.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "lib/core/error.h"
#include "tests/support/file_size_limit.h"

namespace electra {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "electra-atomic-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(AtomicFile, WritesAndReplacesWithoutLeavingATemporaryFile) {
  TempDir dir;
  const fs::path file = dir.path / "vocab.txt";
  write_file_atomically(file, "first\n");
  write_file_atomically(file, "second\n");
  EXPECT_EQ(read_text(file), "second\n");
  copy_file_atomically(file, dir.path / "copy.txt");
  EXPECT_EQ(read_text(dir.path / "copy.txt"), "second\n");
  // Larger than the copy's buffer, with bytes of every value.
  std::string bytes(3 * 1024 * 1024 + 5, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 131) % 256);
  write_file_atomically(dir.path / "big.bin", bytes);
  copy_file_atomically(dir.path / "big.bin", dir.path / "big_copy.bin");
  EXPECT_EQ(read_text(dir.path / "big_copy.bin"), bytes);
  EXPECT_FALSE(fs::exists(temp_path_for(file)));
  EXPECT_EQ(temp_path_for(file), dir.path / ".vocab.txt.tmp");
}

// A write the file system refuses (here the file-size limit, EFBIG): the old contents stay, the error names
// the temporary file, and the temporary file is removed. The same for a copy.
TEST(AtomicFile, AFailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  TempDir dir;
  const fs::path file = dir.path / "manifest.json";
  write_file_atomically(file, "old\n");
  const std::string message =
      test::error_under_file_size_limit(16, [&] { write_file_atomically(file, std::string(4096, 'x')); });
  EXPECT_NE(message.find("cannot write " + temp_path_for(file).string()), std::string::npos) << message;
  EXPECT_EQ(read_text(file), "old\n");
  EXPECT_FALSE(fs::exists(temp_path_for(file)));
}

TEST(AtomicFile, AFailedCopyKeepsTheOldFileAndRemovesTheTemporary) {
  TempDir dir;
  const fs::path big = dir.path / "big.txt", copy = dir.path / "vocab.txt";
  write_file_atomically(big, std::string(64 * 1024, 'x'));
  write_file_atomically(copy, "old\n");
  const std::string message = test::error_under_file_size_limit(4096, [&] { copy_file_atomically(big, copy); });
  EXPECT_NE(message.find(temp_path_for(copy).string()), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(EFBIG)), std::string::npos) << "the cause, not EIO: " << message;
  EXPECT_EQ(read_text(copy), "old\n");
  EXPECT_FALSE(fs::exists(temp_path_for(copy)));
}

}  // namespace
}  // namespace electra
