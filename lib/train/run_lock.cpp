#include "lib/train/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <string>

#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::train {
namespace {

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown host";
  return name;
}

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

RunLock::RunLock(const std::filesystem::path& run_dir) {
  std::error_code error;
  std::filesystem::create_directories(run_dir, error);
  if (error) fail("run directory ", run_dir.string(), ": cannot create it: ", error.message());
  const std::filesystem::path path = path_in(run_dir);
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path.string(), ": cannot open the run directory's lock file: ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int code = errno;
    if (code == EWOULDBLOCK) {
      const std::string holder = read_all(fd_);
      ::close(fd_);
      fd_ = -1;
      fail("run directory ", run_dir.string(), " is in use by another electra-train (",
           holder.empty() ? std::string("holder unknown") : holder, "; ", path.string(),
           "): two runs in one directory would overwrite each other's checkpoints and metrics. Wait for it to "
           "end or stop it (SIGTERM writes a checkpoint), or use another --output");
    }
    // No locks on this file system: say so once and go on, as before this check existed.
    ELECTRA_LOG(warning) << path.string() << ": cannot lock the run directory (" << std::strerror(code)
                         << "; a file system without flock, such as Lustre without -o flock): make sure no other "
                         << "electra-train writes to " << run_dir.string();
    return;
  }
  locked_ = true;
  // Who holds it, for the message of a run that is refused (the content means nothing once the lock is free).
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char started[32] = {};
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  std::strftime(started, sizeof(started), "%Y-%m-%d %H:%M:%S UTC", &utc);
  const std::string text = "pid " + std::to_string(::getpid()) + " on " + host_name() + ", started " + started + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    ELECTRA_LOG(warning) << path.string()
                         << ": cannot record the run's pid and host in the lock file: " << std::strerror(errno);
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace electra::train
