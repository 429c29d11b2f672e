// lib/core/log.h: what the console sink writes when several ranks share one stderr (mpirun's).
#include "lib/core/log.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <regex>
#include <sstream>
#include <string>

namespace electra::log {
namespace {

// Two processes (ranks 0 and 1) log 400 warnings each to one pipe at once, as ranks do on mpirun's stderr:
// every line arrives whole (a record and its newline went out as two writes, and lines were glued).
TEST(Log, RanksSharingStderrWriteWholeLines) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  constexpr int kRanks = 2, kLines = 400;
  pid_t children[kRanks];
  for (int rank = 0; rank < kRanks; ++rank) {
    children[rank] = ::fork();
    ASSERT_GE(children[rank], 0);
    if (children[rank] == 0) {
      ::close(fds[0]);
      ::dup2(fds[1], STDERR_FILENO);
      LogOptions options;
      options.rank = rank;
      init(options);
      const std::string body(150, static_cast<char>('a' + rank));
      for (int i = 0; i < kLines; ++i) ELECTRA_LOG(warning) << body << " " << i;
      ::_exit(0);
    }
  }
  ::close(fds[1]);
  std::string all;
  char buffer[65536];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) != 0;) {
    if (n < 0) break;
    all.append(buffer, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  for (pid_t child : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const std::regex whole(R"(\[[-0-9 :]+\] \[rank ([01])\] \[warning\] (a{150}|b{150}) [0-9]+)");
  std::istringstream lines(all);
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, whole)) << "line " << count << ": " << line;
    EXPECT_EQ(m[2].str()[0], m[1].str() == "0" ? 'a' : 'b') << line;
  }
  EXPECT_EQ(count, kRanks * kLines);
}

}  // namespace
}  // namespace electra::log
