#!/usr/bin/env python3
"""Fine-tune an exported ELECTRA discriminator on a text-classification task, to judge pre-training.

    jobs/finetune.py --model EXPORT/discriminator --train train.tsv --dev dev.tsv [options]
    jobs/finetune.py --model EXPORT/discriminator --data all.jsonl [--dev-fraction 0.2] [options]

    options: [--from-scratch] [--epochs 3] [--lr 3e-4] [--batch-size 32] [--max-length 128]
             [--seed 1] [--threads N] [--device cpu|cuda] [--json]

The model directory is what electra-export writes (config.json, model.safetensors, tokenizer files). A
classification head is put on the encoder (ElectraForSequenceClassification; transformers warns that
its weights are newly initialised) and the whole model is trained with the usual GLUE recipe: AdamW
(weight decay 0.01, none on biases and LayerNorm), linear warm-up over the first 10% of the steps then
linear decay to zero, gradient clipping at 1.0, the dropout of config.json. --from-scratch builds the
same architecture from config.json with random weights, so pre-trained and random initialisation can
be compared with the same recipe. Everything is seeded (--seed): initialisation, dropout, shuffling.

Data: a .tsv file holds one example a line, "text<TAB>label", with an optional header line whose
second column is "label" ("text<TAB>label", GLUE's "sentence<TAB>label"); a .jsonl file holds one {"text": ..., "label": ...} object a line. Blank lines are
skipped. Labels are strings or integers (JSON 1 and 1.0 both read as "1"); the classes are the labels of the
training data, and a dev label not among them is an error. --data splits one file into train and dev,
stratified by label, reproducibly for a given --seed.

Output: one line per epoch (mean training loss, dev accuracy) and a summary line with the final-epoch
dev accuracy, next to the majority-class baseline (always predicting the commonest training label);
--json adds a last line with one JSON object (dev_accuracy, best_dev_accuracy, majority_accuracy,
num_classes, train_examples, dev_examples, init, epochs, seconds).
Exit codes: 0 done, 2 bad arguments or bad data.
"""

import argparse
import collections
import json
import os
import random
import sys
import time

import torch
from transformers import (AutoConfig, AutoTokenizer, ElectraForSequenceClassification,
                          get_linear_schedule_with_warmup)


class DataError(Exception):
    pass


