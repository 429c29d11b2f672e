#!/usr/bin/env bash
# The Slurm recipes on a real one-node Slurm cluster started on this machine (munged, slurmctld, slurmd,
# all configured in a temporary directory through SLURM_CONF; nothing system-wide is read or changed):
#   0. jobs/slurm/preprocess.sbatch makes shards (2 tasks, srun) from a small generated corpus; requeued,
#      a job that first refused an unfinished run's output (what a preempted job leaves) replaces it;
#   a0. pretrain.sbatch refuses THREADS=0 and a MAX_REQUEUES that is not a number (exit 2);
#   a. jobs/slurm/pretrain.sbatch trains a very small model to N steps without interruption;
#   b. the same job gets SIGUSR1 in its batch shell mid-training (`scancel --batch --signal=USR1`, what
#      `#SBATCH --signal=B:USR1@120` does before the time limit): the script forwards it to the ranks,
#      they checkpoint and exit 3, the script requeues the job, Slurm starts it again, it resumes and
#      finishes. Its loss at every step, the last one included, must equal run (a)'s exactly;
#   c. a plain `scancel` of a running job ends it for good (the script's requeue is refused).
# Exits 77 (CTest: skipped) when Slurm cannot run here: packages missing and not installable (they are
# installed with apt-get only when running as root; ELECTRA_TEST_NO_INSTALL=1 prevents it), or the
# daemons do not come up (their logs are printed). Tears the cluster down on every exit, and a watcher
# process does it too if this script is killed (e.g. by CTest's timeout).
#
# Usage: tests/jobs/slurm_test.sh [BUILD_DIR]   (default $ELECTRA_BUILD_DIR, else build/)
# ELECTRA_TEST_KEEP_TMP=1 keeps the cluster's directory (logs, job output, runs) after the test.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/jobs/common.sh
source "$root/tests/jobs/common.sh"
build=$(cd "${1:-${ELECTRA_BUILD_DIR:-$root/build}}" 2>/dev/null && pwd) || build=${1:-${ELECTRA_BUILD_DIR:-$root/build}}
bin=$build/bin
steps=600

say() { echo "slurm_test: $(date +%T): $*"; }
tmp=
show_logs() {
  [ -n "$tmp" ] && [ -d "$tmp" ] || return 0
  local f
  for f in "$tmp"/log/*.log "$tmp"/*.out; do
    [ -f "$f" ] || continue
    echo "----- tail of $f -----"
    tail -n 40 "$f"
  done
}
skip() { say "SKIPPED: $*"; show_logs; exit 77; }
fail() { say "FAILED: $*"; show_logs; exit 1; }

for program in electra-train electra-preprocess electra-vocab; do
  [ -x "$bin/$program" ] || fail "$bin/$program is missing: build electra-train electra-preprocess electra-vocab"
done
command -v python3 > /dev/null || skip "python3 is needed (corpus, metrics comparison)"
[ "$(id -u)" -eq 0 ] || skip "needs root: slurmd runs as root (this test starts its own Slurm cluster)"

# --- Slurm and munge: installed, or installable as root with apt ------------------------------------
slurm_programs=(slurmctld slurmd sbatch srun scontrol sinfo squeue scancel munged munge unmunge)
missing_programs() {
  local p
  for p in "${slurm_programs[@]}"; do
    PATH=$PATH:/usr/sbin:/sbin command -v "$p" > /dev/null || echo "$p"
  done
}
if [ -n "$(missing_programs)" ]; then
  packages=(slurmctld slurmd slurm-client munge)
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null && [ "${ELECTRA_TEST_NO_INSTALL:-0}" != 1 ]; then
    say "installing ${packages[*]} (missing: $(missing_programs | tr '\n' ' '))"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends "${packages[@]}" ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; }; } > /dev/null 2>&1 ||
      skip "could not install ${packages[*]} with apt-get"
  fi
  [ -z "$(missing_programs)" ] ||
    skip "Slurm is not installed (missing: $(missing_programs | tr '\n' ' ')); Debian: apt-get install ${packages[*]}"
fi
export PATH=$PATH:/usr/sbin:/sbin

# --- the cluster's directory, and its teardown ------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/electra-slurm.XXXXXX") || fail "mktemp failed"
# munged wants its socket directory (and the path to it) searchable by everyone, its key private.
chmod 755 "$tmp"
mkdir -p "$tmp/munge-key" "$tmp/munge" "$tmp/state" "$tmp/spool" "$tmp/log" "$tmp/run"
chmod 700 "$tmp/munge-key"
chmod 755 "$tmp/munge"
export SLURM_CONF=$tmp/slurm.conf
# Every process of this cluster (daemons, slurmstepd, batch shells, ranks) has SLURM_CONF=$tmp/slurm.conf
# in its environment: the teardown ends exactly those, first politely, then with SIGKILL.
cat > "$tmp/teardown.sh" << EOF
#!/usr/bin/env bash
# Ends this test cluster's processes (found by SLURM_CONF=$SLURM_CONF in their environment) and removes $tmp.
ours() {
  local env
  for env in /proc/[0-9]*/environ; do
    pid=\${env#/proc/}; pid=\${pid%/environ}
    [ "\$pid" != "\$\$" ] || continue
    grep -qzxF "SLURM_CONF=$SLURM_CONF" "\$env" 2> /dev/null && echo "\$pid"
  done
}
SLURM_CONF=$SLURM_CONF timeout 5 scancel --quiet --user="\$(id -un)" > /dev/null 2>&1
for sig in TERM TERM KILL; do
  pids=\$(ours)
  [ -n "\$pids" ] || break
  kill -s \$sig \$pids 2> /dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -n "\$(ours)" ] || break; sleep 0.3; done
