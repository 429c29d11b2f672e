#!/usr/bin/env python3
"""Single-core tokenization throughput: Hugging Face tokenizers (Rust) BertWordPieceTokenizer vs ours.

Both get the same vocab and the same lines (files read as bytes, split at b"\\n", decoded with
errors="replace"); MB/s counts input bytes including each line's "\\n". The process is pinned to one CPU
and Rayon to one thread. HF is timed with encode_batch (its fastest path: one call per 10k lines, no
per-line Python overhead) and with a per-line encode loop; ours with tests/bench/tokenizer_bench
(--ours), which times BertTokenizer::encode_append over the lines in memory. Also reports how many
lines get identical ids (the Rust normalizer skips the slow tokenizer's NFC, so a few lines with
decomposed accents may differ in cased mode).

  bench_hf_tokenizers.py --vocab V [--input FILE_OR_DIR...] [--cased] [--repeat 5] [--ours BIN]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def list_files(inputs):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = []
            for root, _dirs, names in os.walk(path):
                found += [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))]
            files += sorted(found)
        else:
            files.append(path)
    return files


def read_lines(files, max_mb):
    lines, nbytes = [], 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        parts = data.split(b"\n")
        if data.endswith(b"\n"):
            parts.pop()
        for part in parts:
            if max_mb > 0 and nbytes >= max_mb * 1e6:
                return lines, nbytes
            lines.append(part.decode("utf-8", errors="replace"))
            nbytes += len(part) + 1
    return lines, nbytes


def best_of(repeat, fn):
    """(best wall seconds, best process CPU seconds) over `repeat` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu = min(cpu, time.process_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--input", nargs="+", default=["/usr/share/doc/python3.11/html/_sources"])
    parser.add_argument("--cased", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-mb", type=float, default=0)
    parser.add_argument("--ours", help="path of tokenizer_bench to run side by side")
    args = parser.parse_args()

    os.sched_setaffinity(0, {os.sched_getaffinity(0).pop()})
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(args.vocab, lowercase=not args.cased, clean_text=True, handle_chinese_chars=True)
    tok._tokenizer.model.max_input_chars_per_word = 200  # google-research/bert's limit, as ours
    lines, nbytes = read_lines(list_files(args.input), args.max_mb)
    mb = nbytes / 1e6
    chunk = 10000
    batches = [lines[i : i + chunk] for i in range(0, len(lines), chunk)]
    hf_ids = []

    def run_batch():
        hf_ids.clear()
        for batch in batches:
            hf_ids.extend(e.ids for e in tok.encode_batch(batch, add_special_tokens=False))

    def run_single():
        for line in lines:
            tok.encode(line, add_special_tokens=False)

    batch_wall, batch_cpu = best_of(args.repeat, run_batch)
    single_wall, single_cpu = best_of(max(1, args.repeat // 2), run_single)
    tokens = sum(len(x) for x in hf_ids)
    mode = "cased" if args.cased else "lowercase"
    print(f"corpus: {mb:.2f} MB, {len(lines)} lines, {tokens} tokens, vocab {tok.get_vocab_size()} ({mode})")
    print("                                        MB/s CPU  MB/s wall  Mtokens/s CPU")
    print(f"HF tokenizers encode_batch (1 thread): {mb / batch_cpu:9.2f} {mb / batch_wall:10.2f} "
          f"{tokens / batch_cpu / 1e6:14.2f}")
    print(f"HF tokenizers encode, line by line:    {mb / single_cpu:9.2f} {mb / single_wall:10.2f}")

    if args.ours:
        with tempfile.TemporaryDirectory() as tmp:
            dump = os.path.join(tmp, "ids.txt")
            cmd = [args.ours, "--vocab", args.vocab, "--repeat", str(args.repeat), "--json", "--dump-ids", dump]
            cmd += ["--input", *args.input]
            if args.max_mb > 0:
                cmd += ["--max-mb", str(args.max_mb)]
            if args.cased:
                cmd.append("--no-lower-case")
            ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            with open(dump, encoding="ascii") as f:
                our_ids = [[int(x) for x in line.split()] for line in f.read().split("\n")[:-1]]
        same = sum(a == b for a, b in zip(our_ids, hf_ids))
        print(f"ours BertTokenizer::encode_append:     {mb / ours['encode_cpu_s']:9.2f} "
              f"{mb / ours['encode_wall_s']:10.2f} {ours['tokens'] / ours['encode_cpu_s'] / 1e6:14.2f}")
        print(f"speed-up vs encode_batch (CPU time): {batch_cpu / ours['encode_cpu_s']:.1f}x; "
              f"identical ids on {same} of {len(lines)} lines"
              + ("" if len(our_ids) == len(hf_ids) else f" (line counts differ: {len(our_ids)} vs {len(hf_ids)})"))
        if same != len(lines):
            for i, (a, b) in enumerate(zip(our_ids, hf_ids)):
                if a != b:
                    print(f"  first differing line {i + 1}: {lines[i][:120]!r}", file=sys.stderr)
                    break


if __name__ == "__main__":
    main()
