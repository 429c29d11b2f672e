#!/usr/bin/env bash
# Scaling under finite bandwidth (issue 17; a benchmark a person runs, not a ctest test): electra-bench across
# two hosts, network namespaces joined by a veth pair (tests/jobs/netns_hosts.sh: one rank per host, Open MPI
# over TCP only), with the link shaped by `tc qdisc ... tbf` to each rate of $RATES_MBIT on both ends, with
# and without the overlapped allreduce (--no-overlap); for reference the same link unshaped and two ranks on
# one host (shared memory). One thread per rank.
#   Shaping: tbf only limits the rate. Its `latency` bounds the time a packet may wait in tbf's queue (the
#   queue's length); it adds no propagation delay. Delay needs netem, which the script tries and reports
#   (in a sandbox without the sch_netem module: "Specified qdisc kind is unknown"): no latency is modelled.
#   Per run it prints and keeps: the median step, the time in the reducer (allreduce_s: launches and progress
#   calls during backward, plus the wait), the wait after backward (the `allreduce` phase of --breakdown: the
#   exposed communication), the step minus the one-host step, backward (discriminator + generator), the bytes
#   host b sent per step, and the ideal: gradient bytes / bandwidth (fp32 gradients: 4 x parameters; a ring
#   allreduce sends 2(N-1)/N x bytes per rank, the bytes themselves for N = 2).
#   The reducer's MPI_Iallreduce (in place) runs Open MPI's libnbc, which picks its binomial algorithm below
#   4 ranks or in place: a reduce to rank 0, then a broadcast, one direction at a time, so 2 x bytes / bw
#   for 2 ranks. At the rates of $RING_RATES_MBIT the runs are repeated with its ring algorithm
#   (--mca coll_libnbc_iallreduce_algorithm 1: reduce-scatter then allgather, both directions at once).
# Usage: tests/bench/multihost_bandwidth.sh [BUILD_DIR]   (default $ELECTRA_BUILD_DIR, else build/)
# Environment: CONFIGS (default "small base"), RATES_MBIT (default "10000 1000"), RING_RATES_MBIT (default
#   "1000"; "" for none), OUT (results; default BUILD_DIR/bench/multihost_bandwidth), BENCH_ARGS_small and
#   BENCH_ARGS_base (the per-config electra-bench arguments below; about 8 minutes for both configs here). Needs root or CAP_NET_ADMIN, iproute2 (ip, tc), mpirun, python3; exit 77 without.
#   Every namespace it made is deleted on exit, also on failure or Ctrl-C.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-${ELECTRA_BUILD_DIR:-$root/build}}
test_name=multihost_bandwidth
# shellcheck source=tests/jobs/common.sh
source "$root/tests/jobs/common.sh"
netns_prefix=ebw  # not emh: multihost_test.sh's reaping leaves these alone
# shellcheck source=tests/jobs/netns_hosts.sh
source "$root/tests/jobs/netns_hosts.sh"
bench=$build/bin/electra-bench
configs=${CONFIGS:-small base}
rates=${RATES_MBIT:-10000 1000}
ring_rates=${RING_RATES_MBIT-1000}
out=${OUT:-$build/bench/multihost_bandwidth}
# Short runs on a 2-core machine: base is ~4 s a step at batch 4 with one thread per rank.
BENCH_ARGS_small=${BENCH_ARGS_small:---batch 32 --seq 128 --steps 3 --warmup 1}
BENCH_ARGS_base=${BENCH_ARGS_base:---batch 4 --seq 128 --steps 2 --warmup 1}
common_args=(--threads 1 --json --breakdown --peak-gemm 512)