done
[ "${ELECTRA_TEST_KEEP_TMP:-0}" = 1 ] || rm -rf "$tmp"
EOF
chmod +x "$tmp/teardown.sh"
# The watcher is not a child of this script (double fork), so a kill of this script's process tree
# does not take it along; it tears the cluster down when this script is gone.
(env -u SLURM_CONF setsid bash -c 'echo $$ > "$1"; while kill -0 '$$' 2> /dev/null; do sleep 1; done; "$0"' \
  "$tmp/teardown.sh" "$tmp/run/watcher.pid" < /dev/null > /dev/null 2>&1 &)
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  say "tearing the cluster down"
  [ ! -s "$tmp/run/watcher.pid" ] || kill "$(cat "$tmp/run/watcher.pid")" 2> /dev/null
  env -u SLURM_CONF "$tmp/teardown.sh" < /dev/null || true
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- munge -----------------------------------------------------------------------------------------
if command -v mungekey > /dev/null; then
  mungekey --create --keyfile="$tmp/munge-key/munge.key" || fail "mungekey failed"
else
  dd if=/dev/urandom of="$tmp/munge-key/munge.key" bs=1024 count=1 status=none
fi
chmod 600 "$tmp/munge-key/munge.key"
munge_socket=$tmp/munge/munge.socket
munged --foreground --force --socket="$munge_socket" --key-file="$tmp/munge-key/munge.key" \
  --log-file="$tmp/log/munged.log" --pid-file="$tmp/run/munged.pid" --seed-file="$tmp/run/munged.seed" \
  > "$tmp/log/munged.stderr.log" 2>&1 &
for _ in $(seq 50); do [ -S "$munge_socket" ] && break; sleep 0.1; done
munge --socket="$munge_socket" -n 2> /dev/null | unmunge --socket="$munge_socket" > /dev/null 2>&1 ||
  skip "munged did not start (socket $munge_socket)"

