#!/usr/bin/env python3
"""electra-bench next to PyTorch eager on the same machine, interleaved, for docs/performance.md.

Runs electra-bench (our CPU path) and tests/reference/electra_step_reference.py (the same model and
step in PyTorch eager float32) alternately for --rounds rounds, each implementation at each of its
thread counts (and ours also as MPI ranks x threads), so a change in the machine's load hits both
alike. Records the load average before every run. Prints one row per configuration with the median
over rounds of tokens/s, model GFLOP/s, fraction of the sgemm peak (ours; PyTorch's runs use our
measured peak at the same thread count), peak RSS, and the ratio of our best to PyTorch's best.

Example (ELECTRA-small, batch 32, seq 128):
  .venv/bin/python tests/bench/compare_pytorch.py --bench build/bin/electra-bench --config small \
      --batch 32 --seq 128 --rounds 3 --ours-threads 1 2 --torch-threads 1 2 --ranks 2 \
      --torch-python .venv/bin/python /tmp/torchnew/bin/python
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "reference", "electra_step_reference.py")


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_json(cmd, env=None):
    start = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write("failed (%d): %s\n%s\n" % (out.returncode, " ".join(cmd), out.stderr[-2000:]))
        return None
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result["wall_s"] = time.time() - start
            return result
    sys.stderr.write("no JSON from: %s\n" % " ".join(cmd))
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="build/bin/electra-bench")
    p.add_argument("--mpirun", default="mpirun")
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ours-threads", type=int, nargs="*", default=[2])
    p.add_argument("--ranks", type=int, nargs="*", default=[], help="also run ours as R MPI ranks x 1 thread")
    p.add_argument("--torch-threads", type=int, nargs="*", default=[2])
    p.add_argument("--torch-python", nargs="*", default=[sys.executable],
                   help="Python interpreters with torch (e.g. Debian's 1.13 venv and a newer one)")
    p.add_argument("--json-out", default="", help="write all runs here (JSON lines)")
    args = p.parse_args()

    common = ["--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq), "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--json"]
    jobs = []  # (label, command, env)
    for t in args.ours_threads:
        jobs.append(("electra-mpi 1 rank x %d thr" % t, [args.bench] + common + ["--threads", str(t)], None))
    for r in args.ranks:
        cmd = [args.mpirun, "-np", str(r), "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
               args.bench] + common + ["--threads", "1"]
        jobs.append(("electra-mpi %d ranks x 1 thr" % r, cmd, None))
    for py in args.torch_python:
        for t in args.torch_threads:
            cmd = [py, REFERENCE] + common + ["--threads", str(t)]
            env = dict(os.environ, OMP_NUM_THREADS=str(t))
            jobs.append((None, cmd, env))

    runs = {}
    sink = open(args.json_out, "a") if args.json_out else None
    for rnd in range(args.rounds):
        for label, cmd, env in jobs:
            before = load()
            result = run_json(cmd, env)
            if result is None:
                continue
            result["load_before"] = before
            result["load_after"] = load()
            result["round"] = rnd
            if label is None:
                label = "pytorch %s x %d thr" % (result.get("torch", "?"), result["threads"])
            result["label"] = label
            runs.setdefault(label, []).append(result)
            if sink:
                sink.write(json.dumps(result) + "\n")
                sink.flush()
            print("round %d  %-34s %8.0f tokens/s  %7.0f MiB  load %.1f -> %.1f" % (
                rnd, label, result["tokens_per_s"], result["peak_rss_mib"], before, result["load_after"]),
                flush=True)

    # Our sgemm peak per thread count (PyTorch's runs are compared with our peak at the same threads).
    peaks = {}
    for label, rs in runs.items():
        for r in rs:
            if "peak_gflops_per_rank" in r and r.get("ranks", 1) == 1:
                peaks.setdefault(r["threads"], []).append(r["peak_gflops_per_rank"])
    peak = {t: statistics.median(v) for t, v in peaks.items()}

    print()
    print("| implementation | config | batch | seq | ranks x threads | tokens/s | model GFLOP/s | "
          "fraction of sgemm peak | peak RSS MiB | load (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    best = {}
    for label, rs in runs.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        gfl = statistics.median(r["model_gflops_per_s"] for r in rs)
        rss = statistics.median(r["peak_rss_mib"] for r in rs)
        ld = statistics.median(r["load_before"] for r in rs)
        ranks = rs[0].get("ranks", 1)
        threads = rs[0]["threads"]
        if "peak_gflops_per_rank" in rs[0]:
            frac = statistics.median(r["peak_fraction"] for r in rs)
        else:
            frac = gfl / peak[threads] if threads in peak else float("nan")
        kind = "ours" if label.startswith("electra-mpi") else label.split(" x ")[0]
        if kind not in best or tps > best[kind][0]:
            best[kind] = (tps, rss, label)
        print("| %s | %s | %d | %d | %d x %d | %.0f | %.1f | %.0f%% | %.0f | %.1f |" % (
            label, args.config, args.batch, args.seq, ranks, threads, tps, gfl, 100 * frac, rss, ld))
    if "ours" in best:
        print()
        for kind, (tps, rss, label) in best.items():
            if kind == "ours":
                continue
            print("best ours (%s) / best %s (%s): %.2fx tokens/s, %.2fx peak RSS" % (
                best["ours"][2], kind, label, best["ours"][0] / tps, best["ours"][1] / rss))


if __name__ == "__main__":
    main()
