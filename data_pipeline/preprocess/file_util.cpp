#include "data_pipeline/preprocess/file_util.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "lib/core/error.h"

namespace electra::data {
namespace fs = std::filesystem;

void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot open for fsync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail(path, ": fsync failed: ", std::strerror(err));
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail(dir, ": cannot open directory for fsync: ", std::strerror(errno));
  // Some filesystems refuse fsync on directories (EINVAL); the rename is still atomic there.
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != EROFS) fail(dir, ": fsync failed: ", std::strerror(err));
}

void commit_file(const std::string& tmp_path, const std::string& final_path) {
  fsync_file(tmp_path);
  if (std::rename(tmp_path.c_str(), final_path.c_str()) != 0)
    fail(tmp_path, ": cannot rename to ", final_path, ": ", std::strerror(errno));
  fsync_directory(fs::path(final_path).parent_path().string());
}

std::string temp_path_for(const std::string& path) {
  const fs::path p(path);
  std::string name = ".";  // built step by step: GCC 12 warns (-Wrestrict) on "." + s + ".tmp"
  name.append(p.filename().string());
  name.append(".tmp");
  return (p.parent_path() / name).string();
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::string tmp = temp_path_for(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(tmp, ": cannot create: ", std::strerror(errno));
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) fail(tmp, ": write failed");
  }
  commit_file(tmp, path);
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  const std::string tmp = temp_path_for(to);
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (ec) fail(from, ": cannot copy to ", tmp, ": ", ec.message());
  commit_file(tmp, to);
}

uint32_t file_crc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open for checksum");
  std::vector<char> buffer(1 << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize got = in.gcount();
    if (got > 0) crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(got));
  }
  if (in.bad()) fail(path, ": read error while computing checksum");
  return static_cast<uint32_t>(crc);
}

std::string crc32_hex(uint32_t crc) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

}  // namespace electra::data