# --- slurm.conf ------------------------------------------------------------------------------------
port_free() {  # no TCP socket on this port (any address, IPv4 or IPv6)
  local hex
  hex=$(printf '%04X' "$1")
  ! cat /proc/net/tcp /proc/net/tcp6 2> /dev/null | awk '{print $2}' | grep -qi ":$hex\$"
}
base=
for _ in $(seq 100); do
  candidate=$((20000 + (RANDOM % 400) * 100))  # ctld, slurmd, then 50 ports for srun
  ok=1
  for p in $(seq "$candidate" $((candidate + 51))); do port_free "$p" || { ok=0; break; }; done
  [ $ok = 1 ] && { base=$candidate; break; }
done
[ -n "$base" ] || skip "found no 52 free TCP ports in a row"
node=$(hostname -s)
node_line=$(slurmd -C 2> /dev/null | grep -m1 '^NodeName=') || skip "slurmd -C failed"
node_line=$(sed -E "s/^NodeName=[^ ]+/NodeName=$node NodeAddr=127.0.0.1/; s/ UpTime=.*//" <<< "$node_line")
cat > "$SLURM_CONF" << EOF
# Generated by tests/jobs/slurm_test.sh: a one-node test cluster, everything under $tmp.
ClusterName=electratest$$
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SrunPortRange=$((base + 2))-$((base + 51))
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$munge_socket,cred_expire=5
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
MailProg=/bin/true
KillWait=30
$node_line State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# srun reads the plugins from slurm.conf's PluginDir; the recipes need PMIx.
if srun --mpi=list 2>&1 | grep -qw pmix; then
  sed -i 's/^MpiDefault=none$/MpiDefault=pmix/' "$SLURM_CONF"
else
  skip "this Slurm has no PMIx plugin (srun --mpi=list: $(srun --mpi=list 2>&1 | tr '\n' ' ')); the recipes need one"
fi

# --- the daemons -----------------------------------------------------------------------------------
slurmctld -D -f "$SLURM_CONF" > "$tmp/log/slurmctld.stderr.log" 2>&1 &
ctld_pid=$!
slurmd -D -f "$SLURM_CONF" -N "$node" > "$tmp/log/slurmd.stderr.log" 2>&1 &
slurmd_pid=$!
say "cluster in $tmp: node $node ($node_line), ports $base-$((base + 51)), slurmctld $ctld_pid, slurmd $slurmd_pid"
state=
for _ in $(seq 60); do
  kill -0 "$ctld_pid" 2> /dev/null || skip "slurmctld exited"
  kill -0 "$slurmd_pid" 2> /dev/null || skip "slurmd exited"
  state=$(sinfo -h -n "$node" -o %t 2> /dev/null)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || skip "the node did not become idle within 30 s (state '$state')"
srun -n 2 true > "$tmp/log/srun-check.log" 2>&1 || skip "srun -n 2 true failed: $(cat "$tmp/log/srun-check.log")"
say "cluster up: $(sinfo -h -o '%P %D %t %c CPUs')"

# --- helpers ---------------------------------------------------------------------------------------
job_field() { scontrol show job "$1" 2> /dev/null | grep -o "\b$2=[^ ]*" | head -1 | cut -d= -f2-; }
# Waits until job $1 has ended (COMPLETED, FAILED, CANCELLED, ...) and prints its final state.
wait_job() {
  local deadline=$((SECONDS + $2)) state
  while [ $SECONDS -lt $deadline ]; do
    state=$(job_field "$1" JobState)
    case "$state" in
      PENDING | CONFIGURING | RUNNING | COMPLETING | REQUEUED | REQUEUE_HOLD | REQUEUE_FED | RESIZING | SUSPENDED | "") ;;
      *) echo "$state"; return 0 ;;
    esac
    sleep 0.5
  done
  echo TIMEOUT
}

# --- 0. corpus, vocabulary, shards (preprocess.sbatch) ----------------------------------------------
data=$tmp/data
make_corpus "$data/corpus" || fail "corpus generation failed"
"$bin/electra-vocab" --input "$data/corpus" --vocab-size 120 --output "$data/vocab.txt" > "$tmp/log/vocab.log" 2>&1 ||
  fail "electra-vocab failed: $(tail -5 "$tmp/log/vocab.log")"
