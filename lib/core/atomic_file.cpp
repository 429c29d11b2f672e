#include "lib/core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "lib/core/error.h"

namespace electra {
namespace {

std::string errno_text() { return std::strerror(errno); }

// A failed write's temporary file goes: on a full disk it would keep the disk full.
void remove_quietly(const std::filesystem::path& temp) {
  std::error_code ignored;
  std::filesystem::remove(temp, ignored);
}

void fsync_path(const std::filesystem::path& path, int flags, const char* what) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) fail("cannot open ", what, " ", path.string(), " to fsync it: ", errno_text());
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    if ((flags & O_DIRECTORY) != 0 && (error == EINVAL || error == EROFS)) return;
    fail("fsync of ", what, " ", path.string(), " failed: ", std::strerror(error));
  }
  ::close(fd);
}

// Writes all `size` bytes; false (errno set) on an error such as ENOSPC.
bool write_all(int fd, const char* data, size_t size) {
  size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(fd, data + written, size - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    written += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

void fsync_file(const std::filesystem::path& path) { fsync_path(path, O_RDONLY, "file"); }

void fsync_directory(const std::filesystem::path& dir) {
  fsync_path(dir.empty() ? std::filesystem::path(".") : dir, O_RDONLY | O_DIRECTORY, "directory");
}

void commit_file(const std::filesystem::path& temp, const std::filesystem::path& final_path) {
  try {
    fsync_file(temp);
  } catch (const Error&) {
    remove_quietly(temp);
    throw;
  }
  if (std::rename(temp.c_str(), final_path.c_str()) != 0) {
    const std::string text = errno_text();
    remove_quietly(temp);
    fail("cannot rename ", temp.string(), " to ", final_path.string(), ": ", text);
  }
  fsync_directory(final_path.parent_path());
}

std::filesystem::path temp_path_for(const std::filesystem::path& final_path) {
  // Appended piecewise: GCC 12 reports a false -Wrestrict on "." + name + ".tmp".
  std::string name = ".";
  name += final_path.filename().string();
  name += ".tmp";
  return final_path.parent_path() / name;
}

void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  const auto temp = temp_path_for(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create ", temp.string(), ": ", errno_text());
  auto give_up = [&](const char* what) {
    const std::string text = errno_text();
    ::close(fd);
    ::unlink(temp.c_str());
    fail(what, " ", temp.string(), ": ", text);
  };
  if (!write_all(fd, contents.data(), contents.size())) give_up("cannot write");
  if (::fsync(fd) != 0) give_up("cannot fsync");
  ::close(fd);
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string text = errno_text();
    ::unlink(temp.c_str());
    fail("cannot rename ", temp.string(), " to ", path.string(), ": ", text);
  }
  fsync_directory(path.parent_path());
}

void copy_file_atomically(const std::filesystem::path& from, const std::filesystem::path& to) {
  // read/write rather than std::filesystem::copy_file, whose sendfile path reports a full disk as EIO.
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) fail("cannot open ", from.string(), ": ", errno_text());
  struct stat status {};
  const mode_t mode = ::fstat(in, &status) == 0 ? (status.st_mode & 07777) : 0644;
  const auto temp = temp_path_for(to);
  const int out = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (out < 0) {
    const std::string text = errno_text();
    ::close(in);
    fail("cannot create ", temp.string(), ": ", text);
  }
  auto give_up = [&](const char* what, const std::filesystem::path& path) {
    const std::string text = errno_text();
    ::close(in);
    ::close(out);
    remove_quietly(temp);  // a prefix on a full disk would keep it full
    fail("cannot copy ", from.string(), " to ", temp.string(), ": ", what, " ", path.string(), ": ", text);
  };
  std::vector<char> buffer(size_t{1} << 20);
  for (;;) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) give_up("cannot read", from);
    if (n == 0) break;
    if (!write_all(out, buffer.data(), static_cast<size_t>(n))) give_up("cannot write", temp);
  }
  ::close(in);
  if (::close(out) != 0) {
    const std::string text = errno_text();
    remove_quietly(temp);
    fail("cannot write ", temp.string(), ": ", text);
  }
  commit_file(temp, to);
}

std::filesystem::path abandoned_name(const std::filesystem::path& path) {
  std::filesystem::path name = path;
  name += ".abandoned";
  // symlink_status: a dangling link is taken too (exists() follows it and says free).
  for (int n = 1; std::filesystem::exists(std::filesystem::symlink_status(name)); ++n) {
    name = path;
    name += ".abandoned." + std::to_string(n);
  }
  return name;
}

}  // namespace electra
