#!/bin/bash
# expect_exit.sh <fail|ok> <max_seconds> <pattern|-> -- command...
# Runs the command with a hard time limit. "fail": it must exit non-zero before the limit and print
# <pattern> (grep -F); "ok": it must exit 0. A command still running at the limit is a hang: failure.
set -u
expect=$1 max=$2 pattern=$3
shift 3
[ "$1" = "--" ] && shift
start=$(date +%s%N)
output=$(timeout -k 5 "$max" "$@" 2>&1)
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '%s\n' "$output"
echo "expect_exit: exit status $rc after ${elapsed_ms} ms (limit ${max}s)"
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "expect_exit: FAILED: still running after ${max}s (a hang)"
  exit 1
fi
if [ "$expect" = ok ]; then
  [ $rc -eq 0 ] || { echo "expect_exit: FAILED: expected exit status 0"; exit 1; }
  exit 0
fi
[ $rc -ne 0 ] || { echo "expect_exit: FAILED: expected a non-zero exit status"; exit 1; }
if [ "$pattern" != "-" ] && ! grep -qF -- "$pattern" <<<"$output"; then
  echo "expect_exit: FAILED: output does not contain: $pattern"
  exit 1
fi
exit 0
