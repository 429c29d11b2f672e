#!/usr/bin/env bash
# Two hosts on one machine: network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2, interface
# emh0 in each, nothing in the root namespace), one rank per host, Open MPI over TCP only, so every gradient
# crosses the veth link (the hosts, the rsh agent and mpirun's options: tests/jobs/netns_hosts.sh).
#   0. electra-preprocess across the hosts: the same shards (rows, examples, tokens) as on one host;
#   a. electra-train across the hosts, stopped with a checkpoint (--stop-after, exit 3) and resumed:
#      the losses at every step equal, bit for bit, a 2-rank run on one host (shared memory), and the
#      training traffic went over the link;
#   b. electra-eval across the hosts gives the one-host numbers;
#   c. host b's link is cut mid-run (`ip link set emh0 down`): mpirun ends the job within $bound s with
#      a non-zero code, saying it lost communication with host b's daemon, and leaves no process on either
#      host; with the link back, --resume auto continues from the last checkpoint to the same losses;
#   d. host b's rank is killed (SIGKILL): mpirun ends the job within $bound s naming the rank, its host
#      and the signal; resumed, the same losses again.
# Open MPI notices a dead link between its daemons only through TCP keepalive; netns_hosts.sh's mpirun sets
# 1 s / 1 s / 3 probes (the default, 300 s idle then 9 probes 20 s apart, would leave an abort waiting
# many minutes on the unreachable daemon).
# Usage: tests/jobs/multihost_test.sh [BUILD_DIR]   (default $ELECTRA_BUILD_DIR, else build/)
# Exit 77 (skipped) where network namespaces cannot be made (no iproute2, no root / CAP_NET_ADMIN), or
# without mpirun or python3. Every namespace it made is deleted on exit, also on failure.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-${ELECTRA_BUILD_DIR:-$root/build}}
# shellcheck source=tests/jobs/common.sh
source "$root/tests/jobs/common.sh"
# shellcheck source=tests/jobs/netns_hosts.sh
source "$root/tests/jobs/netns_hosts.sh"
bin=$build/bin
steps=200 checkpoint_every=10 stop_after=60 cut_after=25
bound=30  # seconds from a cut link or a killed rank to mpirun's exit (measured here: 4-6 s)

test_name=multihost_test
for program in electra-train electra-preprocess electra-vocab electra-eval; do
  [ -x "$bin/$program" ] || { say "FAILED: $bin/$program is missing"; exit 1; }
