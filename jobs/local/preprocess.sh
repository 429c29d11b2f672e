#!/usr/bin/env bash
# Text -> HDF5 shards on one machine: electra-preprocess on NP MPI ranks under mpirun (the ranks split
# the input files; each writes its own shards, rank 0 the manifest).
#
#   INPUT=corpus/ VOCAB=vocab.txt OUTPUT=shards/ NP=4 jobs/local/preprocess.sh [--rows-per-shard 65536 ...]
#
# Arguments are passed to electra-preprocess after the ones this script sets. Environment:
#   INPUT           text files or directories, separated by spaces                           (required)
#   VOCAB           vocab.txt (make one with build/bin/electra-vocab)                        (required)
#   OUTPUT          output directory for shards + manifest.json; must be empty or missing, unless
#                   --force is passed (replaces what electra-preprocess wrote there)          (required)
#   MAX_SEQ_LENGTH  tokens per example                                                    (default 128)
#   BLANKS_SEPARATE_DOCS  true: a blank line ends a document (BERT layout); false: a document is a file,
#                   blank lines are skipped (reStructuredText, Markdown: blank lines separate paragraphs)
#                                                                                           (default true)
#   PACK            true: pack several short examples into each row (--pack: example_ids in the shards,
#                   attention and positions per example; for corpora of short documents)   (default false)
#   NP              MPI ranks                                               (default: number of cores)
#   MPIRUN_ARGS     more mpirun arguments, split on spaces
#   ELECTRA_BIN     directory of electra-preprocess                   (default <repository>/build/bin)
# Exit status: electra-preprocess's (0 done, 2 bad arguments or a non-empty OUTPUT without --force,
# 1 failed while processing; a message says why).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${ELECTRA_BIN:-$root/build/bin}
preprocess=$bin/electra-preprocess
log() { echo "preprocess.sh: $(date '+%F %T'): $*"; }
die() { log "error: $*" >&2; exit 2; }

[ -x "$preprocess" ] || die "$preprocess not found: build first (jobs/setup.sh) or set ELECTRA_BIN"
[ -n "${INPUT:-}" ] || die "set INPUT to the text files or directories"
[ -n "${VOCAB:-}" ] || die "set VOCAB to vocab.txt"
[ -n "${OUTPUT:-}" ] || die "set OUTPUT to the shards directory"
command -v mpirun > /dev/null || die "mpirun not found (Debian: openmpi-bin)"
np=${NP:-$(nproc)}
# shellcheck source=jobs/local/checks.sh
source "$root/jobs/local/checks.sh"
at_least NP "$np" 1
# The settings that become flags, named here rather than by the flag electra-preprocess would name.
at_least MAX_SEQ_LENGTH "${MAX_SEQ_LENGTH:-128}" 5
for setting in BLANKS_SEPARATE_DOCS PACK; do
  value=${!setting:-}
  [ -z "$value" ] || [ "$value" = true ] || [ "$value" = false ] ||
    { echo "$setting must be true or false, got '$value'" >&2; exit 2; }
done

launch=(mpirun -np "$np" -x OMP_NUM_THREADS=1)
[ "$(id -u)" -ne 0 ] || launch+=(--allow-run-as-root)
[ "$np" -le "$(nproc)" ] || launch+=(--oversubscribe)
if [ -n "${MPIRUN_ARGS:-}" ]; then
  read -r -a more <<< "$MPIRUN_ARGS"
  launch+=("${more[@]}")
fi
read -r -a inputs <<< "$INPUT"
args=(--input "${inputs[@]}" --vocab "$VOCAB" --output "$OUTPUT" --max-seq-length "${MAX_SEQ_LENGTH:-128}"
      --blanks-separate-docs "${BLANKS_SEPARATE_DOCS:-true}" --pack "${PACK:-false}" "$@")

printf -v shown ' %q' "${launch[@]}" "$preprocess" "${args[@]}"
log "running:$shown"
"${launch[@]}" "$preprocess" "${args[@]}"
code=$?
if [ "$code" -eq 0 ]; then log "shards written to $OUTPUT"; else log "electra-preprocess exited with $code"; fi
exit "$code"
