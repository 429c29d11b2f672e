#include "lib/dist/signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
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

// Ctrl-C: the first SIGINT is a stop request like SIGTERM; its handler is one-shot, so a second SIGINT
// ends the process, also when install_stop_signals runs again in between (as electra-train's main and the
// trainer both call it). Death tests re-run this binary ("threadsafe"), so the handlers start fresh.
TEST(StopSignals, FirstSigintStopsAndTheSecondEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        signal(SIGINT, SIG_DFL);  // as in a terminal's foreground job
        install_stop_signals();
        raise(SIGINT);
        if (stop_signal() != SIGINT) _exit(1);
        std::fprintf(stderr, "the first SIGINT is a stop request\n");
        install_stop_signals();
        raise(SIGINT);
        _exit(2);
      },
      ::testing::KilledBySignal(SIGINT), "the first SIGINT is a stop request");
}

// A command started with `&` by a script has SIGINT ignored; it stays ignored (shells rely on that).
TEST(StopSignals, SigintIgnoredAtEntryStaysIgnored) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        signal(SIGINT, SIG_IGN);
        install_stop_signals();
        raise(SIGINT);
        _exit(stop_requested() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace electra::dist
