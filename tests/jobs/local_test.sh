#!/usr/bin/env bash
# The one-machine recipes, as users run them:
#   0. jobs/local/preprocess.sh makes shards on 2 ranks from a small generated corpus;
#   a. jobs/local/pretrain.sh trains a very small model to N steps on 2 ranks;
#   b. the same, but the script gets SIGTERM mid-training: it passes SIGUSR1 to mpirun, which forwards
#      it to the ranks; they checkpoint and the script exits 3; running it again resumes and finishes,
#      with the loss at every step equal to run (a)'s, bit for bit;
#   c. a missing DATA, and a bad NP or THREADS (pretrain.sh, preprocess.sh), are reported with exit code 2;
#   d. a hung rank is aborted by the watchdog: exit 5, not reported as a stop with a checkpoint;
#   e. Ctrl-C or a closed terminal (SIGINT or SIGHUP to the script's process group, as a terminal sends
#      them) stops the ranks with a checkpoint (exit 3), not mpirun's own termination (exit 1);
#   f. jobs/local/pretrain_default.sh (the README's main job) on Ctrl-C while training: a checkpoint, the
#      data kept, exit 130;
#   g. pretrain_default.sh with a bad NP, STEPS, VOCAB_SIZE or HOLDOUT_EVERY: exit 2 naming it, nothing written.
# Usage: tests/jobs/local_test.sh [BUILD_DIR]   (default $ELECTRA_BUILD_DIR, else build/)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-${ELECTRA_BUILD_DIR:-$root/build}}
# shellcheck source=tests/jobs/common.sh
source "$root/tests/jobs/common.sh"
export ELECTRA_BIN=$build/bin
steps=300

test_name=local_test
for program in electra-train electra-preprocess electra-vocab; do
  [ -x "$ELECTRA_BIN/$program" ] || { say "FAILED: $ELECTRA_BIN/$program is missing"; exit 1; }
