#include "lib/core/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"

namespace electra {
namespace {

std::string read_all(int fd) {
  std::string text;
  char buffer[512];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buffer, sizeof(buffer), at);
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
    at += n;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

DirectoryLock::DirectoryLock(const std::filesystem::path& dir, const std::string& name) : path_(dir / name) {
  std::error_code error;
  // The topmost directory that is missing: what create_directories makes (abandoning the work removes it).
  for (std::filesystem::path p = std::filesystem::absolute(dir, error);
       !p.empty() && !std::filesystem::exists(p, error); p = p.parent_path()) {
    first_made_ = p;
    if (p == p.parent_path()) break;
  }
  made_dir_ = std::filesystem::create_directories(dir, error);
  if (!made_dir_) first_made_.clear();
  if (error) fail("directory ", dir.string(), ": cannot create it: ", error.message());
  file_existed_ = std::filesystem::exists(path_, error);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_.string(), ": cannot open the lock file: ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int code = errno;
    if (code == EWOULDBLOCK) {
      state_ = State::kBusy;
      holder_ = read_all(fd_);
      if (holder_.empty()) holder_ = "holder unknown";
      ::close(fd_);
      fd_ = -1;
    } else {
      state_ = State::kNoLocks;  // the file stays open: remove_file() still works
      reason_ = std::strerror(code);
    }
    return;
  }
  state_ = State::kHeld;
  // Who holds it, for the message of a process that is refused (the text means nothing once the lock is free).
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char started[32] = {};
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  std::strftime(started, sizeof(started), "%Y-%m-%d %H:%M:%S UTC", &utc);
  const std::string text = "pid " + std::to_string(::getpid()) + " on " + host_name() + ", started " + started + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    ELECTRA_LOG(warning) << path_.string()
                         << ": cannot record the pid and host in the lock file: " << std::strerror(errno);
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

void DirectoryLock::remove_file() {
  if (fd_ < 0) return;
  std::error_code ignored;
  std::filesystem::remove(path_, ignored);  // while still locked: no one takes a file about to go
  ::close(fd_);
  fd_ = -1;
}

}  // namespace electra