cd "$root" || fail "cd $root"
export ELECTRA_BIN=$bin OMP_NUM_THREADS=1
unset ELECTRA_SKIP_SLURM_CHECK
job=$(INPUT=$data/corpus VOCAB=$data/vocab.txt OUTPUT=$data/shards MAX_SEQ_LENGTH=32 \
  sbatch --parsable --ntasks-per-node=2 --cpus-per-task=1 --time=5 --output="$tmp/preprocess.out" \
  jobs/slurm/preprocess.sbatch) || fail "sbatch preprocess.sbatch failed"
state=$(wait_job "$job" 120)
[ "$state" = COMPLETED ] || fail "preprocess job $job ended $state (exit $(job_field "$job" ExitCode))"
grep -q "running: srun --mpi=pmix" "$tmp/preprocess.out" || fail "preprocess.sbatch did not print an srun --mpi=pmix line"
[ -f "$data/shards/manifest.json" ] || fail "no manifest.json after preprocess.sbatch"
[ "$(ls "$data"/shards/*.h5 | wc -l)" -ge 2 ] || fail "preprocess on 2 tasks wrote fewer than 2 shards"
say "0. preprocess.sbatch: job $job COMPLETED, $(ls "$data"/shards/*.h5 | wc -l) shards"

# 0r. What a killed preprocessing attempt leaves (the unfinished-run mark, a shard, no manifest) is
# refused on a first start; the same job requeued (SLURM_RESTART_COUNT 1, as after a preemption) replaces it.
left=$data/shards_left
mkdir -p "$left" && touch "$left/.electra-preprocess.lock" && cp "$data/shards/shard-r0000-00000.h5" "$left/shard-r0000-00009.h5" ||
  fail "cannot make $left"
job=$(INPUT=$data/corpus VOCAB=$data/vocab.txt OUTPUT=$left MAX_SEQ_LENGTH=32 \
  sbatch --parsable --ntasks-per-node=2 --cpus-per-task=1 --time=5 --output="$tmp/preprocess_left.out" \
  jobs/slurm/preprocess.sbatch) || fail "sbatch preprocess.sbatch failed"
state=$(wait_job "$job" 120)
[ "$state" = FAILED ] || fail "preprocess job $job into an unfinished run's output ended $state, expected FAILED"
grep -q "did not finish" "$tmp/preprocess_left.out" || fail "job $job: the refusal does not name the unfinished run"
scontrol requeue "$job" || fail "scontrol requeue $job failed (preprocess.sbatch must allow requeueing)"
state=$(wait_job "$job" 120)
[ "$state" = COMPLETED ] || fail "requeued preprocess job $job ended $state (exit $(job_field "$job" ExitCode))"
grep -q "(restart 1)" "$tmp/preprocess_left.out" || fail "job $job: no second start (restart 1) in the appended output"
grep -q "replacing its files (--force)" "$tmp/preprocess_left.out" || fail "job $job: the restart did not pass --force"
[ -f "$left/manifest.json" ] && [ ! -e "$left/.electra-preprocess.lock" ] && [ ! -e "$left/shard-r0000-00009.h5" ] ||
  fail "job $job: $left is not a finished output: $(ls -A "$left" | tr '\n' ' ')"
say "0r. preprocess.sbatch into an unfinished run's output: job $job FAILED, requeued, COMPLETED (replaced it)"

# --- training jobs ---------------------------------------------------------------------------------
# The small-model settings of tests/e2e/train_e2e_test.cpp, as script arguments; train.steps and
# checkpoint_every through EXTRA_ARGS (both ways of passing arguments are used).
model_args=("${small_model_args[@]}")
submit_train() {  # run_dir output_file steps: prints the job id
  DATA=$data/shards RUN_DIR=$1 CONFIG=$root/jobs/configs/tiny.json \
    EXTRA_ARGS="--set train.steps=$3 --set train.checkpoint_every=100" \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=10 \
    --output="$2" jobs/slurm/pretrain.sbatch "${model_args[@]}"
}

