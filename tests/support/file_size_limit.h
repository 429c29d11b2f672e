// A full disk without one: the process's file-size limit (RLIMIT_FSIZE) with SIGXFSZ ignored, so a write past
// it fails with EFBIG instead of killing the test.
#pragma once

#include <sys/resource.h>

#include <csignal>
#include <functional>
#include <string>

#include "lib/core/error.h"

namespace electra::test {

// Runs `write` with files limited to `bytes`; returns the message of the electra::Error it threw ("" when it
// threw none). The limit and the signal's disposition are restored before returning.
inline std::string error_under_file_size_limit(rlim_t bytes, const std::function<void()>& write) {
  rlimit saved{};
  if (::getrlimit(RLIMIT_FSIZE, &saved) != 0) return "getrlimit failed";
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = saved;
  small.rlim_cur = bytes;
  std::string message;
  if (::setrlimit(RLIMIT_FSIZE, &small) != 0) {
    message = "setrlimit failed";
  } else {
    try {
      write();
    } catch (const Error& e) {
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
  }
  std::signal(SIGXFSZ, previous_handler);
  return message;
}

}  // namespace electra::test
