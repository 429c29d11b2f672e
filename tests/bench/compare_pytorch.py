#!/usr/bin/env python3
"""electra-bench next to PyTorch in its CPU modes on the same machine, interleaved, for docs/performance.md.

Runs electra-bench (our CPU path) and tests/reference/electra_step_reference.py (the same model and
step in PyTorch) alternately for --rounds rounds: ours at each of its thread counts (also as MPI ranks x
threads) and storage modes (--ours-storage, passed on as electra-bench --storage), PyTorch for each
interpreter (--torch-python) x mode (--torch-modes: eager-fp32, eager-bf16 = bf16 autocast, sdpa-* =
F.scaled_dot_product_attention, compile-* = torch.compile; see electra_step_reference.py) x thread count,
so a change in the machine's load hits all alike. Records the load average before every run. Prints one
row per configuration with the median over rounds of tokens/s, model GFLOP/s, fraction of the GEMM peak in
the run's precision (ours; PyTorch's runs use our measured fp32 or bf16 peak at the same thread count), peak RSS, compile time (PyTorch's
warm-up time beyond its median step: give torch.compile modes --warmup >= 2; it is not in tokens/s),
our best tokens/s over the row's, and for each PyTorch the ratio of our best to its best mode. The
header names the CPU and whether it has avx512_bf16 / amx_bf16. A configuration that fails (a mode this
torch lacks, torch.compile without a working C++ compiler, ...) is a "failed" row with the last line of
its error and is not run again in later rounds; the others go on.

Example (ELECTRA-small, batch 32, seq 128):
  .venv/bin/python tests/bench/compare_pytorch.py --bench build/bin/electra-bench --config small \
      --batch 32 --seq 128 --rounds 3 --ours-threads 1 2 --torch-threads 1 2 --ranks 2 \
      --ours-storage fp32 bf16 --torch-python .venv/bin/python /work/torchnew/bin/python
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
TORCH_MODES = ["eager-fp32", "eager-bf16", "sdpa-fp32", "sdpa-bf16", "compile-fp32", "compile-bf16"]


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_description():
    """'<model name>, N logical CPUs, avx512_bf16 yes|no, amx_bf16 yes|no' from /proc/cpuinfo."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return "%s, %d logical CPUs, avx512_bf16 %s, amx_bf16 %s" % (
        name, os.cpu_count() or 0, "yes" if "avx512_bf16" in flags else "no",
        "yes" if "amx_bf16" in flags else "no")


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_json(cmd, env=None, timeout=None):
    """(result dict, None) or (None, reason): the reason is the last line of the failed run's stderr."""
    start = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.stderr.write("timed out after %d s: %s\n" % (timeout, " ".join(cmd)))
        return None, "timed out after %d s" % timeout
    except OSError as e:
        sys.stderr.write("cannot run %s: %s\n" % (" ".join(cmd), e))
        return None, "cannot run: %s" % e
    if out.returncode != 0:
        sys.stderr.write("failed (%d): %s\n%s\n" % (out.returncode, " ".join(cmd), out.stderr[-2000:]))
        reason = last_line(out.stderr) or last_line(out.stdout) or "exit status %d" % out.returncode
        return None, reason
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result["wall_s"] = time.time() - start
            return result, None
    sys.stderr.write("no JSON from: %s\n" % " ".join(cmd))
    return None, "no JSON output"


