#!/usr/bin/env bash
# ELECTRA pre-training on one machine: electra-train on NP MPI ranks under mpirun, resumed from the newest
# checkpoint in RUN_DIR when there is one (--resume auto).
#
#   DATA=shards/ RUN_DIR=runs/small NP=4 jobs/local/pretrain.sh [--set train.steps=10000 --max-time 3600 ...]
#
# Arguments are passed to electra-train after the ones this script sets, so they win (a later --set of
# the same key overrides an earlier one); --resume replaces the script's --resume auto. The flags the
# environment sets (--config, --data, --output, --device) are refused as arguments, naming the variable.
# Environment:
#   DATA         shards directory (manifest.json) or NVIDIA BERT HDF5 directory            (required)
#   RUN_DIR      run directory: checkpoints, logs, metrics.jsonl               (default runs/pretrain)
#   CONFIG       run config JSON                                     (default jobs/configs/small.json)
#   NP           MPI ranks                                                                (default 2)
#   THREADS      CPU threads per rank (OMP_NUM_THREADS, train.threads)  (default: cores / ranks)
#   DEVICE       cpu | cuda                                                             (default cpu)
#   PRECISION    train.precision: fp32 | tf32 | bf16 | fp16 (default: bf16 with DEVICE=cuda, i.e. bf16
#                mixed precision with fp32 master weights; the config's on the CPU)
#   MPIRUN_ARGS  more mpirun arguments, split on spaces (e.g. "--bind-to none")
#   ELECTRA_BIN  directory of electra-train                           (default <repository>/build/bin)
#
# Stopping: SIGTERM, SIGUSR1 or SIGHUP sent to this script (kill, a batch system, the terminal closing), or
# Ctrl-C, is passed to mpirun as SIGUSR1, which mpirun forwards to every rank (Open MPI forwards
# SIGUSR1/SIGUSR2; on a SIGTERM or SIGINT of its own mpirun terminates the ranks itself and exits 1, so mpirun
# runs in a process group of its own, out of the terminal's reach). The ranks agree on a step, write a
# checkpoint and exit 3; running the script again continues exactly from there (also when the stop came
# during set-up). A second Ctrl-C terminates the ranks at once, without that checkpoint (the previous one
# stands). Exit status: electra-train's (0 done, 1 failed, 2 bad input, 3 stopped with a checkpoint, 4 too
# many non-finite steps, 5 the watchdog aborted a hung step: running the script again resumes from the last
# checkpoint; see README).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${ELECTRA_BIN:-$root/build/bin}
train=$bin/electra-train
log() { echo "pretrain.sh: $(date '+%F %T'): $*"; }
die() { log "error: $*" >&2; exit 2; }

