#!/usr/bin/env bash
# jobs/slurm/pretrain.sbatch's handling of a stop at the awkward moments, with fake srun/scancel/scontrol
# (no Slurm needed; the real cluster is slurm_test.sh's). Each case must end requeued (script exit 0 after
# `scontrol requeue`), as a stop with a checkpoint does:
#   1. the stop reaches the batch shell while it still checks its settings (`srun --mpi=list` is slow): it
#      was killed by the signal (exit 138/143, no word, no requeue); now the step is not started;
#   2. the stop reaches ranks still loading their libraries, which die of SIGUSR1 (exit 138): the last
#      checkpoint stands, so it counts as a stop;
#   3. the step exits 3 while the shell is still in its trap (scancel is slow to return): the interrupted
#      `wait` gave 128+signal and the script reported "training failed" instead of requeueing;
#   4. the launcher passes the stop to nobody (mpirun before it spawned the ranks): the ranks trained on to
#      the end; the stop is now repeated every 2 s until the step ends.
# Case 2 for jobs/local/pretrain.sh too (exit 3). And the flags the script sets are refused in the
# arguments, naming the variable (exit 2).
set -uo pipefail
test_name=sbatch_signals
tmp=$(mktemp -d)
# Removed at the end (kept after a failure): no EXIT trap, since bash runs one in a child killed between
# fork and exec, as the early stops below may do.
# shellcheck source=tests/jobs/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
script=$PWD/jobs/slurm/pretrain.sbatch
[ -f "$script" ] || { echo "run from the repository root"; exit 2; }

# Fakes. srun --mpi=list sleeps FAKE_LIST_DELAY; the step (srun ...) runs $FAKE_STEP with its pid in
# $tmp/step.pid; scancel --signal=USR1 sends SIGUSR1 to the step, then sleeps FAKE_SCANCEL_DELAY;
# scontrol says RUNNING and records requeues in $tmp/requeued.
mkdir -p "$tmp/fake" "$tmp/bin"
cat > "$tmp/fake/srun" << 'SH'
#!/usr/bin/env bash
if [ "${1:-}" = --mpi=list ]; then sleep "${FAKE_LIST_DELAY:-0}"; echo "MPI plugin types are... pmix"; exit 0; fi
echo $$ > "$FAKE_TMP/step.pid"
exec bash -c "$FAKE_STEP"
SH
cat > "$tmp/fake/scancel" << 'SH'
#!/usr/bin/env bash
kill -USR1 "$(cat "$FAKE_TMP/step.pid")" 2>/dev/null
sleep "${FAKE_SCANCEL_DELAY:-0}"
SH
cat > "$tmp/fake/scontrol" << 'SH'
#!/usr/bin/env bash
case "$1" in
  show) echo "JobId=$3 JobState=RUNNING" ;;
  requeue) echo "$2" >> "$FAKE_TMP/requeued" ;;
esac
SH
printf '#!/bin/sh\nexit 1\n' > "$tmp/bin/electra-train"
chmod +x "$tmp/fake/"* "$tmp/bin/electra-train"
export PATH=$tmp/fake:$PATH FAKE_TMP=$tmp ELECTRA_BIN=$tmp/bin DATA=$tmp/shards RUN_DIR=$tmp/run
export SLURM_JOB_ID=4242 SLURM_NTASKS=2 SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR=$PWD
unset SLURM_RESTART_COUNT MAX_REQUEUES LAUNCHER MPI_PLUGIN EXTRA_ARGS THREADS DEVICE PRECISION

# run_case NAME SIGNAL_DELAY: runs the script in the background, sends SIGUSR1 to it after SIGNAL_DELAY
# seconds, and checks that it ended requeued.
run_case() {
  rm -f "$tmp/requeued" "$tmp/step.pid"
  bash "$script" > "$tmp/$1.log" 2>&1 &
  local pid=$!
  sleep "$2"
  kill -USR1 "$pid"
  wait "$pid"
  local code=$?
  [ "$code" = 0 ] && [ -s "$tmp/requeued" ] || fail "$1: exit $code, requeued: $(cat "$tmp/requeued" 2>/dev/null)"
}

