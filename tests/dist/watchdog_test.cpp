#include "lib/dist/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

using namespace std::chrono_literals;

// Records the action's calls.
struct Recorder {
  std::atomic<int> calls{0};
  std::mutex mutex;
  std::string message;
  Watchdog::Action action() {
    return [this](const std::string& text) {
      std::lock_guard lock(mutex);
      message = text;
      ++calls;
    };
  }
  bool wait_for_call(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (calls.load() == 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(5ms);
    return calls.load() > 0;
  }
};

TEST(Watchdog, FiresOnceWhenHeartbeatsStop) {
  Recorder recorder;
  Watchdog watchdog(0.2, 7, recorder.action());
  watchdog.heartbeat(41);
  watchdog.heartbeat(42);
  ASSERT_TRUE(recorder.wait_for_call(5000ms)) << "no action 5 s after the last heartbeat (timeout 0.2 s)";
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(recorder.calls.load(), 1);
  EXPECT_TRUE(watchdog.fired());
  std::lock_guard lock(recorder.mutex);
  EXPECT_NE(recorder.message.find("rank 7"), std::string::npos) << recorder.message;
  EXPECT_NE(recorder.message.find("last completed step 42"), std::string::npos) << recorder.message;
}

TEST(Watchdog, FiresWithoutAnyHeartbeat) {
  Recorder recorder;
  Watchdog watchdog(0.1, 0, recorder.action());
  EXPECT_TRUE(recorder.wait_for_call(5000ms));
}

TEST(Watchdog, QuietWhileHeartbeatsContinue) {
  Recorder recorder;
  Watchdog watchdog(0.5, 0, recorder.action());
  const auto end = std::chrono::steady_clock::now() + 1500ms;  // three timeouts' worth of steps
  for (int64_t step = 0; std::chrono::steady_clock::now() < end; ++step) {
    watchdog.heartbeat(step);
    std::this_thread::sleep_for(20ms);
  }
  watchdog.stop();
  EXPECT_EQ(recorder.calls.load(), 0);
  EXPECT_FALSE(watchdog.fired());
}

TEST(Watchdog, PauseSuspendsAndResumeRestartsTheClock) {
  Recorder recorder;
  Watchdog watchdog(0.2, 0, recorder.action());
  watchdog.pause();
  std::this_thread::sleep_for(600ms);  // a long checkpoint save
  EXPECT_EQ(recorder.calls.load(), 0);
  watchdog.resume();
  EXPECT_TRUE(recorder.wait_for_call(5000ms)) << "after resume() the deadline must apply again";
}

TEST(Watchdog, StopPreventsAction) {
  Recorder recorder;
  {
    Watchdog watchdog(0.3, 0, recorder.action());
    watchdog.heartbeat(1);
    const auto start = std::chrono::steady_clock::now();
    watchdog.stop();
    watchdog.stop();  // idempotent
    EXPECT_LT(std::chrono::steady_clock::now() - start, 200ms) << "stop() must not wait for the deadline";
  }
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(recorder.calls.load(), 0);
}

TEST(Watchdog, SetTimeoutAppliesToTheRunningClock) {
  Recorder recorder;
  Watchdog watchdog(60.0, 0, recorder.action());
  watchdog.set_timeout(0.1);
  EXPECT_TRUE(recorder.wait_for_call(5000ms)) << "the new, shorter timeout must wake the thread";
}

// A phase with its own deadline (electra-train's checkpoints and evaluations) is named when it hangs; a
// later set_timeout without one forgets it.
TEST(Watchdog, NamesThePhaseThatHung) {
  Recorder recorder;
  Watchdog watchdog(60.0, 3, recorder.action());
  watchdog.heartbeat(40);
  watchdog.set_timeout(30.0, "the checkpoint after step 40");
  watchdog.set_timeout(60.0);
  watchdog.set_timeout(0.1, "the evaluation after step 40");
  ASSERT_TRUE(recorder.wait_for_call(5000ms));
  std::lock_guard lock(recorder.mutex);
  EXPECT_NE(recorder.message.find("rank 3"), std::string::npos) << recorder.message;
  EXPECT_NE(recorder.message.find("last completed step 40; in the evaluation after step 40"), std::string::npos)
      << recorder.message;
  EXPECT_EQ(recorder.message.find("checkpoint"), std::string::npos) << recorder.message;
}

TEST(Watchdog, RejectsBadArguments) {
  Recorder recorder;
  EXPECT_THROW(Watchdog(0.0, 0, recorder.action()), Error);
  EXPECT_THROW(Watchdog(-1.0, 0, recorder.action()), Error);
  EXPECT_THROW(Watchdog(1.0, 0, Watchdog::Action{}), Error);
}

}  // namespace
}  // namespace electra::dist