# Signals first: a stop while the settings are checked must not end this script without a word.
mpirun_pid=
stop_pending=0
stop_sent=0
resender=
send_stop() {
  stop_sent=1
  kill -USR1 "$mpirun_pid" 2>/dev/null || true
  # mpirun forwards SIGUSR1 to the ranks it has: one that came before they were spawned reaches nobody.
  # Repeat it every 2 s while they run (electra-train takes it again as the same request), not after: a
  # signal during mpirun's own shutdown can crash it (below).
  if [ -z "$resender" ]; then
    (
      # Its sleep goes with it: a sleep left behind would hold this script's stdout open (a pipe's end late).
      trap 'kill "${nap:-}" 2> /dev/null; exit 0' TERM
      while :; do
        sleep 2 &
        nap=$!
        wait "$nap"
        kill -0 "$mpirun_pid" 2> /dev/null || exit 0
        ! ranks_running || kill -USR1 "$mpirun_pid" 2> /dev/null
      done
    ) &
    resender=$!
  fi
}
forward() {  # signal [note]
  log "received SIG$1; asking the ranks to checkpoint and stop (SIGUSR1 via mpirun)${2:-}"
  if [ -n "$mpirun_pid" ]; then send_stop; else stop_pending=1; fi
}
# True while mpirun has children (the ranks), or when that cannot be read. Once the ranks have exited, a
# SIGTERM would only reach mpirun's own shutdown, where Open MPI 4.1's mpirun can crash (exit 139) and hide
# the ranks' exit status: their checkpoint is written by then.
ranks_running() {
  local children pid state
  children=$(cat /proc/"$mpirun_pid"/task/*/children 2> /dev/null) || return 0
  for pid in $children; do
    # A rank that has exited stays listed until mpirun reaps it, in mpirun's shutdown: only a live one counts.
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' /proc/"$pid"/status 2> /dev/null)
    [ -z "$state" ] || [ "$state" = Z ] || return 0
  done
  return 1
}
interrupts=0
interrupt() {
  interrupts=$((interrupts + 1))
  if [ $interrupts -eq 1 ]; then
    forward INT "; Ctrl-C again terminates them at once, without this checkpoint"
  elif [ -n "$mpirun_pid" ] && ranks_running; then
    log "second Ctrl-C: mpirun terminates the ranks (SIGTERM)"
    kill -TERM "$mpirun_pid" 2>/dev/null || true
  elif [ -n "$mpirun_pid" ]; then
    log "second Ctrl-C: the ranks have already stopped; waiting for mpirun to finish"
  fi
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap interrupt INT
# The terminal closing (SIGHUP) would otherwise end this script and leave mpirun, in its own process group
# (below), training on: it stops with a checkpoint instead.
trap 'forward HUP' HUP

[ -x "$train" ] || die "$train not found: build first (jobs/setup.sh) or set ELECTRA_BIN"
[ -n "${DATA:-}" ] || die "set DATA to the shards directory"
command -v mpirun > /dev/null || die "mpirun not found (Debian: openmpi-bin)"
np=${NP:-2}
# shellcheck source=jobs/local/checks.sh
source "$root/jobs/local/checks.sh"
at_least NP "$np" 1
[ -z "${THREADS:-}" ] || at_least THREADS "$THREADS" 1
config=${CONFIG:-$root/jobs/configs/small.json}
run_dir=${RUN_DIR:-$root/runs/pretrain}

launch=(mpirun -np "$np")
[ "$(id -u)" -ne 0 ] || launch+=(--allow-run-as-root)
# More ranks than cores is allowed (slow, but useful for testing).
[ "$np" -le "$(nproc)" ] || launch+=(--oversubscribe)
# The user's arguments: electra-train takes each of these flags once.
resume=(--resume auto)
for arg in "$@"; do
  case $arg in
    --config | --config=*) die "$arg: set CONFIG instead (this script passes --config \$CONFIG)" ;;
    --data | --data=*) die "$arg: set DATA instead (this script passes --data \$DATA)" ;;
    --output | --output=*) die "$arg: set RUN_DIR instead (this script passes --output \$RUN_DIR)" ;;
    --device | --device=*) die "$arg: set DEVICE instead (this script passes --device \$DEVICE)" ;;
    --resume | --resume=*) resume=() ;;
  esac
done
args=(--config "$config" --data "$DATA" --output "$run_dir" "${resume[@]}" --device "${DEVICE:-cpu}")
precision=${PRECISION:-$([ "${DEVICE:-cpu}" = cuda ] && echo bf16 || true)}
[ -z "$precision" ] || args+=(--set "train.precision=$precision")
if [ -n "${THREADS:-}" ]; then
  export OMP_NUM_THREADS=$THREADS
  args+=(--set "train.threads=$THREADS")
fi
[ -z "${OMP_NUM_THREADS:-}" ] || launch+=(-x OMP_NUM_THREADS)
# Open MPI binds each rank to one core (2 ranks or fewer) or one socket by default, which would pin a
# rank's threads to one core; MPIRUN_ARGS="--map-by slot:PE=4 --bind-to core" pins 4 cores per rank.
if [ -n "${MPIRUN_ARGS:-}" ]; then
  read -r -a more <<< "$MPIRUN_ARGS"
  launch+=("${more[@]}")
else
  launch+=(--bind-to none)
fi
args+=("$@")

printf -v shown ' %q' "${launch[@]}" "$train" "${args[@]}"
log "running:$shown"
if [ "$stop_pending" = 1 ]; then
  log "stopped before mpirun started; the last checkpoint stands (run the same command again to continue)"
  exit 3
fi
# Job control gives mpirun a process group of its own, so that Ctrl-C reaches only this script (above);
# stdin is /dev/null since a background process group may not read the terminal.
set -m
"${launch[@]}" "$train" "${args[@]}" < /dev/null &
mpirun_pid=$!
set +m
[ "$stop_pending" = 0 ] || send_stop  # a stop that came while mpirun was being started
# `wait` returns early (status > 128) whenever a trapped signal arrives; wait again until mpirun ends, then
# once more for its own status (a wait that a trap cut short as mpirun ended returned 128+signal).
while :; do
  wait "$mpirun_pid"
  code=$?
  kill -0 "$mpirun_pid" 2>/dev/null && continue
  wait "$mpirun_pid"
  code=$?
  break
done
[ -z "$resender" ] || kill "$resender" 2> /dev/null
if [ "$stop_sent" = 1 ] && [ "$interrupts" -lt 2 ] && [ "$code" = 138 ]; then
  # Killed by the SIGUSR1 before electra-train could catch it: the ranks were still loading their libraries.
  log "the ranks were stopped while starting, before they could take the signal; the last checkpoint stands"
  code=3
fi
case "$code" in
  0) log "training finished: $run_dir" ;;
  3) log "stopped with a checkpoint; run the same command again to continue from $run_dir" ;;
  5) log "the watchdog aborted a hung step (see $run_dir/logs); run the same command again to resume from the last checkpoint in $run_dir" ;;
  *) log "electra-train exited with $code; see $run_dir/logs" ;;
esac
exit "$code"