# a0. settings the script checks itself: refused (exit 2) before anything runs
for setting in THREADS=0 MAX_REQUEUES=many; do
  # The command substitution's subshell keeps the export to this job (sbatch passes the environment on).
  job=$(export "${setting?}"; submit_train "$tmp/run_bad" "$tmp/train_bad.out" 10) || fail "sbatch pretrain.sbatch failed"
  state=$(wait_job "$job" 60)
  [ "$state" = FAILED ] && [ "$(job_field "$job" ExitCode)" = 2:0 ] ||
    fail "$setting: job $job ended $state (exit $(job_field "$job" ExitCode)), expected FAILED with exit 2"
  grep -q "error: ${setting%%=*} must be an integer" "$tmp/train_bad.out" || fail "$setting: not named in the output"
  [ ! -e "$tmp/run_bad" ] || fail "$setting: $tmp/run_bad was created"
done
say "a0. THREADS=0 and MAX_REQUEUES=many: FAILED with exit 2 naming them, nothing written"
# LAUNCHER=mpirun takes the task count from SLURM_NTASKS: missing or 0, it is named (exit 2), not bash's
# "parameter null or not set" (exit 1) or mpirun -np 0. Run directly, outside a job.
for script in pretrain preprocess; do
  for tasks in unset 0; do
    env $([ $tasks = unset ] && echo -u SLURM_NTASKS || echo SLURM_NTASKS=0) SLURM_JOB_ID=1 DATA="$tmp/shards" \
      RUN_DIR="$tmp/run_bad" INPUT="$tmp/corpus" VOCAB="$tmp/vocab.txt" OUTPUT="$tmp/out_bad" LAUNCHER=mpirun \
      bash "$root/jobs/slurm/$script.sbatch" > "$tmp/ntasks.out" 2>&1
    code=$?
    [ $code = 2 ] || fail "$script.sbatch, LAUNCHER=mpirun, SLURM_NTASKS $tasks: exit $code, expected 2"
    grep -q "needs SLURM_NTASKS" "$tmp/ntasks.out" || fail "$script.sbatch: SLURM_NTASKS not named: $(cat "$tmp/ntasks.out")"
    [ ! -e "$tmp/run_bad" ] && [ ! -e "$tmp/out_bad" ] || fail "$script.sbatch with SLURM_NTASKS $tasks wrote its output"
  done
done
say "a0. LAUNCHER=mpirun without SLURM_NTASKS (or 0): exit 2 naming it, nothing written"

# a. uninterrupted
run_a=$tmp/run_a
job_a=$(submit_train "$run_a" "$tmp/train_a.out" "$steps") || fail "sbatch pretrain.sbatch failed"
state=$(wait_job "$job_a" 180)
[ "$state" = COMPLETED ] || fail "run a (job $job_a) ended $state (exit $(job_field "$job_a" ExitCode))"
grep -q "running: srun --mpi=pmix" "$tmp/train_a.out" || fail "pretrain.sbatch did not print an srun --mpi=pmix line"
grep -q "rank 1 of 2" "$run_a/logs/rank_1.log" || fail "run a: rank 1 is not in a world of 2 ranks"
[ "$(metric_lines "$run_a")" = "$steps" ] || fail "run a: $(metric_lines "$run_a") metrics lines, expected $steps"
say "a. job $job_a COMPLETED: $steps steps, final $(tail -1 "$run_a/metrics.jsonl" | grep -o '"loss":[^,]*')"

# b. SIGUSR1 to the batch shell mid-training -> checkpoint, exit 3, requeue, resume, finish
run_b=$tmp/run_b
job_b=$(submit_train "$run_b" "$tmp/train_b.out" "$steps") || fail "sbatch pretrain.sbatch failed"
deadline=$((SECONDS + 120))
until [ "$(metric_lines "$run_b")" -ge 20 ]; do
  [ $SECONDS -lt $deadline ] || fail "run b (job $job_b) did not reach step 20 (state $(job_field "$job_b" JobState))"
  sleep 0.1
