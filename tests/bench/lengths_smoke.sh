#!/bin/sh
# electra-bench --lengths-from on a tiny corpus (BenchSmoke.ElectraBenchLengthsFrom): electra-preprocess makes
# shards of short documents (blank lines separate them) in a temporary directory; the JSON must report real
# tokens below the slots: real_token_fraction < 1 and tokens_per_s < slot_tokens_per_s.
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
if awk -v r="$real" -v s="$slots" -v f="$fraction" 'BEGIN { exit !(f > 0 && f < 1 && r > 0 && r < s) }'; then
  echo "PASS: real_token_fraction $fraction < 1, tokens_per_s $real < slot_tokens_per_s $slots"
else
  echo "FAIL: real_token_fraction $fraction, tokens_per_s $real, slot_tokens_per_s $slots"
  exit 1
fi
