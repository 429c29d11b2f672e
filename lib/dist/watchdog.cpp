#include "lib/dist/watchdog.h"

#include <boost/log/core.hpp>
#include <cstdlib>
#include <iomanip>
#include <sstream>
#include <utility>

#include "lib/core/error.h"
#include "lib/core/log.h"
#include "lib/dist/communicator.h"

namespace electra::dist {
namespace {

std::chrono::steady_clock::duration to_duration(double seconds) {
  if (!(seconds > 0)) fail("Watchdog: step timeout must be positive, got ", seconds, " s");
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace

Watchdog::Action Watchdog::abort_action(const Communicator& comm, int code) {
  // Captures by value what abort needs: the Communicator may be moved, MPI_Abort only needs the handle.
  const MPI_Comm handle = comm.comm();
  return [handle, code](const std::string& message) {
    ELECTRA_LOG(fatal) << message << " (aborting the job)";
    boost::log::core::get()->flush();
    MPI_Abort(handle, code);
    std::_Exit(code);
  };
}

Watchdog::Watchdog(double step_timeout_s, int rank, Action action)
    : timeout_(to_duration(step_timeout_s)), last_beat_(Clock::now()), rank_(rank), action_(std::move(action)) {
  if (!action_) fail("Watchdog: no action given");
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::heartbeat(int64_t step) {
  std::lock_guard lock(mutex_);
  last_beat_ = Clock::now();
  last_step_ = step;
}

void Watchdog::pause() {
  std::lock_guard lock(mutex_);
  paused_ = true;
}

void Watchdog::resume() {
  {
    std::lock_guard lock(mutex_);
    paused_ = false;
    last_beat_ = Clock::now();
  }
  wake_.notify_all();
}

void Watchdog::set_timeout(double step_timeout_s, std::string phase) {
  const auto timeout = to_duration(step_timeout_s);
  {
    std::lock_guard lock(mutex_);
    timeout_ = timeout;
    last_beat_ = Clock::now();
    phase_ = std::move(phase);
  }
  wake_.notify_all();
}

void Watchdog::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Watchdog::fired() const {
  std::lock_guard lock(mutex_);
  return fired_;
}

void Watchdog::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (paused_) {
      wake_.wait(lock, [this] { return stopping_ || !paused_; });
      continue;
    }
    const auto deadline = last_beat_ + timeout_;
    if (Clock::now() < deadline) {
      // Woken early by stop/resume/set_timeout, or a heartbeat moved the deadline: re-evaluate.
      wake_.wait_until(lock, deadline);
      continue;
    }
    fired_ = true;
    const double silent = std::chrono::duration<double>(Clock::now() - last_beat_).count();
    std::ostringstream message;
    message << "watchdog: rank " << rank_ << " made no progress for " << std::fixed << std::setprecision(1) << silent
            << " s (timeout " << std::chrono::duration<double>(timeout_).count() << " s); last completed step "
            << last_step_;
    if (!phase_.empty()) message << "; in " << phase_;
    lock.unlock();
    action_(message.str());
    return;
  }
}

}  // namespace electra::dist