done
scancel --batch --signal=USR1 "$job_b" || fail "scancel --batch --signal=USR1 $job_b failed"
say "b. job $job_b: sent SIGUSR1 to the batch shell at step $(metric_lines "$run_b")"
state=$(wait_job "$job_b" 240)
[ "$state" = COMPLETED ] || fail "run b (job $job_b) ended $state (exit $(job_field "$job_b" ExitCode))"
restarts=$(job_field "$job_b" Restarts)
[ "$restarts" = 1 ] || fail "run b (job $job_b) restarted $restarts times, expected 1 (requeued once)"
stop_line=$(grep -m1 "stopping at step" "$tmp/train_b.out") || fail "run b: no 'stopping at step' line"
# The ranks agree to stop when any of them has the signal: the line names those that had it by then.
grep -q "SIGUSR1" <<< "$stop_line" && ! grep -q "SIGTERM" <<< "$stop_line" ||
  fail "run b: the ranks did not stop because of the forwarded SIGUSR1: $stop_line"
stopped_at=$(grep -oE 'stopping at step [0-9]+' <<< "$stop_line" | grep -oE '[0-9]+$')
[ "$stopped_at" -lt "$steps" ] || fail "run b: stopped at $stopped_at, not before the end ($steps)"
grep -q "electra-train exited with 3" "$tmp/train_b.out" || fail "run b: the first run did not exit 3"
grep -q "requeued job $job_b" "$tmp/train_b.out" || fail "run b: the script did not requeue the job"
grep -q "(restart 1)" "$tmp/train_b.out" || fail "run b: no second start (restart 1) in the appended output"
grep -q "resumed from .*ckpt-0*$stopped_at.h5" "$tmp/train_b.out" || fail "run b: did not resume from step $stopped_at"
[ "$(grep -c "received SIGUSR1" "$tmp/train_b.out")" = 1 ] || fail "run b: the batch shell saw SIGUSR1 more than once"
[ "$(metric_lines "$run_b")" = "$steps" ] || fail "run b: $(metric_lines "$run_b") metrics lines, expected $steps"
diff <(trajectory "$run_a") <(trajectory "$run_b") > "$tmp/log/trajectory.diff" ||
  fail "run b's losses differ from run a's: $(head -20 "$tmp/log/trajectory.diff")"
final_a=$(tail -1 "$run_a/metrics.jsonl" | grep -o '"loss":[^,]*')
final_b=$(tail -1 "$run_b/metrics.jsonl" | grep -o '"loss":[^,]*')
[ -n "$final_a" ] && [ "$final_a" = "$final_b" ] || fail "final losses differ: a $final_a, b $final_b"
say "b. job $job_b: stopped at step $stopped_at, exit 3, requeued, resumed, COMPLETED; losses equal run a's at" \
  "all $steps steps (final $final_b)"

# c. a plain scancel ends the job for good (no requeue)
run_c=$tmp/run_c
job_c=$(submit_train "$run_c" "$tmp/train_c.out" 1000000) || fail "sbatch pretrain.sbatch failed"
deadline=$((SECONDS + 120))
until [ "$(metric_lines "$run_c")" -ge 5 ]; do
  [ $SECONDS -lt $deadline ] || fail "run c (job $job_c) did not reach step 5"
  sleep 0.1
done
scancel "$job_c" || fail "scancel $job_c failed"
state=$(wait_job "$job_c" 120)
[ "$state" = CANCELLED ] || fail "run c (job $job_c) ended $state after scancel, expected CANCELLED"
sleep 8  # longer than cred_expire + sched_interval: a requeued job would be pending or running again
state=$(job_field "$job_c" JobState)
[ "$state" = CANCELLED ] && [ "$(job_field "$job_c" Restarts)" = 0 ] ||
  fail "run c (job $job_c) came back after scancel: state $state, restarts $(job_field "$job_c" Restarts)"
say "c. job $job_c: scancel -> CANCELLED, not requeued"
say "PASSED"
