#include "lib/dist/signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace electra::dist {
namespace {

TEST(StopSignals, Sigusr1SetsTheFlag) {
  install_stop_signals();
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
  EXPECT_EQ(stop_signal(), 0);
  ASSERT_EQ(raise(SIGUSR1), 0);  // the handler has run when raise returns
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_signal(), SIGUSR1);
  EXPECT_STREQ(signal_name(stop_signal()), "SIGUSR1");
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
}

TEST(StopSignals, SigtermSetsTheFlagAndTheFirstSignalIsKept) {
  install_stop_signals();
  install_stop_signals();  // idempotent
  clear_stop_request();
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  for (int i = 0; i < 200 && !stop_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_signal(), SIGTERM);
  ASSERT_EQ(raise(SIGUSR1), 0);
  EXPECT_EQ(stop_signal(), SIGTERM);
  clear_stop_request();
}

// A signal sent from another process (as Slurm does) reaches a process busy in its loop.
TEST(StopSignals, SignalFromAnotherProcess) {
  install_stop_signals();
  clear_stop_request();
  const pid_t self = getpid();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    kill(self, SIGUSR1);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  for (int i = 0; i < 400 && !stop_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_signal(), SIGUSR1);
  clear_stop_request();
}

}  // namespace
}  // namespace electra::dist
