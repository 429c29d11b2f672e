#!/bin/sh
# electra-bench under mpirun reports the step's loss, not rank 0's share of it
# (BenchSmoke.ElectraBenchLossIsTheWholeStepsOnTwoRanks): one global batch of 8 rows, dropout 0, on 1 and on 2
# ranks gives the same first_loss (to float rounding; it was half on 2 ranks).
# Usage: ranks_loss_smoke.sh MPIEXEC ELECTRA_BENCH
set -eu
mpiexec=$1
bench=$2
args="--config tiny --vocab 2000 --batch 8 --seq 32 --steps 1 --warmup 0 --threads 1 --peak-gemm 64 --json --dropout 0"
field() { sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p"; }
# shellcheck disable=SC2086
one=$("$mpiexec" -np 1 --oversubscribe --allow-run-as-root --bind-to none "$bench" $args | field first_loss)
# shellcheck disable=SC2086
two=$("$mpiexec" -np 2 --oversubscribe --allow-run-as-root --bind-to none "$bench" $args | field first_loss)
echo "first_loss: 1 rank $one, 2 ranks $two"
if [ -z "$one" ] || [ -z "$two" ] ||
  ! awk -v a="$one" -v b="$two" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 1 && d <= 1e-4 * a) }'; then
  echo "FAIL: the losses differ"
  exit 1
fi
echo "PASS: the same loss on 1 and 2 ranks"
