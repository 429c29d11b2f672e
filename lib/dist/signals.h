// Graceful stop on SIGTERM and SIGUSR1 (Slurm's `--signal=USR1@120` before the time limit, or a
// preemption), and on a first Ctrl-C (SIGINT; a second one ends the process at once). The handler only
// sets a flag; the trainer reads it at step boundaries, ORs it across ranks with
// Communicator::agree_any, checkpoints and exits, so all ranks stop at the same step.
#pragma once

namespace electra::dist {

// Installs the handler for SIGTERM, SIGUSR1 and SIGINT (sigaction, SA_RESTART; SIGINT's is one-shot and
// is not installed when SIGINT is ignored at entry). Only the first call installs anything.
void install_stop_signals();
// True once one of the signals has arrived. Async-signal-safe (a lock-free atomic).
bool stop_requested();
// The first stop signal received (SIGTERM, SIGUSR1 or SIGINT), 0 if none.
int stop_signal();
// "SIGTERM", "SIGUSR1", ... or "signal" for one without a name here.
const char* signal_name(int signal);
// Forgets a received signal (tests; a trainer that handled the stop and keeps running).
void clear_stop_request();

}  // namespace electra::dist
