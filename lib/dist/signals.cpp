#include "lib/dist/signals.h"

#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

// Only lock-free atomics may be touched from a signal handler.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int signal) {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, signal);  // keep the first one
}

}  // namespace

void install_stop_signals() {
  // Once per process: installing again would re-arm SIGINT's one-shot handler after a first Ctrl-C.
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // blocking reads/writes in the loop carry on rather than fail with EINTR
    for (int signal : {SIGTERM, SIGUSR1}) {
      if (sigaction(signal, &action, nullptr) != 0) fail("sigaction(", signal_name(signal), ") failed");
    }
    // Ctrl-C stops with a checkpoint as SIGTERM does, once: SA_RESETHAND restores the default action, so a
    // second Ctrl-C ends the process at once. A SIGINT ignored at entry (a command started with `&` by a
    // script) stays ignored, as shells expect of their background jobs.
    struct sigaction current;
    if (sigaction(SIGINT, nullptr, &current) != 0) fail("sigaction(SIGINT) failed");
    if (current.sa_handler == SIG_IGN) return;
    action.sa_flags = SA_RESTART | SA_RESETHAND;
    if (sigaction(SIGINT, &action, nullptr) != 0) fail("sigaction(SIGINT) failed");
  });
}

bool stop_requested() { return g_signal.load() != 0; }
int stop_signal() { return g_signal.load(); }
void clear_stop_request() { g_signal.store(0); }

const char* signal_name(int signal) {
  switch (signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGINT:
      return "SIGINT";
    case SIGKILL:
      return "SIGKILL";
    default:
      return "signal";
  }
}

}  // namespace electra::dist
