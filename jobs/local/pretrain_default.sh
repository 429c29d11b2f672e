#!/usr/bin/env bash
# The bundled default, end to end on one machine: train a WordPiece vocabulary on a real corpus (the
# reStructuredText sources of the Python documentation from Debian's python3-doc, ~11 MB of English),
# preprocess it into HDF5 shards on 2 MPI ranks, pre-train a tiny ELECTRA on 2 MPI ranks with
# checkpoints, resume from the last checkpoint, and export Hugging Face directories.
#
# Environment overrides: CORPUS (file or directory), WORK (default data/default), RUN (default
# runs/default), NP (ranks, default 2), STEPS (default from jobs/configs/tiny.json), VOCAB_SIZE (8000),
# MPIRUN_ARGS (more mpirun arguments, split on spaces; default "--bind-to none", as in pretrain.sh),
# ELECTRA_BIN (directory of the programs, default <repository>/build/bin).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${ELECTRA_BIN:-$root/build/bin}
corpus=${CORPUS:-$(ls -d /usr/share/doc/python3*/html/_sources 2>/dev/null | head -1)}
work=${WORK:-$root/data/default}
run=${RUN:-$root/runs/default}
np=${NP:-2}
vocab_size=${VOCAB_SIZE:-8000}
mpirun_cmd=(mpirun -np "$np" --oversubscribe)
[ "$(id -u)" -ne 0 ] || mpirun_cmd+=(--allow-run-as-root)
# Open MPI binds each rank to one core when there are 2 ranks or fewer: with NP=1 electra-train's two
# threads (cores / ranks) would share one core (half the speed on an idle machine), and on a busy
# machine a bound rank cannot move off a core that other work holds (docs/performance.md).
read -r -a more_mpirun_args <<< "${MPIRUN_ARGS:---bind-to none}"
mpirun_cmd+=("${more_mpirun_args[@]}")
[ -n "$corpus" ] && [ -e "$corpus" ] || { echo "no corpus: install python3-doc or set CORPUS" >&2; exit 2; }

mkdir -p "$work"
if [ ! -f "$work/vocab.txt" ]; then
  "$bin/electra-vocab" --input "$corpus" --vocab-size "$vocab_size" --output "$work/vocab.txt"
fi
if [ ! -f "$work/shards/manifest.json" ]; then
  "${mpirun_cmd[@]}" "$bin/electra-preprocess" --input "$corpus" --vocab "$work/vocab.txt" \
    --output "$work/shards" --max-seq-length 128
fi
train=("${mpirun_cmd[@]}" "$bin/electra-train" --config "$root/jobs/configs/tiny.json" --data "$work/shards"
       --output "$run" --resume auto)
[ -z "${STEPS:-}" ] || train+=(--set "train.steps=$STEPS")
# First half, then stop as a preempted job would (exit code 3 = checkpoint written), then resume to the end.
half=$(( ${STEPS:-200} / 2 ))  # 200: train.steps of jobs/configs/tiny.json
set +e
"${train[@]}" --stop-after "$half" "$@"
code=$?
set -e
[ $code -eq 0 ] || [ $code -eq 3 ] || { echo "electra-train failed with exit code $code" >&2; exit $code; }
"${train[@]}" "$@"
"$bin/electra-export" --checkpoint "$run" --output "$run/export" --force
echo "done: run in $run, Hugging Face export in $run/export/{discriminator,generator}"
