#!/usr/bin/env bash
# The bundled default, end to end on one machine: hold out whole files of a real corpus (the
# reStructuredText sources of the Python documentation from Debian's python3-doc, ~11 MB of English),
# train a WordPiece vocabulary on the rest, preprocess both parts into HDF5 shards on 2 MPI ranks,
# pre-train a tiny ELECTRA on 2 MPI ranks with checkpoints, stop, resume from the last checkpoint, export
# Hugging Face directories, and evaluate the model on the held-out shards (electra-eval): the
# discriminator's AUC and its gain over the prior say whether it learned (README, "The bundled default").
#
# Environment overrides: CORPUS (directory, or one file: then nothing is held out), WORK (default
# data/default), RUN (default runs/default), NP (ranks, default 2), STEPS (default from
# jobs/configs/tiny.json), VOCAB_SIZE (8000), HOLDOUT_EVERY (every Nth file of the sorted list is held
# out, default 20), BLANKS_SEPARATE_DOCS (electra-preprocess --blanks-separate-docs; default false: a
# blank line in reStructuredText separates paragraphs, not documents), MPIRUN_ARGS (more mpirun
# arguments, split on spaces; default "--bind-to none", as in pretrain.sh), ELECTRA_BIN (directory of the
# programs, default <repository>/build/bin). Arguments are passed to electra-train.
#
# Ctrl-C keeps what is done: training (through jobs/local/pretrain.sh) stops with a checkpoint, the script
# exits 130, and running it again continues from there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${ELECTRA_BIN:-$root/build/bin}
corpus=${CORPUS:-$(ls -d /usr/share/doc/python3*/html/_sources 2>/dev/null | head -1)}
work=${WORK:-$root/data/default}
run=${RUN:-$root/runs/default}
np=${NP:-2}
vocab_size=${VOCAB_SIZE:-8000}
holdout_every=${HOLDOUT_EVERY:-20}
blanks=${BLANKS_SEPARATE_DOCS:-false}
config=$root/jobs/configs/tiny.json
say() { echo "pretrain_default: $*"; }
# Ctrl-C: every step keeps what it finished (the data in WORK; training stops with a checkpoint in RUN).
trap 'say "interrupted; run the same command again to continue (the data in $work is kept, and training resumes from the last checkpoint in $run)" >&2; exit 130' INT
mpirun_cmd=(mpirun -np "$np" --oversubscribe)
[ "$(id -u)" -ne 0 ] || mpirun_cmd+=(--allow-run-as-root)
# Open MPI binds each rank to one core when there are 2 ranks or fewer: with NP=1 electra-train's two
# threads (cores / ranks) would share one core (half the speed on an idle machine), and on a busy
# machine a bound rank cannot move off a core that other work holds (docs/performance.md).
read -r -a more_mpirun_args <<< "${MPIRUN_ARGS:---bind-to none}"
mpirun_cmd+=("${more_mpirun_args[@]}")
[ -n "$corpus" ] && [ -e "$corpus" ] || { echo "no corpus: install python3-doc or set CORPUS" >&2; exit 2; }
# shellcheck source=jobs/local/checks.sh
source "$root/jobs/local/checks.sh"
at_least NP "$np" 1
at_least VOCAB_SIZE "$vocab_size" 6  # electra-vocab's least: the special tokens and one more
at_least HOLDOUT_EVERY "$holdout_every" 2
[ -z "${STEPS:-}" ] || at_least STEPS "$STEPS" 2  # the run stops half-way and resumes
[ "$blanks" = true ] || [ "$blanks" = false ] ||
  { echo "BLANKS_SEPARATE_DOCS must be true or false, got '$blanks'" >&2; exit 2; }

# What the data in WORK is made from. When it changes, the split, the vocabulary and the shards this
# script made are made again; a run of other data is never resumed. Data in WORK without recipe.txt is not
# this script's, and is never removed.
recipe="corpus=$(realpath "$corpus") vocab_size=$vocab_size holdout_every=$holdout_every blanks_separate_docs=$blanks seq=128 layout=2"
if [ ! -e "$work/recipe.txt" ]; then
  for entry in split split.tmp shards heldout_shards vocab.txt; do
    [ ! -e "$work/$entry" ] ||
      { echo "$work/$entry is not data this script made (no $work/recipe.txt): remove it or set WORK" >&2; exit 2; }
  done
fi
mkdir -p "$work"
# Before anything in WORK is removed: a run of other data is refused, and the data it was made from stays.
if [ -d "$run/checkpoints" ] && [ "$(cat "$run/recipe.txt" 2> /dev/null)" != "$recipe" ]; then
  echo "$run holds a run made from other data (or by an older recipe): remove it or set RUN" >&2
  exit 2
fi
if [ "$(cat "$work/recipe.txt" 2> /dev/null)" != "$recipe" ]; then
  [ ! -e "$work/vocab.txt" ] || say "data in $work was made by another recipe: making it again"
  rm -rf "$work/split" "$work/split.tmp" "$work/shards" "$work/heldout_shards" "$work/vocab.txt" "$work/recipe.txt"
