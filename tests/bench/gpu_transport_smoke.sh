#!/usr/bin/env bash
# electra-bench --device cuda under mpirun with the device-gradient allreduce (ctest: BenchSmoke.ElectraBenchCudaNccl).
#   gpu_transport_smoke.sh MPIEXEC ELECTRA_BENCH
# Two GPUs: two ranks, one per GPU; one GPU: one rank (NCCL runs over a single rank). Without a GPU it exits
# 77 (ctest SKIP). Checks that nccl (overlapped and not) and host staging report their transport and train
# the same losses bitwise: with one or two ranks every element is a + b in any order, so any difference is
# a bug in the device path (stream ordering, a bucket reduced twice or never).
set -uo pipefail
mpiexec="$1" bench="$2"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [[ "${gpus:-0}" -lt 1 ]]; then
  echo "SKIP: no GPU (nvidia-smi -L lists none)"
  exit 77
fi
np=$((gpus >= 2 ? 2 : 1))
echo "$gpus GPU(s): $np rank(s)"

common=(--device cuda --config tiny --batch 4 --seq 32 --steps 3 --warmup 1 --peak-gemm 256 --json)
declare -A loss
run() {
  local name="$1" transport="$2"
  shift 2
  local out
  out=$("$mpiexec" -np "$np" --oversubscribe --allow-run-as-root --bind-to none "$bench" "${common[@]}" "$@")
  local code=$?
  echo "$name: $out"
  if [[ $code -ne 0 ]]; then
    echo "FAIL: $name exited with $code"
    exit 1
  fi
  if [[ "$out" != *"\"ranks\":$np,"* || "$out" != *"\"transport\":\"$transport\""* ]]; then
    echo "FAIL: $name: expected \"ranks\":$np and \"transport\":\"$transport\""
    exit 1
  fi
  loss[$name]=$(grep -o '"last_loss":[^,}]*' <<<"$out")
}

run nccl nccl --transport nccl
run nccl_no_overlap nccl --transport nccl --no-overlap
run host host --transport host
if [[ $np -eq 2 ]]; then
  run auto nccl  # one GPU per rank: auto is nccl
else
  run auto none  # one rank: no allreduce at all
fi
for name in nccl_no_overlap host auto; do
  if [[ "${loss[$name]}" != "${loss[nccl]}" ]]; then
    echo "FAIL: $name ${loss[$name]} differs from nccl ${loss[nccl]}"
    exit 1
  fi
done
echo "PASS: nccl, nccl --no-overlap, host and auto trained the same losses (${loss[nccl]})"
