#!/usr/bin/env bash
# Two hosts on one machine: network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2, interface
# emh0 in each, nothing in the root namespace), one rank per host, Open MPI over TCP only:
#   mpirun runs in host a; it starts host b's daemon through a plm_rsh_agent that does what ssh would
#   (`ip netns exec HOST env -i ... sh -c COMMAND`, with host b's own TMPDIR); `--mca btl tcp,self` and
#   `btl_tcp_if_include emh0`, so every gradient crosses the veth link.
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
# Open MPI notices a dead link between its daemons only through TCP keepalive (default: 300 s idle, then
# 9 probes 20 s apart); without it an abort (the watchdog's, exit 5) waits on a message to the
# unreachable daemon for TCP's retransmission timeout, many minutes. The test sets 1 s / 1 s / 3 probes.
# Usage: tests/jobs/multihost_test.sh [BUILD_DIR]   (default $ELECTRA_BUILD_DIR, else build/)
# Exit 77 (skipped) where network namespaces cannot be made (no iproute2, no root / CAP_NET_ADMIN), or
# without mpirun or python3. Every namespace it made is deleted on exit, also on failure.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-${ELECTRA_BUILD_DIR:-$root/build}}
# shellcheck source=tests/jobs/common.sh
source "$root/tests/jobs/common.sh"
bin=$build/bin
steps=200 checkpoint_every=10 stop_after=60 cut_after=25
bound=30  # seconds from a cut link or a killed rank to mpirun's exit (measured here: 4-6 s)
subnet=10.77.0 ifname=emh0
ns_a=emh$$a ns_b=emh$$b  # unique per run: parallel runs do not clash

test_name=multihost_test
for program in electra-train electra-preprocess electra-vocab electra-eval; do
  [ -x "$bin/$program" ] || { say "FAILED: $bin/$program is missing"; exit 1; }
done
command -v mpirun > /dev/null || { say "SKIPPED: mpirun not found"; exit 77; }
command -v python3 > /dev/null || { say "SKIPPED: python3 not found"; exit 77; }
command -v ip > /dev/null || { say "SKIPPED: ip not found (Debian: iproute2; jobs/setup.sh installs it)"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/electra-mh.XXXXXX") || exit 1
made_ns=()
mpirun_pid=
cleanup() {
  local ns pid
  [ -z "$mpirun_pid" ] || kill -KILL "$mpirun_pid" 2> /dev/null
  # Whatever still runs inside our namespaces is ours (ranks, daemons, the agent's shells).
  for ns in "${made_ns[@]}"; do
    for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$pid" 2> /dev/null; done
  done
  [ -z "$mpirun_pid" ] || wait "$mpirun_pid" 2> /dev/null
  ip link delete "${ns_a}0" 2> /dev/null  # a veth left in the root namespace by a failed set-up
  for ns in "${made_ns[@]}"; do ip netns delete "$ns" 2> /dev/null || say "warning: could not delete netns $ns"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # through cleanup

# A run killed without its cleanup (SIGKILL, e.g. a CTest timeout) leaves its namespaces behind; those of
# runs whose process is gone are deleted here, with what still runs in them (this test's ranks and daemons).
for ns in $(ip netns list 2> /dev/null | grep -oE '^emh[0-9]+[ab]\b'); do
  pid=${ns#emh}
  pid=${pid%?}
  [ "$pid" = $$ ] || ! kill -0 "$pid" 2> /dev/null || continue
  for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
  ip netns delete "$ns" 2> /dev/null && say "deleted $ns, left by an earlier run"
done

# --- the hosts ------------------------------------------------------------------------------------------
# make_hosts: namespaces a and b, a veth pair between them named $ifname on both sides, loopback up.
make_hosts() {
  local err
  err=$(ip netns add "$ns_a" 2>&1) || { say "SKIPPED: cannot make a network namespace (ip netns add: $err)"; exit 77; }
  made_ns+=("$ns_a")
  ip netns add "$ns_b" || fail "ip netns add $ns_b failed"
  made_ns+=("$ns_b")
  ip netns exec "$ns_a" true || { say "SKIPPED: ip netns exec does not work here"; exit 77; }
  err=$(ip link add "${ns_a}0" type veth peer name "${ns_b}0" 2>&1) || { say "SKIPPED: cannot make a veth pair: $err"; exit 77; }
  local ns host=1
  for ns in "$ns_a" "$ns_b"; do
    { ip link set "${ns}0" netns "$ns" && ip -n "$ns" link set "${ns}0" name "$ifname" &&
      ip -n "$ns" addr add "$subnet.$host/24" dev "$ifname" && ip -n "$ns" link set lo up &&
      ip -n "$ns" link set "$ifname" up; } || fail "wiring $ns to the veth pair failed"
    host=$((host + 1))
  done
  mkdir -p "$tmp/host_a" "$tmp/host_b"
  # What ssh would do: run the command on the host, with a fresh environment and the host's own /tmp.
  cat > "$tmp/netns_agent.sh" << EOF
#!/bin/sh
# plm_rsh_agent for the test's hosts: netns_agent.sh [options] HOST COMMAND...
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host=\$1; shift
case "\$host" in
  $subnet.1) ns=$ns_a; t=$tmp/host_a ;;
  $subnet.2) ns=$ns_b; t=$tmp/host_b ;;
  *) echo "netns_agent.sh: unknown host \$host" >&2; exit 255 ;;
esac
exec ip netns exec "\$ns" env -i PATH="\$PATH" HOME="\${HOME:-/}" \${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="\$LD_LIBRARY_PATH"} TMPDIR="\$t" /bin/sh -c "\$*"
EOF
  chmod +x "$tmp/netns_agent.sh"
}

root_flag=()
[ "$(id -u)" -ne 0 ] || root_flag=(--allow-run-as-root)
# Two hosts, one rank each, TCP only over $ifname; mpirun itself runs in host a.
multihost=(ip netns exec "$ns_a" env TMPDIR="$tmp/host_a" mpirun "${root_flag[@]}" -np 2
  --host "$subnet.1:1,$subnet.2:1" --mca plm_rsh_agent "$tmp/netns_agent.sh" --mca plm_rsh_no_tree_spawn 1
  --mca btl "tcp,self" --mca btl_tcp_if_include "$ifname" --mca oob_tcp_if_include "$ifname"
  --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3
  -x OMP_NUM_THREADS=1 --bind-to none)
onehost=(mpirun "${root_flag[@]}" -np 2 -x OMP_NUM_THREADS=1 --bind-to none)
[ "$(nproc)" -ge 2 ] || onehost+=(--oversubscribe)

train_args=(--config "$root/jobs/configs/tiny.json" --data "$tmp/shards" --resume auto "${small_model_args[@]}"
  --set "train.steps=$steps" --set "train.checkpoint_every=$checkpoint_every" --set train.threads=1
  --set train.step_timeout=20)

# tx_bytes NS: bytes sent on $ifname in namespace NS
tx_bytes() { ip netns exec "$1" cat "/sys/class/net/$ifname/statistics/tx_bytes"; }

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

# wait_for_step RUN_DIR N: until metrics.jsonl has N lines (the run must still be going)
wait_for_step() {
  local deadline=$((SECONDS + 120))
  until [ "$(metric_lines "$1")" -ge "$2" ]; do
    kill -0 "$mpirun_pid" 2> /dev/null || fail "$1: the run ended before step $2"
    [ $SECONDS -lt $deadline ] || fail "$1: no step $2 within 120 s"
    sleep 0.02
  done
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
wait_for_step "$tmp/run_cut" $cut_after
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
wait_for_step "$tmp/run_kill" $cut_after
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