fi
# Written before the data: it marks what follows as this script's (an interrupted run continues it).
echo "$recipe" > "$work/recipe.txt"

# Whole files are held out: every HOLDOUT_EVERY-th file of the sorted list, starting with the
# (HOLDOUT_EVERY/2)-th, so that the held-out text comes from across the corpus.
if [ ! -d "$work/split" ]; then
  mkdir -p "$work/split.tmp/train" "$work/split.tmp/heldout"
  i=0
  while IFS= read -r -d '' file; do
    part=train
    [ ! -d "$corpus" ] || [ $((i % holdout_every)) -ne $((holdout_every / 2)) ] || part=heldout
    name=${file#"$corpus"}
    name=${name#/}
    name=${name//\//__}
    ln -s "$(realpath "$file")" "$work/split.tmp/$part/${name:-$(basename "$file")}"
    i=$((i + 1))
  done < <(find -L "$corpus" -type f -print0 | LC_ALL=C sort -z)
  mv "$work/split.tmp" "$work/split"
fi
heldout_files=$(find "$work/split/heldout" -type l | wc -l)
say "$(find "$work/split/train" -type l | wc -l) training files, $heldout_files held out ($work/split)"

if [ ! -f "$work/vocab.txt" ]; then
  "$bin/electra-vocab" --input "$work/split/train" --vocab-size "$vocab_size" --output "$work/vocab.txt"
fi
# A shards directory without manifest.json is what an interrupted run of this script left: this script's
# own, so it is made again from scratch.
preprocess() {  # input_dir output_dir
  [ ! -f "$2/manifest.json" ] || return 0
  rm -rf "$2"
  "${mpirun_cmd[@]}" "$bin/electra-preprocess" --input "$1" --vocab "$work/vocab.txt" --output "$2" \
    --max-seq-length 128 --blanks-separate-docs "$blanks"
}
preprocess "$work/split/train" "$work/shards"
eval_data=$work/shards
if [ "$heldout_files" -gt 0 ]; then
  preprocess "$work/split/heldout" "$work/heldout_shards"
  eval_data=$work/heldout_shards
else
  say "no file of CORPUS is held out (one file, or fewer than HOLDOUT_EVERY / 2 + 1): the evaluation below is on the training shards"
fi
mkdir -p "$run"
echo "$recipe" > "$run/recipe.txt"
# Training goes through jobs/local/pretrain.sh, which turns Ctrl-C into a stop with a checkpoint (exit 3).
train=(env DATA="$work/shards" RUN_DIR="$run" NP="$np" CONFIG="$config" ELECTRA_BIN="$bin"
  MPIRUN_ARGS="--oversubscribe ${more_mpirun_args[*]}" "$root/jobs/local/pretrain.sh")
[ -z "${STEPS:-}" ] || train+=(--set "train.steps=$STEPS")
steps=${STEPS:-$(sed -n 's/.*"steps": *\([0-9]*\).*/\1/p' "$config")}
# First half, then stop as a preempted job would (exit code 3 = checkpoint written), then resume to the end.
set +e
"${train[@]}" --stop-after $((steps / 2)) "$@"
code=$?
set -e
[ $code -eq 0 ] || [ $code -eq 3 ] || { echo "electra-train failed with exit code $code" >&2; exit $code; }
[ $code -ne 3 ] || say "the first half stopped with a checkpoint, as a preempted job would; resuming it"
"${train[@]}" "$@"
"$bin/electra-export" --checkpoint "$run" --output "$run/export" --force
# electra-eval's default batch fits any rank count and a held-out set smaller than a batch (a small CORPUS
# holds out a few examples); the numbers go to eval.json only once electra-eval has finished.
"${mpirun_cmd[@]}" "$bin/electra-eval" --checkpoint "$run" --data "$eval_data" --json > "$run/eval.json.tmp"
mv "$run/eval.json.tmp" "$run/eval.json"
python3 - "$run/eval.json" "$eval_data" << 'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"electra-eval on {sys.argv[2]} ({m['examples']} examples, {m['tokens']} tokens):")
notes = {"disc_gain": " nats per token over the prior (> 0: the discriminator learned)",
         "disc_auc_unigram": " (against unigram replacements: does not fall as the generator learns)",
         "disc_auc_within_token": " (among tokens of one id: 0.5 = it reads nothing from the context)"}
for key in ("disc_auc", "disc_auc_unigram", "disc_auc_within_token", "disc_gain", "disc_loss", "disc_accuracy", "replaced_fraction",
            "masked_lm_accuracy", "masked_lm_loss", "sampled_masked_lm_accuracy"):
    print(f"  {key:28s} {m[key]:.4f}{notes.get(key, '')}")
PY
echo "done: run in $run, Hugging Face export in $run/export/{discriminator,generator}, held-out metrics in $run/eval.json"
