# shellcheck shell=bash
# How the launch scripts (jobs/local/pretrain.sh, jobs/slurm/pretrain.sbatch) pass a stop on to the ranks,
# sourced by them. Both forward SIGUSR1 to the ranks through their launcher and must cope with two races:
# a launcher that got the stop before its ranks existed passes it to nobody (mpirun forwards to the ranks
# it has; scancel reaches the steps Slurm has registered), and a signal to Open MPI 4.1's mpirun during its
# own shutdown can crash it (exit 139), hiding the ranks' status.

# ranks_running PID: true while mpirun PID has a live child (a rank), or when that cannot be read. A rank
# that has exited stays listed until mpirun reaps it, in mpirun's shutdown: only a live one counts.
ranks_running() {
  local children pid state
  children=$(cat /proc/"$1"/task/*/children 2> /dev/null) || return 0
  for pid in $children; do
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' /proc/"$pid"/status 2> /dev/null)
    [ -z "$state" ] || [ "$state" = Z ] || return 0
  done
  return 1
}

# repeat_stop PID COMMAND...: runs COMMAND every 2 s in the background while PID (the launcher) lives, and
# sets `resender` to the repeater's pid (kill it once the launcher has ended). electra-train takes SIGUSR1
# again and again as the same request.
repeat_stop() {
  local launcher_pid=$1
  shift
  (
    # Its sleep goes with it: a sleep left behind would hold the script's stdout open (a pipe's end late).
    trap 'kill "${nap:-}" 2> /dev/null; exit 0' TERM
    while :; do
      sleep 2 &
      nap=$!
      wait "$nap"
      kill -0 "$launcher_pid" 2> /dev/null || exit 0
      "$@"
    done
  ) &
  # shellcheck disable=SC2034  # read by the sourcing script
  resender=$!
}