# 1. During the settings' checks: the step never starts.
FAKE_LIST_DELAY=2 FAKE_STEP='exit 1' run_case before_traps 0.5
grep -q "stopped before the training step started" "$tmp/before_traps.log" || fail "before_traps: no word of it"
[ ! -e "$tmp/step.pid" ] || fail "before_traps: the step was started"
say "1. a stop while the script checks its settings: the step is not started, the job requeued"

# 2. Ranks killed by the SIGUSR1 before they could catch it (a step without a handler).
FAKE_STEP='sleep 30' run_case loading 1
grep -q "the ranks were stopped while starting" "$tmp/loading.log" || fail "loading: not counted as a stop"
say "2. ranks that die of the stop while loading: exit 3, requeued"

# 3. The step checkpoints and exits 3 while the shell is still in its trap (scancel returns 3 s later).
FAKE_SCANCEL_DELAY=3 FAKE_STEP='trap "exit 3" USR1; sleep 30 & wait' run_case slow_scancel 1
grep -q "electra-train exited with 3" "$tmp/slow_scancel.log" || fail "slow_scancel: the step's status was lost"
say "3. a step that exits 3 while the trap still runs: its status kept, requeued"

# 4. A stop the launcher passes to nobody (mpirun before it spawned the ranks, scancel before Slurm
# registered the step): it is repeated until the step ends. The fake step ignores the first second's USR1.
FAKE_STEP='trap "" USR1; sleep 1; trap "exit 3" USR1; sleep 30 & wait' run_case lost_stop 0.5
grep -q "electra-train exited with 3" "$tmp/lost_stop.log" || fail "lost_stop: the stop was not repeated"
say "4. a stop the ranks did not get the first time: repeated, exit 3, requeued"

# stop_local STEP DELAY LOG: runs jobs/local/pretrain.sh with a fake mpirun running STEP, sends it SIGTERM
# after DELAY seconds; its exit status in $code.
stop_local() {
  FAKE_STEP=$1 bash jobs/local/pretrain.sh > "$3" 2>&1 &
  local pid=$!
  sleep "$2"
  kill -TERM "$pid"
  wait "$pid"
  code=$?
}
# jobs/local/pretrain.sh, the same case 2 (a fake mpirun whose ranks die of the SIGUSR1): exit 3.
printf '#!/usr/bin/env bash\nexec bash -c "$FAKE_STEP"\n' > "$tmp/fake/mpirun"
chmod +x "$tmp/fake/mpirun"
stop_local 'sleep 30' 1 "$tmp/local.log"
[ "$code" = 3 ] && grep -q "the ranks were stopped while starting" "$tmp/local.log" || fail "pretrain.sh: exit $code"
say "2l. pretrain.sh: ranks that die of the stop while loading: exit 3"
# A stop while pretrain.sh checks its settings (its traps came after them: killed, exit 143, no word). A slow
# fake nproc, which the checks call, holds the script there.
printf '#!/bin/sh\nsleep 1\necho 2\n' > "$tmp/fake/nproc"
chmod +x "$tmp/fake/nproc"
stop_local 'exit 0' 0.5 "$tmp/local_early.log"
rm "$tmp/fake/nproc"
[ "$code" = 3 ] && grep -q "stopped before mpirun started" "$tmp/local_early.log" ||
  fail "pretrain.sh, a stop during its checks: exit $code: $(cat "$tmp/local_early.log")"
say "1l. pretrain.sh: a stop while it checks its settings: exit 3"

# Flags the script passes itself, in the arguments or EXTRA_ARGS: refused naming the variable.
bash "$script" --resume "$tmp/x.h5" > "$tmp/flags.log" 2>&1
[ $? = 2 ] && grep -q -- "--resume: this script always passes --resume auto" "$tmp/flags.log" || fail "--resume taken"
EXTRA_ARGS="--output elsewhere" bash "$script" > "$tmp/flags.log" 2>&1
[ $? = 2 ] && grep -q -- "--output: set RUN_DIR instead" "$tmp/flags.log" || fail "--output in EXTRA_ARGS taken"
THREADS=08 bash "$script" > "$tmp/flags.log" 2>&1
[ $? = 2 ] && grep -q "THREADS must be an integer >= 1, got '08'" "$tmp/flags.log" || fail "THREADS=08 taken"
say "the script's own flags in the arguments, and THREADS=08, are refused naming the variable"
say "passed"
rm -rf "$tmp"
