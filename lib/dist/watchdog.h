// A thread that ends the job when the training loop stops making progress (a rank stuck in a
// collective because another rank died silently, a hung device, a dead file system), instead of
// letting the job sit until the scheduler's time limit.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace electra::dist {

class Communicator;

class Watchdog {
 public:
  // Called once, from the watchdog thread, with a message naming the rank, the last step and the
  // silence. The production action aborts the job; tests pass a callback that records the call.
  using Action = std::function<void(const std::string& message)>;

  // Logs the message and MPI_Aborts the job with exit code `code` (electra-train: kExitWatchdog, 5; a
  // code of its own, so that job scripts can tell a hang from a clean stop).
  static Action abort_action(const Communicator& comm, int code);

  // Starts the thread; the clock starts now (the first heartbeat is due within step_timeout_s).
  Watchdog(double step_timeout_s, int rank, Action action);
  ~Watchdog();  // stop()
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The loop is alive; `step` is the step just finished (reported if the watchdog fires later).
  void heartbeat(int64_t step);
  // Suspends the deadline (e.g. around a checkpoint save that may take longer than a step);
  // resume() restarts the clock.
  void pause();
  void resume();
  // Changes the timeout; the clock restarts. `phase` (e.g. "the checkpoint after step 40") is named in the
  // message if the watchdog fires before the next set_timeout or heartbeat.
  void set_timeout(double step_timeout_s, std::string phase = "");
  // Stops and joins the thread; no action after it returns. Idempotent.
  void stop();

  bool fired() const;

 private:
  void run();

  using Clock = std::chrono::steady_clock;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  Clock::duration timeout_;
  Clock::time_point last_beat_;
  int64_t last_step_ = -1;
  std::string phase_;
  int rank_;
  bool paused_ = false;
  bool stopping_ = false;
  bool fired_ = false;
  Action action_;
  std::thread thread_;
};

}  // namespace electra::dist
