#!/bin/bash
# data.trim_padding's speed (docs/performance.md, "Trimming each step to its longest row"): electra-bench
# (jobs/configs/tiny.json, vocabulary 8,000) on the row lengths of a corpus, each case trimmed and then with
# --no-trim-padding, the cases interleaved over ROUNDS rounds. Not run by CTest.
# Usage (from the repository root):
#   trim_padding_bench.sh ELECTRA_BENCH ROUNDS CASE...     CASE = SHARDS,SEQ,BATCH,STORAGE[,EXTRA FLAGS]
#   e.g. trim_padding_bench.sh build/bin/electra-bench 3 data/default/shards,128,32,fp32 BERT128,128,8,bf16
# SHARDS of sequence length SEQ: electra-preprocess output (--blanks-separate-docs true for the BERT layout).
# Prints one line per run: round, case, trim, fill, computed slots, GFLOP per step (computed / all slots),
# median step ms, CPU ms per step, the first and last losses (trimmed and untrimmed agree to rounding), load.
set -euo pipefail
bench=$1
rounds=$2
shift 2
for round in $(seq "$rounds"); do
  for c in "$@"; do
    IFS=, read -r shards seq batch storage extra <<<"$c"
    for trim in on off; do
      # shellcheck disable=SC2206  # EXTRA FLAGS split into words on purpose
      args=(--config jobs/configs/tiny.json --vocab 8000 --batch "$batch" --seq "$seq" --steps 10 --warmup 2
            --peak-gemm 1024 --storage "$storage" --lengths-from "$shards" --json ${extra:-})
      [ "$trim" = off ] && args+=(--no-trim-padding)
      load=$(cut -d' ' -f1 /proc/loadavg)
      "$bench" "${args[@]}" 2>/dev/null | grep '^{' | tail -1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print(sys.argv[1], sys.argv[2], sys.argv[3], "fill %.3f computed %.3f GFLOP/step %.2f / %.2f median %.1f ms cpu %.1f ms"
      " loss %.9f -> %.9f load %s" % (r["real_token_fraction"], r["computed_slot_fraction"], r["flops_per_step"] / 1e9,
      r["slot_flops_per_step"] / 1e9, 1e3 * r["median_step_s"], 1e3 * r["cpu_s_per_step"], r["first_loss"],
      r["last_loss"], sys.argv[4]))' "$round" "$c" "$trim" "$load"
    done
  done
done