def torch_version(py):
    """The torch version an interpreter imports, or None (with the reason) when it cannot."""
    try:
        out = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if out.returncode != 0:
        return None, last_line(out.stderr) or "exit status %d" % out.returncode
    return out.stdout.strip().splitlines()[-1], None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="build/bin/electra-bench")
    p.add_argument("--mpirun", default="mpirun")
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (torch.compile compiles in them)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ours-threads", type=int, nargs="*", default=[2])
    p.add_argument("--ranks", type=int, nargs="*", default=[], help="also run ours as R MPI ranks x 1 thread")
    p.add_argument("--ours-storage", nargs="*", default=[],
                   help="run ours once per storage mode (electra-bench --storage S: fp32 | bf16 | auto); "
                        "default: electra-bench's default, no --storage")
    p.add_argument("--torch-threads", type=int, nargs="*", default=[2])
    p.add_argument("--torch-python", nargs="*", default=[sys.executable],
                   help="Python interpreters with torch (e.g. Debian's 1.13 venv and a newer one)")
    p.add_argument("--torch-modes", nargs="*", default=TORCH_MODES,
                   help="electra_step_reference.py --mode values (default: %s)" % " ".join(TORCH_MODES))
    p.add_argument("--run-timeout", type=int, default=3600, help="seconds before one run counts as failed")
    p.add_argument("--json-out", default="", help="write all runs here (JSON lines)")
    args = p.parse_args()

    common = ["--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq), "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--json"]
    jobs = []  # (label, mode, threads, command, env, kind)
    storages = args.ours_storage or [None]
    for s in storages:
        extra = ["--storage", s] if s else []
        mode = "storage " + s if s else "default"
        for t in args.ours_threads:
            jobs.append(("electra-mpi 1 rank x %d thr" % t + (" %s" % s if s else ""), mode, (1, t),
                         [args.bench] + common + extra + ["--threads", str(t)], None, "ours"))
        for r in args.ranks:
            cmd = [args.mpirun, "-np", str(r), "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
                   args.bench] + common + extra + ["--threads", "1"]
            jobs.append(("electra-mpi %d ranks x 1 thr" % r + (" %s" % s if s else ""), mode, (r, 1), cmd, None,
                         "ours"))
    versions = {py: torch_version(py) for py in args.torch_python}
    kinds = {}
    for py in args.torch_python:
        version, _ = versions[py]
        kind = kinds[py] = "pytorch %s" % (version or "?")
        if [v for q, (v, _) in versions.items() if q != py and v == version]:
            kind = kinds[py] = kind + " (%s)" % py  # two interpreters with the same torch
        for mode in args.torch_modes:
            for t in args.torch_threads:
                cmd = [py, REFERENCE] + common + ["--threads", str(t), "--mode", mode]
                env = dict(os.environ, OMP_NUM_THREADS=str(t))
                jobs.append(("%s %s x %d thr" % (kind, mode, t), mode, (1, t), cmd, env, kind))

    cpu = cpu_description()
    print("CPU: %s" % cpu, flush=True)
    for py, (version, why) in versions.items():
        print("torch: %s -> %s" % (py, version or "unusable: " + why), flush=True)

    runs, failures = {}, {}
    sink = open(args.json_out, "a") if args.json_out else None
    for rnd in range(args.rounds):
        for label, mode, _, cmd, env, kind in jobs:
            if label in failures:
                continue  # failed once (unsupported, compile error, ...): not retried
            if kind != "ours" and versions[cmd[0]][0] is None:
                failures[label] = (rnd, "no torch: " + versions[cmd[0]][1])
                continue
            before = load()
            result, reason = run_json(cmd, env, args.run_timeout)
            if result is None:
                failures[label] = (rnd, reason)
                print("round %d  %-44s failed: %s" % (rnd, label, reason), flush=True)
                if sink:
                    sink.write(json.dumps({"label": label, "mode": mode, "round": rnd, "failed": reason,
                                           "command": cmd}) + "\n")
                    sink.flush()
                continue
            result["load_before"] = before
            result["load_after"] = load()
            result["round"] = rnd
            result["label"] = label
            result["row_mode"] = mode
            result["cpu"] = cpu
            runs.setdefault(label, []).append(result)
            if sink:
                sink.write(json.dumps(result) + "\n")
                sink.flush()
            extra = " compile %.1f s" % result["compile_s"] if result.get("compile_s") else ""
            print("round %d  %-44s %8.0f tokens/s  %7.0f MiB  load %.1f -> %.1f%s" % (
                rnd, label, result["tokens_per_s"], result["peak_rss_mib"], before, result["load_after"], extra),
                flush=True)

    # Our GEMM peak per thread count and precision (electra-bench measures it in its storage's arithmetic):
    # PyTorch's runs are compared with our peak at the same threads, bf16 for its bf16 autocast modes.
    peaks = {}
    for label, rs in runs.items():
        for r in rs:
            if "peak_gflops_per_rank" in r and r.get("ranks", 1) == 1:
                peaks.setdefault((r["threads"], r.get("storage", "fp32")), []).append(r["peak_gflops_per_rank"])
    peak = {key: statistics.median(v) for key, v in peaks.items()}

    rows, best = [], {}  # best[kind] = (tokens/s, peak RSS, label)
    for label, mode, (ranks, threads), _, _, kind in jobs:
        rs = runs.get(label)
        if not rs:
            rows.append((label, mode, ranks, threads, None))
            continue
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        gfl = statistics.median(r["model_gflops_per_s"] for r in rs)
        rss = statistics.median(r["peak_rss_mib"] for r in rs)
        ld = statistics.median(r["load_before"] for r in rs)
        comp = statistics.median(r.get("compile_s", 0.0) for r in rs)
        if "peak_gflops_per_rank" in rs[0]:
            frac = statistics.median(r["peak_fraction"] for r in rs)
        else:
            key = (threads, "bf16" if "bf16" in mode else "fp32")
            frac = gfl / peak[key] if key in peak else float("nan")
        if kind not in best or tps > best[kind][0]:
            best[kind] = (tps, rss, label)
        rows.append((label, mode, ranks, threads, (tps, gfl, frac, rss, comp, ld, len(rs))))

    print()
    print("ELECTRA %s, batch %d x seq %d, median of %d rounds of %d timed steps after %d warm-up; CPU: %s" % (
        args.config, args.batch, args.seq, args.rounds, args.steps, args.warmup, cpu))
    print()
    print("| implementation | mode | ranks x threads | tokens/s | model GFLOP/s | fraction of GEMM peak | "
          "peak RSS MiB | compile s | load (median) | best ours / this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ours = best.get("ours")
    for label, mode, ranks, threads, stats in rows:
        if stats is None:
            rnd, reason = failures.get(label, (0, "no result"))
            print("| %s | %s | %d x %d | failed: %s | | | | | | |" % (label, mode, ranks, threads,
                                                                  reason.replace("|", "/")))
            continue
        tps, gfl, frac, rss, comp, ld, n = stats
        ratio = "%.2fx" % (ours[0] / tps) if ours else "-"
        note = ""
        if label in failures:
            note = " (%d of %d rounds; then failed: %s)" % (n, args.rounds, failures[label][1].replace("|", "/"))
        print("| %s | %s | %d x %d | %.0f%s | %.1f | %.0f%% | %.0f | %s | %.1f | %s |" % (
            label, mode, ranks, threads, tps, note, gfl, 100 * frac, rss, "%.1f" % comp if comp else "-", ld,
            ratio))
    if ours:
        print()
        for kind, (tps, rss, label) in best.items():
            if kind == "ours":
                continue
            print("best ours (%s) / best %s mode (%s): %.2fx tokens/s, %.2fx peak RSS" % (
                ours[2], kind, label, ours[0] / tps, ours[1] / rss))
        for py in args.torch_python:
            if kinds[py] not in best:
                print("%s (%s): every mode failed" % (kinds[py], py))


if __name__ == "__main__":
    main()
