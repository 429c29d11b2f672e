#!/bin/sh
# electra-bench --lengths-from on a tiny corpus (BenchSmoke.ElectraBenchLengthsFrom): electra-preprocess makes
# shards of short documents (blank lines separate them) in a temporary directory; the JSON must report real
# tokens below the slots: real_token_fraction < 1 and tokens_per_s < slot_tokens_per_s. The steps are
# trimmed to each batch's longest row (computed_slot_fraction < 1, fewer FLOPs than slot_flops_per_step),
# and with --no-trim-padding they compute every slot, with the same first loss to float rounding.
# Usage: lengths_smoke.sh ELECTRA_PREPROCESS ELECTRA_BENCH
set -eu
preprocess=$1
bench=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/text"
{
  printf '[PAD]\n'
  for i in 0 1 2 3 4 5 6 7 8 9; do printf '[unused%s]\n' "$i"; done
  printf '[UNK]\n[CLS]\n[SEP]\n[MASK]\n'
  for w in the a cat dog sat on mat ran far and then slept . ,; do printf '%s\n' "$w"; done
} >"$tmp/vocab.txt"
# Documents of 3 to 14 words: rows of 32 slots stay mostly padding.
for f in 1 2 3; do
  for d in 1 2 3 4 5 6 7 8 9 10 11 12; do
    printf 'the cat sat on the mat .\n'
    [ $((d % 2)) -eq 0 ] && printf 'a dog ran far , and then slept .\n'
    [ $((d % 3)) -eq 0 ] && printf 'the dog sat .\n'
    printf '\n'
  done >"$tmp/text/doc$f.txt"
done
"$preprocess" --input "$tmp/text" --vocab "$tmp/vocab.txt" --output "$tmp/shards" --max-seq-length 32 \
  --blanks-separate-docs true --progress-interval 0 >"$tmp/preprocess.log" 2>&1 || {
  cat "$tmp/preprocess.log"
  exit 1
}
"$bench" --config tiny --batch 4 --seq 32 --steps 2 --warmup 1 --threads 1 --peak-gemm 64 \
  --lengths-from "$tmp/shards" --json >"$tmp/bench.json"
cat "$tmp/bench.json"
field() { sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" "$tmp/bench.json"; }
real=$(field tokens_per_s)
slots=$(field slot_tokens_per_s)
fraction=$(field real_token_fraction)
if [ -z "$real" ] || [ -z "$slots" ] || [ -z "$fraction" ]; then
  echo "FAIL: tokens_per_s, slot_tokens_per_s or real_token_fraction missing"
  exit 1
fi
if ! awk -v r="$real" -v s="$slots" -v f="$fraction" 'BEGIN { exit !(f > 0 && f < 1 && r > 0 && r < s) }'; then
  echo "FAIL: real_token_fraction $fraction, tokens_per_s $real, slot_tokens_per_s $slots"
  exit 1
fi
computed=$(field computed_slot_fraction)
flops=$(field flops_per_step)
slot_flops=$(field slot_flops_per_step)
loss=$(field first_loss)
"$bench" --config tiny --batch 4 --seq 32 --steps 2 --warmup 1 --threads 1 --peak-gemm 64 \
  --lengths-from "$tmp/shards" --no-trim-padding --json >"$tmp/bench.json"
cat "$tmp/bench.json"
untrimmed=$(field computed_slot_fraction)
would=$(field trimmed_slot_fraction)
untrimmed_loss=$(field first_loss)
if ! awk -v c="$computed" -v f="$flops" -v s="$slot_flops" -v u="$untrimmed" -v w="$would" \
  'BEGIN { exit !(c > 0 && c < 1 && f < s && u == 1 && w == c) }'; then
  echo "FAIL: computed_slot_fraction $computed (untrimmed $untrimmed, would be $would), flops $flops of $slot_flops"
  exit 1
fi
if ! awk -v a="$loss" -v b="$untrimmed_loss" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * b) }'; then
  echo "FAIL: first_loss $loss trimmed, $untrimmed_loss untrimmed"
  exit 1
fi
echo "PASS: real_token_fraction $fraction < 1, tokens_per_s $real < slot_tokens_per_s $slots;" \
  "computed_slot_fraction $computed (1 with --no-trim-padding), first_loss $loss vs $untrimmed_loss"