done
netns_require
command -v python3 > /dev/null || { say "SKIPPED: python3 not found"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/electra-mh.XXXXXX") || exit 1
cleanup() {
  netns_hosts_cleanup
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # through cleanup

netns_reap_stale

train_args=(--config "$root/jobs/configs/tiny.json" --data "$tmp/shards" --resume auto "${small_model_args[@]}"
  --set "train.steps=$steps" --set "train.checkpoint_every=$checkpoint_every" --set train.threads=1
  --set train.step_timeout=20)

# same_eval A.json B.json: equal electra-eval numbers (timings and the model's path aside)
same_eval() {
  python3 - "$1" "$2" << 'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
skip = {"seconds", "tokens_per_s", "model"}
diff = [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
for k in diff: print(f"{k}: {a.get(k)} vs {b.get(k)}")
sys.exit(1 if diff else 0)
PY
}

# same_shards DIR_A DIR_B: manifests that list the same shards with the same rows and the same stats
same_shards() {
  python3 - "$1/manifest.json" "$2/manifest.json" << 'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda m: ([(s["file"], s["rank"], s["rows"]) for s in m["shards"]],
                 {k: v for k, v in m["stats"].items() if k != "seconds"}, m["vocab_hash"], m["total_rows"])
sys.exit(0 if key(a) == key(b) else 1)
PY
}

# start_multihost_train RUN_DIR LOG: electra-train across the hosts in the background (sets mpirun_pid)
start_multihost_train() {
  "${multihost[@]}" "$bin/electra-train" "${train_args[@]}" --output "$1" < /dev/null > "$2" 2>&1 &
  mpirun_pid=$!
}


# wait_for_end WHAT: waits for mpirun, at most $bound s from now; sets code and took (seconds)
wait_for_end() {
  local start=${EPOCHREALTIME//[.,]/} now
  while kill -0 "$mpirun_pid" 2> /dev/null; do
    now=${EPOCHREALTIME//[.,]/}
    [ $((now - start)) -lt $((bound * 1000000)) ] || fail "$1: mpirun still running $bound s later"
    sleep 0.1
  done
  wait "$mpirun_pid"
  code=$?
  mpirun_pid=
  now=${EPOCHREALTIME//[.,]/}
  took=$(((now - start) / 1000000)).$((((now - start) / 100000) % 10))
}

# no_processes_left WHAT: nothing of the job runs on either host (after up to 10 s)
no_processes_left() {
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=$(ip netns pids "$ns_a"; ip netns pids "$ns_b")
    [ -n "$left" ] || return 0
    [ $SECONDS -lt $deadline ] || fail "$1: processes left on the hosts: $(for p in $left; do tr '\0' ' ' < "/proc/$p/cmdline" 2> /dev/null | cut -c1-80; echo; done)"
    sleep 0.2
  done
}

# resume_and_compare RUN_DIR TAG: runs RUN_DIR again across the hosts; it must resume from a checkpoint
# (its step: resumed) and end with the reference run's losses
resume_and_compare() {
  "${multihost[@]}" "$bin/electra-train" "${train_args[@]}" --output "$1" < /dev/null > "$tmp/$2_resume.log" 2>&1
  code=$?
  [ $code = 0 ] || fail "$2: the resumed run exited $code"
  resumed=$(grep -oE 'resumed from .*ckpt-[0-9]+\.h5' "$tmp/$2_resume.log" | grep -oE '[0-9]+\.h5$' | grep -oE '^[0-9]+') ||
    fail "$2: the run did not resume from a checkpoint"
  resumed=$((10#$resumed))
  diff <(trajectory "$tmp/run_ref") <(trajectory "$1") > "$tmp/$2_trajectory.log" ||
    fail "$2: the losses after resuming differ from the one-host run's"
}

make_hosts
say "hosts: $ns_a ($subnet.1) and $ns_b ($subnet.2), veth $ifname"
printf -v shown ' %q' "${multihost[@]}"
say "mpirun across the hosts:$shown"

# --- 0. preprocess ---------------------------------------------------------------------------------------
make_corpus "$tmp/corpus" || fail "corpus generation failed"
"$bin/electra-vocab" --input "$tmp/corpus" --vocab-size 120 --output "$tmp/vocab.txt" > "$tmp/vocab.log" 2>&1 ||
  fail "electra-vocab failed"
pre_args=(--input "$tmp/corpus" --vocab "$tmp/vocab.txt" --max-seq-length 32)
"${multihost[@]}" "$bin/electra-preprocess" "${pre_args[@]}" --output "$tmp/shards" < /dev/null > "$tmp/preprocess.log" 2>&1 ||
  fail "electra-preprocess across the hosts failed"
"${onehost[@]}" "$bin/electra-preprocess" "${pre_args[@]}" --output "$tmp/shards_1" < /dev/null > "$tmp/preprocess_1.log" 2>&1 ||
  fail "electra-preprocess on one host failed"
same_shards "$tmp/shards" "$tmp/shards_1" || fail "0: the shards made across the hosts differ from one host's"
say "0. electra-preprocess across the hosts: the one-host shards ($(grep -c '"rank"' "$tmp/shards/manifest.json") shards)"

# --- a. train, stop, resume -------------------------------------------------------------------------------
"${onehost[@]}" "$bin/electra-train" "${train_args[@]}" --output "$tmp/run_ref" < /dev/null > "$tmp/train_ref.log" 2>&1 ||
  fail "the one-host reference run failed"
[ "$(metric_lines "$tmp/run_ref")" = $steps ] || fail "the reference run wrote $(metric_lines "$tmp/run_ref") metrics lines, expected $steps"
params=$(grep -oE 'model: [0-9]+ parameters' "$tmp/train_ref.log" | grep -oE '[0-9]+') || fail "no parameter count in the log"
sent_before=$(tx_bytes "$ns_b")
start=$SECONDS
"${multihost[@]}" "$bin/electra-train" "${train_args[@]}" --output "$tmp/run_mh" --stop-after $stop_after < /dev/null > "$tmp/train_mh1.log" 2>&1
code=$?
[ $code = 3 ] || fail "a: the run across the hosts with --stop-after $stop_after exited $code, expected 3"
grep -q "ckpt-0*$stop_after.h5" "$tmp/train_mh1.log" || fail "a: no checkpoint at step $stop_after"
"${multihost[@]}" "$bin/electra-train" "${train_args[@]}" --output "$tmp/run_mh" < /dev/null > "$tmp/train_mh2.log" 2>&1
code=$?
[ $code = 0 ] || fail "a: the resumed run across the hosts exited $code"
grep -q "resumed from .*ckpt-0*$stop_after.h5" "$tmp/train_mh2.log" || fail "a: did not resume from step $stop_after"
sent=$(($(tx_bytes "$ns_b") - sent_before))
diff <(trajectory "$tmp/run_ref") <(trajectory "$tmp/run_mh") > "$tmp/trajectory.log" ||
  fail "a: the losses across the hosts differ from the one-host run's"
# Host b's rank sends at least half its gradient (fp32) per step in any 2-rank allreduce.
[ "$sent" -ge $((steps * params * 2)) ] ||
  fail "a: host b sent $sent bytes on $ifname, less than half the gradient per step ($((steps * params * 2)))"
say "a. train across the hosts: stop at $stop_after (exit 3), resume, the one-host losses bit for bit at all $steps steps ($((SECONDS - start)) s; host b sent $((sent / 1024)) KiB on $ifname)"

# --- b. eval ----------------------------------------------------------------------------------------------
eval_args=(--data "$tmp/shards" --max-batches 4 --batch-size 24 --json)
"${multihost[@]}" "$bin/electra-eval" --checkpoint "$tmp/run_mh" "${eval_args[@]}" < /dev/null > "$tmp/eval_mh.json" 2> "$tmp/eval_mh.log" ||
  fail "b: electra-eval across the hosts failed"
"${onehost[@]}" "$bin/electra-eval" --checkpoint "$tmp/run_ref" "${eval_args[@]}" < /dev/null > "$tmp/eval_1.json" 2> "$tmp/eval_1.log" ||
  fail "b: electra-eval on one host failed"
same_eval "$tmp/eval_mh.json" "$tmp/eval_1.json" > "$tmp/eval_diff.log" || fail "b: electra-eval across the hosts differs from one host's"
say "b. electra-eval across the hosts: the one-host numbers"

# --- c. cut host b's link ---------------------------------------------------------------------------------
start_multihost_train "$tmp/run_cut" "$tmp/train_cut.log"
wait_for_metrics "$tmp/run_cut" $cut_after "$mpirun_pid" "$tmp/run_cut"
ip -n "$ns_b" link set $ifname down || fail "c: could not take $ifname down"
at=$(metric_lines "$tmp/run_cut")
wait_for_end "c: link cut at step $at"
case $code in 0 | 3) fail "c: mpirun exited $code after the link was cut" ;; esac
[ "$(metric_lines "$tmp/run_cut")" -lt $steps ] || fail "c: the run finished before the link was cut"
grep -q "lost communication with a remote daemon" "$tmp/train_cut.log" ||
  fail "c: no message about the lost host in mpirun's output"
no_processes_left "c"
say "c. link cut at step $at: mpirun exited $code after $took s (\"ORTE has lost communication with a remote daemon\")"
ip -n "$ns_b" link set $ifname up || fail "c: could not bring $ifname up again"
resume_and_compare "$tmp/run_cut" cut
[ "$resumed" -le "$at" ] || fail "c: resumed from step $resumed, after the cut at step $at"
say "c. link back up: resumed from step $resumed, the one-host losses bit for bit at all $steps steps"

# --- d. kill host b's rank -------------------------------------------------------------------------------
start_multihost_train "$tmp/run_kill" "$tmp/train_kill.log"
wait_for_metrics "$tmp/run_kill" $cut_after "$mpirun_pid" "$tmp/run_kill"
rank_pid=
for pid in $(ip netns pids "$ns_b"); do
  [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = electra-train ] && rank_pid=$pid
done
[ -n "$rank_pid" ] || fail "d: no electra-train process in host b's namespace"
kill -KILL "$rank_pid" || fail "d: kill -KILL $rank_pid failed"
at=$(metric_lines "$tmp/run_kill")
wait_for_end "d: rank killed at step $at"
case $code in 0 | 3) fail "d: mpirun exited $code after host b's rank was killed" ;; esac
grep -qE "process rank 1 with PID [0-9]+ on node $subnet.2 exited on signal 9" "$tmp/train_kill.log" ||
  fail "d: mpirun did not name the killed rank and its host"
no_processes_left "d"
say "d. host b's rank killed at step $at: mpirun exited $code after $took s (\"rank 1 ... on node $subnet.2 exited on signal 9\")"
resume_and_compare "$tmp/run_kill" kill
say "d. resumed from step $resumed, the one-host losses bit for bit at all $steps steps"
say "PASSED"
