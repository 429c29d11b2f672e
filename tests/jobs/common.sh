# Shared by local_test.sh and slurm_test.sh (sourced): the generated corpus, the small-model settings and
# the metrics readers, so both recipes train the same model on the same data; default_test.sh uses say/fail.

# say / fail for a script that sets test_name; fail prints the tail of every $tmp/*.log and exits 1.
say() { echo "$test_name: $(date +%T): $*"; }
fail() {
  say "FAILED: $*"
  local f
  for f in "$tmp"/*.log; do
    [ -f "$f" ] && { echo "----- tail of $f -----"; tail -n 40 "$f"; }
  done
  exit 1
}

# make_corpus DIR: four small text files of generated sentences (documents separated by blank lines).
make_corpus() {
  mkdir -p "$1"
  python3 - "$1" << 'PY'
import random, sys
words = ("the model learns to detect replaced tokens in text while a small generator fills masked words "
         "with plausible guesses and every rank reads its slice of batch data").split()
rng = random.Random(7)
for part in range(4):
    with open(f"{sys.argv[1]}/part{part}.txt", "w") as out:
        for _ in range(40):
            for _ in range(6):
                out.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 13))) + ".\n")
            out.write("\n")
PY
}

# The small-model settings of tests/e2e/train_e2e_test.cpp (train.steps and checkpointing are the caller's).
small_model_args=(--set model.embedding_size=16 --set model.hidden_size=32 --set model.num_layers=2
  --set model.num_heads=2 --set model.intermediate_size=64 --set model.generator.hidden_size=16
  --set model.generator.num_layers=2 --set model.generator.num_heads=1
  --set model.generator.intermediate_size=32 --set model.num_token_predictions=5
  --set data.seq_length=32 --set train.batch_size=12 --set train.log_every=1
  --set optim.warmup_steps=2 --set train.peak_gflops=50 --set data.prefetch_batches=2)

# metric_lines RUN_DIR: lines in RUN_DIR/metrics.jsonl (0 when it does not exist yet).
metric_lines() {
  local n=0
  [ ! -f "$1/metrics.jsonl" ] || n=$(grep -c . "$1/metrics.jsonl")
  echo "$n"
}

# wait_for_metrics RUN_DIR N PID LABEL: until RUN_DIR/metrics.jsonl has N lines, while PID still runs (180 s
# at most); fails naming LABEL.
wait_for_metrics() {
  local deadline=$((SECONDS + 180))
  until [ "$(metric_lines "$1")" -ge "$2" ]; do
    kill -0 "$3" 2> /dev/null || fail "$4: it ended before $2 metrics lines"
    [ $SECONDS -lt $deadline ] || fail "$4: no $2 metrics lines within 180 s"
    sleep 0.02
  done
}

# trajectory RUN_DIR: one line per metrics.jsonl line, the step and the losses, accuracies and gradient
# norm exactly as written (two runs are compared with `diff`: the values must be bitwise equal).
trajectory() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        m = json.loads(line)
        print(m["step"], *(repr(m[k]) for k in ("loss", "gen_loss", "disc_loss", "mlm_accuracy", "disc_accuracy", "grad_norm")))
' "$1/metrics.jsonl"
}