[ -x "$bench" ] || { say "FAILED: $bench is missing"; exit 1; }
netns_require
command -v tc > /dev/null || { say "SKIPPED: tc not found (Debian: iproute2)"; exit 77; }
command -v python3 > /dev/null || { say "SKIPPED: python3 not found"; exit 77; }
mkdir -p "$out" || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/electra-bw.XXXXXX") || exit 1
cleanup() {
  # mpirun ends its ranks on SIGTERM (those on this host too: the one-host runs); the rest is killed after.
  [ -z "$mpirun_pid" ] || { kill -TERM "$mpirun_pid" 2> /dev/null && sleep 2; }
  netns_hosts_cleanup
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # through cleanup

netns_reap_stale
make_hosts
say "hosts: $ns_a ($subnet.1) and $ns_b ($subnet.2), veth $ifname; results in $out"

# netem (for a propagation delay) is tried once and reported; tbf is what shapes.
if err=$(ip netns exec "$ns_a" tc qdisc add dev "$ifname" root netem delay 100us 2>&1); then
  ip netns exec "$ns_a" tc qdisc del dev "$ifname" root
  netem="available (not used: the runs model bandwidth only)"
else
  netem="unavailable: ${err//$'\n'/ }"
fi
say "tc netem: $netem"

# shape MBIT: tbf at MBIT Mbit/s on both ends of the link (0: unshaped). Burst: 1 ms of tokens (at least
# 64 KiB, one GSO packet); latency 10 ms: the queue's bound, not a delay.
shape() {
  local ns burst
  for ns in "$ns_a" "$ns_b"; do
    ip netns exec "$ns" tc qdisc del dev "$ifname" root 2> /dev/null
    [ "$1" = 0 ] && continue
    burst=$(($1 * 125))
    [ $burst -ge 65536 ] || burst=65536
    ip netns exec "$ns" tc qdisc add dev "$ifname" root tbf rate "${1}mbit" burst "$burst" latency 10ms ||
      fail "tc qdisc add tbf rate ${1}mbit on $ns failed"
  done
}

# run CONFIG LINK OVERLAP [ALGORITHM]: one electra-bench run; LINK onehost | unshaped | MBIT; OVERLAP on | off;
# ALGORITHM default | ring (libnbc's iallreduce). Writes $out/CONFIG-LINK-OVERLAP-ALGORITHM.json (electra-bench's
# line plus link, algorithm, tx_bytes and the tbf counters).
run() {
  local config=$1 link=$2 overlap=$3 algorithm=${4:-default} args_var=BENCH_ARGS_$1 before=0 after=0 code
  local name=$config-$link-$overlap-$algorithm
  local -a cmd args
  read -ra args <<< "${!args_var:---steps 3 --warmup 1}"
  args=(--config "$config" "${args[@]}" "${common_args[@]}")
  [ "$overlap" = on ] || args+=(--no-overlap)
  if [ "$link" = onehost ]; then cmd=("${onehost[@]}"); else cmd=("${multihost[@]}"); before=$(tx_bytes "$ns_b"); fi
  [ "$algorithm" = default ] || cmd+=(--mca coll_libnbc_iallreduce_algorithm 1)
  local start=$SECONDS
  "${cmd[@]}" "$bench" "${args[@]}" < /dev/null > "$tmp/$name.out" 2> "$tmp/$name.log" &
  mpirun_pid=$!
  wait "$mpirun_pid"
  code=$?
  mpirun_pid=
  [ "$link" = onehost ] || after=$(tx_bytes "$ns_b")
  [ $code = 0 ] || fail "$name: electra-bench exited $code"
  ip netns exec "$ns_b" tc -s -j qdisc show dev "$ifname" > "$tmp/$name.tc" 2> /dev/null || echo '[]' > "$tmp/$name.tc"
  python3 - "$tmp/$name.out" "$link" "$((after - before))" "$tmp/$name.tc" "$algorithm" > "$out/$name.json" << 'PY' ||
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
r = json.loads(line)
r["link"] = sys.argv[2]
r["tx_bytes_host_b"] = int(sys.argv[3])
r["iallreduce_algorithm"] = sys.argv[5]
try:
    r["tbf_host_b"] = [q for q in json.load(open(sys.argv[4])) if q.get("kind") == "tbf"]
except ValueError:
    r["tbf_host_b"] = []
print(json.dumps(r))
PY
    fail "$name: no JSON line in electra-bench's output"
  say "$name: $((SECONDS - start)) s"
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
family=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
python3 -c 'import json, sys; print(json.dumps({"cpu": sys.argv[1], "family": int(sys.argv[2]), "model": int(sys.argv[3]), "cores": int(sys.argv[4]), "netem": sys.argv[5], "rates_mbit": sys.argv[6].split(), "configs": sys.argv[7].split(), "mpirun": sys.argv[8]}))' \
  "$cpu" "${family:-0}" "${model:-0}" "$(nproc)" "$netem" "$rates" "$configs" "$(mpirun --version 2> /dev/null | head -1)" > "$out/machine.json"
say "cpu: $cpu (family $family, model $model), $(nproc) cores"

rm -f "$out"/*-*-*-*.json
for config in $configs; do
  for overlap in on off; do run "$config" onehost $overlap; done
  shape 0
  for overlap in on off; do run "$config" unshaped $overlap; done
  for mbit in $rates; do  # shaped afresh for every run: the tbf counters in each JSON are that run's
    for overlap in on off; do shape "$mbit" && run "$config" "$mbit" $overlap; done
    case " $ring_rates " in *" $mbit "*) for overlap in on off; do shape "$mbit" && run "$config" "$mbit" $overlap ring; done ;; esac
  done
  shape 0
done

python3 - "$out" << 'PY' | tee "$out/summary.md"
import glob, json, os, sys
out = sys.argv[1]
machine = json.load(open(os.path.join(out, "machine.json")))
runs = {}
for path in glob.glob(os.path.join(out, "*-*-*-*.json")):
    r = json.load(open(path))
    runs[(r["config"], r["link"], "on" if r["overlap"] else "off", r["iallreduce_algorithm"])] = r
phase = lambda r, k: r.get("phases", {}).get(k, {}).get("median_s", 0.0)
ms = lambda s: f"{1e3 * s:.0f}"
print(f"CPU: {machine['cpu']} (family {machine['family']}, model {machine['model']}), {machine['cores']} cores; "
      f"{machine['mpirun']}; tc netem: {machine['netem']}")
print()
print("| config | link | iallreduce | overlap | step ms | in reducer ms | wait after backward ms | step - one-host ms "
      "| backward ms | ideal bytes/bw ms | sent by host b MB/step | effective Gbit/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
links = ["onehost", "unshaped"] + sorted({k[1] for k in runs} - {"onehost", "unshaped"}, key=lambda l: -int(l))
for config in machine["configs"]:
    for link in links:
      for algorithm in ("default", "ring"):
        for ov in ("on", "off"):
            r = runs.get((config, link, ov, algorithm))
            if r is None:
                continue
            grad_bytes = 4 * r["params"]
            ref = runs.get((config, "onehost", ov, "default"))
            exposed = r["median_step_s"] - ref["median_step_s"] if ref and link != "onehost" else None
            backward = phase(r, "discriminator_backward") + phase(r, "generator_backward")
            wait = phase(r, "allreduce")
            ideal = grad_bytes * 8 / (int(link) * 1e6) if link.isdigit() else None
            per_step = r["tx_bytes_host_b"] / (r["steps"] + r["warmup"]) if link != "onehost" else None
            # Achieved rate of the allreduce when it runs alone (after backward): bytes / its time.
            eff = grad_bytes * 8 / r["allreduce_s"] / 1e9 if ov == "off" and r["allreduce_s"] > 0 else None
            label = {"onehost": "one host (shm)", "unshaped": "veth, unshaped"}.get(link) or f"{int(link) / 1000:g} Gbit/s"
            print(f"| {config} ({r['params'] / 1e6:.1f} M params, batch {r['batch']}, seq {r['seq']}) | {label} | {algorithm} | {ov} "
                  f"| {ms(r['median_step_s'])} | {ms(r['allreduce_s'])} | {ms(wait)} "
                  f"| {ms(exposed) if exposed is not None else '-'} | {ms(backward)} "
                  f"| {ms(ideal) if ideal else '-'} | {f'{per_step / 1e6:.1f}' if per_step is not None else '-'} "
                  f"| {f'{eff:.2f}' if eff else '-'} |")
print()
for config in machine["configs"]:
    losses = {r["last_loss"] for k, r in runs.items() if k[0] == config}
    print(f"{config}: last loss {'the same in every run' if len(losses) == 1 else 'DIFFERS: ' + str(sorted(losses))}")
print()
print("step: median over the timed steps (slowest rank); in reducer: allreduce_s (launches and progress during "
      "backward plus the wait); wait after backward: the --breakdown `allreduce` phase (the exposed part); "
      "iallreduce: libnbc's choice (binomial for 2 ranks) or its ring; "
      "ideal: 4 x params x 8 / rate; effective: 4 x params x 8 / allreduce_s, --no-overlap runs only.")
PY
say "done: $out/summary.md"