def fail(message):
    print(f"finetune: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_examples(path):
    """[(text, label, "path:line")] from a .tsv or .jsonl file."""
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".tsv", ".jsonl"):
        raise DataError(f"{path}: unknown data format (the name must end in .tsv or .jsonl)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    examples = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not valid UTF-8") from None
            if number == 1:
                line = line.lstrip("\ufeff")  # a byte-order mark (files saved by spreadsheets)
            header = line.strip().lower().split("\t") if kind == ".tsv" and number == 1 else []
            if header == ["label", "text"] or header == ["label", "sentence"]:
                raise DataError(f"{where}: the header says label<TAB>text; the columns must be text<TAB>label")
            blank = not line.strip() and (kind != ".tsv" or "\t" not in line)  # a TSV tab: empty fields
            if blank or (len(header) == 2 and header[1] == "label"):
                continue  # a blank line, or a header (text<TAB>label, GLUE's sentence<TAB>label)
            if kind == ".tsv":
                fields = line.split("\t")
                if len(fields) != 2:
                    raise DataError(f"{where}: expected 2 tab-separated fields (text, label), "
                                    f"got {len(fields)}")
                text, label = fields
            else:
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{where}: not a JSON object ({e})") from None
                if not isinstance(record, dict) or not {"text", "label"} <= record.keys():
                    raise DataError(f'{where}: expected an object with "text" and "label" fields')
                text, label = record["text"], record["label"]
                if isinstance(label, float) and label.is_integer():
                    label = int(label)  # 1.0 (pandas writes integer columns with gaps as floats) is class 1
                if not isinstance(text, str) or not isinstance(label, (str, int)) or isinstance(label, bool):
                    raise DataError(f'{where}: "text" must be a string and "label" a string or an integer')
            if not text.strip():
                raise DataError(f"{where}: empty text")
            if not str(label).strip():
                raise DataError(f"{where}: empty label")
            examples.append((text, str(label).strip(), where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def split_examples(examples, dev_fraction, seed):
    """Stratified split: round(dev_fraction * n) of each label's n examples go to dev."""
    by_label = collections.defaultdict(list)
    for example in examples:
        by_label[example[1]].append(example)
    rng, train, dev = random.Random(seed), [], []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_dev = round(dev_fraction * len(group))
        dev += group[:n_dev]
        train += group[n_dev:]
    return train, dev


def encode(tokenizer, examples, label_ids, max_length):
    """[(token ids, label id)] for the examples."""
    ids = tokenizer([text for text, _, _ in examples], truncation=True, max_length=max_length)["input_ids"]
    return [(token_ids, label_ids[label]) for token_ids, (_, label, _) in zip(ids, examples)]


def batches(data, order, batch_size, pad_id, device):
    """(inputs, labels) batches of data taken in the given order, padded to their longest example."""
    for start in range(0, len(order), batch_size):
        chunk = [data[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in chunk], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk], device=device)
        labels = torch.tensor([label for _, label in chunk], device=device)
        yield {"input_ids": input_ids, "attention_mask": mask}, labels


def accuracy(model, data, batch_size, pad_id, device):
    model.eval()
    correct, by_length = 0, sorted(range(len(data)), key=lambda i: len(data[i][0]))  # less padding
    with torch.no_grad():
        for inputs, labels in batches(data, by_length, batch_size, pad_id, device):
            correct += (model(**inputs).logits.argmax(-1) == labels).sum().item()
    model.train()
    return correct / len(data)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an exported discriminator directory")
    p.add_argument("--train", help="training data (.tsv or .jsonl)")
    p.add_argument("--dev", help="dev data (.tsv or .jsonl)")
    p.add_argument("--data", help="one data file to split into train and dev (instead of --train/--dev)")
    p.add_argument("--dev-fraction", type=float, default=0.2, help="dev share of --data (0.2)")
    p.add_argument("--from-scratch", action="store_true", help="random initialisation from config.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (ELECTRA-Small's GLUE value)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, [CLS] and [SEP] included")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    args = p.parse_args()
    if (args.data is None) == (args.train is None) or (args.train is None) != (args.dev is None):
        p.error("give either --train and --dev, or --data")
    if not 0 < args.dev_fraction < 1 or min(args.epochs, args.batch_size) < 1 or args.max_length < 2:
        p.error("need 0 < --dev-fraction < 1, --epochs >= 1, --batch-size >= 1 and --max-length >= 2")
    if not (0 < args.lr < float("inf")):  # also false for NaN
        p.error(f"--lr must be a positive finite number, got {args.lr}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2 ** 63:
        p.error(f"--seed must be in [0, 2^63), got {args.seed}")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        p.error(f"{args.model} has no config.json (expected an electra-export discriminator directory)")
    return args


def load_model_config(args, labels, label_ids):
    """The discriminator's config with the classification labels; exits 2 on a directory that is not one."""
    where = os.path.join(args.model, "config.json")
    # Read first: AutoConfig would guess the type of a config without model_type from the path's name.
    try:
        with open(where, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{where}: not readable JSON ({e})")
    if not isinstance(raw, dict) or raw.get("model_type") != "electra":
        fail(f"{where}: not a Hugging Face ELECTRA config (model_type "
             f"{raw.get('model_type') if isinstance(raw, dict) else None!r}, expected 'electra')")
    try:
        config = AutoConfig.from_pretrained(args.model, num_labels=len(labels), label2id=label_ids,
                                            id2label=dict(enumerate(labels)))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        fail(f"{where}: not a Hugging Face ELECTRA config ({type(e).__name__}: {e})")
    if getattr(config, "model_type", None) != "electra":
        fail(f"{where}: model_type is {getattr(config, 'model_type', None)!r}, expected 'electra'")
    architectures = getattr(config, "architectures", None) or []
    if "ElectraForMaskedLM" in architectures:
        fail(f"{args.model} is a generator (ElectraForMaskedLM); give the export's discriminator/ directory")
    if args.max_length > config.max_position_embeddings:
        fail(f"--max-length {args.max_length} exceeds the model's max_position_embeddings "
             f"({config.max_position_embeddings})")
    return config


def main():
    args = parse_args()
    started = time.time()
    try:
        if args.data:
            examples = read_examples(args.data)
            train_examples, dev_examples = split_examples(examples, args.dev_fraction, args.seed)
        else:
            train_examples, dev_examples = read_examples(args.train), read_examples(args.dev)
        labels = sorted({label for _, label, _ in train_examples})
        if len(labels) < 2 or not dev_examples:
            raise DataError(f"{args.data or args.train}: {len(labels)} class(es) in training and "
                            f"{len(dev_examples)} dev examples; need at least 2 classes and 1 dev example")
        for _, label, where in dev_examples:
            if label not in labels:
                raise DataError(f"{where}: label {label!r} does not occur in the training data")
    except DataError as e:
        fail(e)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA device is available")
    torch.manual_seed(args.seed)  # the classifier's (or, --from-scratch, every) initial weight, dropout
    label_ids = {label: i for i, label in enumerate(labels)}
    config = load_model_config(args, labels, label_ids)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{args.model}: cannot load its tokenizer (vocab.txt, tokenizer_config.json): {e}")
    train = encode(tokenizer, train_examples, label_ids, args.max_length)
    dev = encode(tokenizer, dev_examples, label_ids, args.max_length)
    if args.from_scratch:
        model = ElectraForSequenceClassification(config)
    else:
        try:
            model = ElectraForSequenceClassification.from_pretrained(args.model, config=config)
        except Exception as e:  # noqa: BLE001 (also safetensors' SafetensorError, a damaged file)
            fail(f"{args.model}: cannot load its weights (model.safetensors): {e}")
    model.to(args.device).train()

    def decayed(name):
        return not (name.endswith("bias") or "LayerNorm" in name)
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if decayed(n)], "weight_decay": 0.01},
         {"params": [p for n, p in model.named_parameters() if not decayed(n)], "weight_decay": 0.0}],
        lr=args.lr)
    total_steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, round(0.1 * total_steps), total_steps)
    shuffler = random.Random(args.seed)
    dev_accuracies = []
    for epoch in range(1, args.epochs + 1):
        epoch_started, losses = time.time(), []
        order = list(range(len(train)))
        shuffler.shuffle(order)
        for inputs, targets in batches(train, order, args.batch_size, tokenizer.pad_token_id, args.device):
            loss = model(**inputs, labels=targets).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        dev_accuracies.append(accuracy(model, dev, args.batch_size, tokenizer.pad_token_id, args.device))
        print(f"finetune: epoch {epoch}/{args.epochs}: train loss {sum(losses) / len(losses):.4f}, "
              f"dev accuracy {dev_accuracies[-1]:.4f} ({time.time() - epoch_started:.1f} s)", flush=True)

    counts = collections.Counter(label for _, label in train)
    majority = min(counts, key=lambda label: (-counts[label], label))  # ties: the smallest id
    majority_accuracy = sum(label == majority for _, label in dev) / len(dev)
    init = "scratch" if args.from_scratch else "pretrained"
    print(f"finetune: dev accuracy {dev_accuracies[-1]:.4f} (best {max(dev_accuracies):.4f} at epoch "
          f"{dev_accuracies.index(max(dev_accuracies)) + 1}; majority class {majority_accuracy:.4f}; "
          f"{len(labels)} classes, {len(train)} train / {len(dev)} dev examples; "
          f"{'random init from' if args.from_scratch else 'pre-trained from'} {args.model})")
    if args.json:
        print(json.dumps({"dev_accuracy": dev_accuracies[-1], "best_dev_accuracy": max(dev_accuracies),
                          "majority_accuracy": majority_accuracy, "num_classes": len(labels),
                          "train_examples": len(train), "dev_examples": len(dev), "init": init,
                          "epochs": args.epochs, "seconds": round(time.time() - started, 2)}))


if __name__ == "__main__":
    main()
