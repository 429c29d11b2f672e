"""Tokenizes lines with the tokenizers Hugging Face loads from one electra-export directory.

usage: hf_tokenize.py MODEL_DIR INPUT.json OUTPUT.json

INPUT.json: {"lines": ["text", ...], "pair": ["text a", "text b"]}
OUTPUT.json: {"fast_class": str, "fast": [[ids]], "pair_ids": [...], "pair_type_ids": [...],
              "max_input_chars_per_word": int, "slow_class": str, "slow": [[ids]], "raw": [[ids]],
              "differs_from_bert_tokenizer_fast": [top-level keys]}

fast: AutoTokenizer.from_pretrained(MODEL_DIR) (the fast tokenizer, from tokenizer.json when present);
slow: ElectraTokenizer.from_pretrained(MODEL_DIR) (vocab.txt and tokenizer_config.json only);
raw: tokenizers.Tokenizer.from_file(MODEL_DIR/tokenizer.json), the file alone (transformers' fast
tokenizer rebuilds the normalizer from tokenizer_config.json where the two disagree).
differs_from_bert_tokenizer_fast: the keys of tokenizer.json that differ from what BertTokenizerFast builds
from vocab.txt and tokenizer_config.json, its max_input_chars_per_word set to ours, and its normalizer
preceded by NFC where accents are kept (as ours does).
"""
import json
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer, BertTokenizerFast, ElectraTokenizer


def differences_from_bert_tokenizer_fast(model_dir):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        ours = json.load(f)
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    built = BertTokenizerFast(
        os.path.join(model_dir, "vocab.txt"),
        do_lower_case=config["do_lower_case"],
        strip_accents=config["strip_accents"],
        tokenize_chinese_chars=config["tokenize_chinese_chars"],
    )
    reference = json.loads(built.backend_tokenizer.to_str())
    reference["model"]["max_input_chars_per_word"] = ours["model"]["max_input_chars_per_word"]
    strips_accents = config["strip_accents"] if config["strip_accents"] is not None else config["do_lower_case"]
    if not strips_accents:
        reference["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, reference["normalizer"]]}
    keys = list(ours.keys())
    if keys != list(reference.keys()):
        return ["<key order>"]
    return [key for key in keys if ours[key] != reference[key]]


def main():
    model_dir, input_path, output_path = sys.argv[1:4]
    with open(input_path, encoding="utf-8") as f:
        inputs = json.load(f)
    fast = AutoTokenizer.from_pretrained(model_dir)
    slow = ElectraTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    pair = fast(inputs["pair"][0], inputs["pair"][1])
    out = {
        "fast_class": type(fast).__name__,
        "fast": [fast.encode(line) for line in inputs["lines"]],
        "pair_ids": pair["input_ids"],
        "pair_type_ids": pair["token_type_ids"],
        "max_input_chars_per_word": fast.backend_tokenizer.model.max_input_chars_per_word,
        "slow_class": type(slow).__name__,
        "slow": [slow.encode(line) for line in inputs["lines"]],
        "raw": [raw.encode(line).ids for line in inputs["lines"]],
        "differs_from_bert_tokenizer_fast": differences_from_bert_tokenizer_fast(model_dir),
    }
    with open(output_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