done
command -v mpirun > /dev/null || { say "SKIPPED: mpirun not found"; exit 77; }
command -v python3 > /dev/null || { say "SKIPPED: python3 not found"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/electra-local.XXXXXX") || exit 1
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -USR1 "$pid" 2> /dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

make_corpus "$tmp/corpus" || fail "corpus generation failed"
"$ELECTRA_BIN/electra-vocab" --input "$tmp/corpus" --vocab-size 120 --output "$tmp/vocab.txt" > "$tmp/vocab.log" 2>&1 ||
  fail "electra-vocab failed"

# 0. shards
INPUT=$tmp/corpus VOCAB=$tmp/vocab.txt OUTPUT=$tmp/shards NP=2 MAX_SEQ_LENGTH=32 \
  "$root/jobs/local/preprocess.sh" > "$tmp/preprocess.log" 2>&1 || fail "preprocess.sh failed"
grep -q "running: mpirun -np 2" "$tmp/preprocess.log" || fail "preprocess.sh did not print its mpirun line"
[ -f "$tmp/shards/manifest.json" ] || fail "no manifest.json after preprocess.sh"
say "0. preprocess.sh: $(ls "$tmp"/shards/*.h5 | wc -l) shards"

args=("${small_model_args[@]}" --set "train.steps=$steps" --set train.checkpoint_every=100)
# The step of LOG's "stopping at step" line, whose ranks got pretrain.sh's forwarded SIGUSR1. In $(...) a
# failure ends only the subshell, and says so on stderr: call it as `step=$(stop_step LOG LABEL) || exit 1`.
stop_step() {  # log label
  local line
  line=$(grep -m1 "stopping at step" "$1") || fail "$2: no 'stopping at step' line in $1" >&2
  grep -q SIGUSR1 <<< "$line" || fail "$2: the ranks did not get the forwarded SIGUSR1: $line" >&2
  grep -oE 'stopping at step [0-9]+' <<< "$line" | grep -oE '[0-9]+$'
}
checkpoint_of() { printf '%s/checkpoints/ckpt-%08d.h5' "$1" "$2"; }  # run_dir step
pretrain() {  # run_dir log: runs (exec) the script in the foreground of the calling (sub)shell
  exec env DATA="$tmp/shards" RUN_DIR="$1" NP=2 THREADS=1 CONFIG="$root/jobs/configs/tiny.json" \
    "$root/jobs/local/pretrain.sh" "${args[@]}" > "$2" 2>&1
}

# a. straight
(pretrain "$tmp/run_a" "$tmp/train_a.log")
code=$?
[ $code = 0 ] || fail "run a: pretrain.sh exited $code"
[ "$(metric_lines "$tmp/run_a")" = $steps ] || fail "run a: $(metric_lines "$tmp/run_a") metrics lines, expected $steps"
say "a. pretrain.sh: $steps steps"

# b. SIGTERM to the script mid-training, then run it again
(pretrain "$tmp/run_b" "$tmp/train_b1.log") &
pid=$!  # the script's pid: the subshell execs it
pids+=("$pid")
wait_for_metrics "$tmp/run_b" 20 "$pid" "run b"
kill -TERM "$pid" || fail "kill -TERM $pid failed"
wait "$pid"
code=$?
pids=()
[ $code = 3 ] || fail "run b: pretrain.sh exited $code after SIGTERM, expected 3"
stopped_at=$(stop_step "$tmp/train_b1.log" "run b") || exit 1
[ "$stopped_at" -lt $steps ] || fail "run b stopped at $stopped_at, not before the end"
(pretrain "$tmp/run_b" "$tmp/train_b2.log")
code=$?
[ $code = 0 ] || fail "run b: pretrain.sh exited $code when run again"
grep -q "resumed from .*ckpt-0*$stopped_at.h5" "$tmp/train_b2.log" || fail "run b: did not resume from step $stopped_at"
diff <(trajectory "$tmp/run_a") <(trajectory "$tmp/run_b") > "$tmp/trajectory.log" ||
  fail "run b's losses differ from run a's"
say "b. pretrain.sh: SIGTERM -> stopped at step $stopped_at (exit 3), resumed, equal to run a at all $steps steps"

# c. bad input
env -u DATA "$root/jobs/local/pretrain.sh" > "$tmp/bad.log" 2>&1
code=$?
[ $code = 2 ] || fail "pretrain.sh without DATA exited $code, expected 2"
# A bad NP or THREADS is named (NP=0 would be mpirun's "all slots"), before anything is written.
for setting in NP=0 NP=two THREADS=0 MAX_SEQ_LENGTH=4 MAX_SEQ_LENGTH=long; do
  for script in pretrain preprocess; do
    [ "$script/$setting" != preprocess/THREADS=0 ] || continue
    [ "$script/${setting%%=*}" != pretrain/MAX_SEQ_LENGTH ] || continue
    env DATA="$tmp/shards" RUN_DIR="$tmp/run_c" INPUT="$tmp/corpus" VOCAB="$tmp/vocab.txt" OUTPUT="$tmp/shards_c" \
      "$setting" "$root/jobs/local/$script.sh" > "$tmp/bad.log" 2>&1
    code=$?
    [ $code = 2 ] || fail "$script.sh with $setting exited $code, expected 2 (see $tmp/bad.log)"
    grep -q "^${setting%%=*} must be an integer >= " "$tmp/bad.log" || fail "$script.sh: $setting not named: $(cat "$tmp/bad.log")"
    [ ! -e "$tmp/run_c" ] && [ ! -e "$tmp/shards_c" ] || fail "$script.sh with $setting wrote its output"
  done
done
# Flags the environment sets are refused as arguments, naming the variable; --resume replaces the script's
# --resume auto (electra-train takes each once: "--resume none" failed with CLI11's "At Most 1").
for flag in --output --data=x; do
  env DATA="$tmp/shards" RUN_DIR="$tmp/run_c" "$root/jobs/local/pretrain.sh" "$flag" x > "$tmp/bad.log" 2>&1
  code=$?
  [ $code = 2 ] || fail "pretrain.sh $flag exited $code, expected 2 (see $tmp/bad.log)"
  grep -q "set $([ "$flag" = --output ] && echo RUN_DIR || echo DATA) instead" "$tmp/bad.log" ||
    fail "pretrain.sh $flag: the variable is not named: $(cat "$tmp/bad.log")"
  [ ! -e "$tmp/run_c" ] || fail "pretrain.sh $flag wrote its output"
done
env DATA="$tmp/shards" RUN_DIR="$tmp/run_c" NP=1 THREADS=1 CONFIG="$root/jobs/configs/tiny.json" \
  "$root/jobs/local/pretrain.sh" --resume none --set train.steps=1 --set data.seq_length=32 \
  --set model.generator.num_layers=1 > "$tmp/resume_none.log" 2>&1
code=$?
[ $code = 0 ] || fail "pretrain.sh --resume none exited $code, expected 0: $(grep -m3 error "$tmp/resume_none.log")"
rm -rf "$tmp/run_c"
for setting in PACK=yes BLANKS_SEPARATE_DOCS=no; do
  env INPUT="$tmp/corpus" VOCAB="$tmp/vocab.txt" OUTPUT="$tmp/shards_c" "$setting" "$root/jobs/local/preprocess.sh" \
    > "$tmp/bad.log" 2>&1
  code=$?
  [ $code = 2 ] || fail "preprocess.sh with $setting exited $code, expected 2 (see $tmp/bad.log)"
  grep -q "^${setting%%=*} must be true or false" "$tmp/bad.log" || fail "preprocess.sh: $setting not named"
  [ ! -e "$tmp/shards_c" ] || fail "preprocess.sh with $setting wrote its output"
done
say "c. pretrain.sh without DATA, with NP=0, NP=two or THREADS=0, and preprocess.sh with NP=0 or NP=two: exit 2;" \
  "--output and --data as arguments: exit 2 naming RUN_DIR and DATA; --resume none replaces --resume auto"

# d. a hung rank: the watchdog aborts the job with its own code (5), which the script does not report as a
# stop with a checkpoint
(exec env DATA="$tmp/shards" RUN_DIR="$tmp/run_d" NP=2 THREADS=1 CONFIG="$root/jobs/configs/tiny.json" \
  "$root/jobs/local/pretrain.sh" "${small_model_args[@]}" --set train.steps=100 --set debug.hang_step=2 \
  --set debug.hang_rank=0 --set train.step_timeout=3 > "$tmp/train_d.log" 2>&1)
code=$?
[ $code = 5 ] || fail "run d: pretrain.sh exited $code after a hang, expected 5 (the watchdog)"
grep -q "the watchdog aborted a hung step" "$tmp/train_d.log" || fail "run d: no watchdog line from pretrain.sh"
! grep -q "stopped with a checkpoint" "$tmp/train_d.log" || fail "run d: a hang was reported as a stop"
say "d. pretrain.sh with a hung rank: exit 5 (watchdog)"

# Runs a command as a terminal's foreground job would: in a process group of its own, with SIGINT's default
# action (a background job of this script would have SIGINT ignored). Start it with `&`: the subshell execs,
# so $! is the group's id, and signals for the terminal go to -$!.
foreground_job() {
  exec python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setpgid(0, 0)
os.execvp(sys.argv[1], sys.argv[1:])' "$@"
}

# e. Ctrl-C and a closed terminal: SIGINT or SIGHUP to the script's process group, as a terminal sends them.
for signal in INT HUP; do
  foreground_job env DATA="$tmp/shards" RUN_DIR="$tmp/run_e$signal" NP=2 THREADS=1 \
    CONFIG="$root/jobs/configs/tiny.json" "$root/jobs/local/pretrain.sh" "${args[@]}" > "$tmp/train_e$signal.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_for_metrics "$tmp/run_e$signal" 20 "$pid" "run e ($signal)"
  kill "-$signal" -- "-$pid" || fail "kill -$signal -$pid failed"
  wait "$pid"
  code=$?
  pids=()
  [ $code = 3 ] || fail "run e: pretrain.sh exited $code after SIG$signal, expected 3 (see $tmp/train_e$signal.log)"
  stopped_at=$(stop_step "$tmp/train_e$signal.log" "run e ($signal)") || exit 1
  [ -f "$(checkpoint_of "$tmp/run_e$signal" "$stopped_at")" ] || fail "run e: no checkpoint of step $stopped_at after SIG$signal"
  say "e. pretrain.sh: SIG$signal to its process group -> stopped at step $stopped_at with a checkpoint (exit 3)"
done

# e2. A second Ctrl-C after the ranks have stopped with their checkpoint (mpirun still finishing) is not
# passed on: a SIGTERM then can crash Open MPI 4.1's mpirun (exit 139 instead of the ranks' 3). A fake mpirun
# plays that moment: it "trains" until SIGUSR1, then finishes for a few seconds with an exited rank not yet
# reaped (a zombie child, as mpirun's ranks are then: counted as running, it let the SIGTERM through), exits
# 3, and on a SIGTERM while finishing exits 139 as the crash did.
mkdir -p "$tmp/fake_mpirun"
cat > "$tmp/fake_mpirun/mpirun" << 'EOF'
#!/bin/bash
finishing=0
trap 'finishing=1' USR1
trap '[ $finishing = 1 ] && exit 139; exit 1' TERM
fifo=$(mktemp -u "${TMPDIR:-/tmp}/fake-mpirun.XXXXXX") && mkfifo "$fifo" && exec 3<> "$fifo" && rm -f "$fifo"
touch "$FAKE_MPIRUN_STARTED"
until [ $finishing = 1 ]; do read -r -t 0.1 -u 3 || true; done
# 4 s of shutdown with a child that has exited and is not reaped.
exec perl -e '$SIG{TERM} = sub { exit 139 }; exit 0 if fork() == 0; select(undef, undef, undef, 4); exit 3'
EOF
chmod +x "$tmp/fake_mpirun/mpirun"
foreground_job env PATH="$tmp/fake_mpirun:$PATH" FAKE_MPIRUN_STARTED="$tmp/fake_started" DATA="$tmp/shards" \
  RUN_DIR="$tmp/run_e2" "$root/jobs/local/pretrain.sh" > "$tmp/train_e2.log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do [ -e "$tmp/fake_started" ] && break; sleep 0.1; done
[ -e "$tmp/fake_started" ] || fail "run e2: the fake mpirun did not start (see $tmp/train_e2.log)"
kill -INT -- "-$pid" && sleep 1 && kill -INT -- "-$pid" || fail "kill -INT -$pid failed"
wait "$pid"
code=$?
pids=()
[ $code = 3 ] || fail "run e2: pretrain.sh exited $code after a second Ctrl-C while mpirun finished, expected 3 (see $tmp/train_e2.log)"
grep -q "the ranks have already stopped" "$tmp/train_e2.log" || fail "run e2: not said: $(cat "$tmp/train_e2.log")"
say "e2. pretrain.sh: a second Ctrl-C once the ranks have stopped is not passed to mpirun (exit 3)"

# f. The README's main job, jobs/local/pretrain_default.sh, on Ctrl-C while it trains: the ranks stop with a
# checkpoint (its training goes through pretrain.sh), the data stays, and the script says how to go on (130).
foreground_job env CORPUS="$tmp/corpus" WORK="$tmp/work_f" RUN="$tmp/run_f" VOCAB_SIZE=120 HOLDOUT_EVERY=2 \
  STEPS=100000 NP=2 "$root/jobs/local/pretrain_default.sh" > "$tmp/train_f.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_for_metrics "$tmp/run_f" 2 "$pid" "run f (see $tmp/train_f.log)"  # tiny.json logs every 10 steps
kill -INT -- "-$pid" || fail "kill -INT -$pid failed"
wait "$pid"
code=$?
pids=()
[ $code = 130 ] || fail "run f: pretrain_default.sh exited $code after Ctrl-C, expected 130 (see $tmp/train_f.log)"
grep -q "interrupted; run the same command again to continue" "$tmp/train_f.log" ||
  fail "run f: pretrain_default.sh did not say how to continue"
stopped_at=$(stop_step "$tmp/train_f.log" "run f") || exit 1
[ -f "$(checkpoint_of "$tmp/run_f" "$stopped_at")" ] || fail "run f: no checkpoint of step $stopped_at"
[ -f "$tmp/work_f/shards/manifest.json" ] || fail "run f: the shards were not kept"
say "f. pretrain_default.sh: Ctrl-C -> stopped at step $stopped_at with a checkpoint, data kept (exit 130)"

# g. pretrain_default.sh refuses bad settings by name before it writes anything (NP=0 would be mpirun's "all
# slots", STEPS=abc an arithmetic error).
for setting in NP=0 NP=two STEPS=abc STEPS=1 VOCAB_SIZE=5 HOLDOUT_EVERY=1; do
  env CORPUS="$tmp/corpus" WORK="$tmp/work_g" RUN="$tmp/run_g" "$setting" "$root/jobs/local/pretrain_default.sh" \
    > "$tmp/train_g.log" 2>&1
  code=$?
  [ $code = 2 ] || fail "run g: pretrain_default.sh with $setting exited $code, expected 2 (see $tmp/train_g.log)"
  grep -q "^${setting%%=*} must be an integer" "$tmp/train_g.log" || fail "run g: $setting not named: $(cat "$tmp/train_g.log")"
  [ ! -e "$tmp/work_g" ] && [ ! -e "$tmp/run_g" ] || fail "run g: $setting wrote $tmp/work_g or $tmp/run_g"
done
say "g. pretrain_default.sh: bad NP, STEPS, VOCAB_SIZE and HOLDOUT_EVERY refused by name (exit 2), nothing written"

# h. A WORK holding data this script did not make (no recipe.txt) is refused, not remade over: it used to
# remove WORK/shards (and whatever the user kept there) without --force.
mkdir -p "$tmp/work_h/shards"
echo "mine" > "$tmp/work_h/shards/NOTES.md"
env CORPUS="$tmp/corpus" WORK="$tmp/work_h" RUN="$tmp/run_h" "$root/jobs/local/pretrain_default.sh" > "$tmp/train_h.log" 2>&1
code=$?
[ $code = 2 ] || fail "run h: pretrain_default.sh on foreign data exited $code, expected 2 (see $tmp/train_h.log)"
grep -q "is not data this script made" "$tmp/train_h.log" || fail "run h: not said: $(cat "$tmp/train_h.log")"
[ "$(cat "$tmp/work_h/shards/NOTES.md")" = mine ] || fail "run h: the user's file in WORK/shards is gone"
[ ! -e "$tmp/run_h" ] || fail "run h: wrote $tmp/run_h"
say "h. pretrain_default.sh: data in WORK without recipe.txt refused (exit 2), left as it was"

# i. Another recipe (here VOCAB_SIZE) over the WORK and RUN of run f: the run of the earlier data is refused
# before the data it was made from is removed (the data went first, leaving WORK empty and nothing to run).
recipe_f=$(cat "$tmp/work_f/recipe.txt")
env CORPUS="$tmp/corpus" WORK="$tmp/work_f" RUN="$tmp/run_f" VOCAB_SIZE=130 HOLDOUT_EVERY=2 NP=2 \
  "$root/jobs/local/pretrain_default.sh" > "$tmp/train_i.log" 2>&1
code=$?
[ $code = 2 ] || fail "run i: pretrain_default.sh with another recipe exited $code, expected 2 (see $tmp/train_i.log)"
grep -q "holds a run made from other data" "$tmp/train_i.log" || fail "run i: not said: $(cat "$tmp/train_i.log")"
[ -f "$tmp/work_f/shards/manifest.json" ] && [ -f "$tmp/work_f/vocab.txt" ] ||
  fail "run i: the data of run f was removed before the refusal"
[ "$(cat "$tmp/work_f/recipe.txt")" = "$recipe_f" ] || fail "run i: WORK's recipe.txt was rewritten"
say "i. pretrain_default.sh: another recipe over an existing run refused (exit 2) before its data is touched"
say "PASSED"
