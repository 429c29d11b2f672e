"""Tokenizes lines with the tokenizers Hugging Face loads from one electra-export directory.

usage: hf_tokenize.py MODEL_DIR INPUT.json OUTPUT.json

INPUT.json: {"lines": ["text", ...], "pair": ["text a", "text b"]}
OUTPUT.json: {"fast_class": str, "fast": [[ids]], "pair_ids": [...], "pair_type_ids": [...],
              "max_input_chars_per_word": int, "slow_class": str, "slow": [[ids]], "raw": [[ids]]}

fast: AutoTokenizer.from_pretrained(MODEL_DIR) (the fast tokenizer, from tokenizer.json when present);
slow: ElectraTokenizer.from_pretrained(MODEL_DIR) (vocab.txt and tokenizer_config.json only);
raw: tokenizers.Tokenizer.from_file(MODEL_DIR/tokenizer.json), the file alone (transformers' fast
tokenizer rebuilds the normalizer from tokenizer_config.json where the two disagree).
"""
import json
import os
import sys

from tokenizers import Tokenizer

from transformers import AutoTokenizer, ElectraTokenizer


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
    }
    with open(output_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
