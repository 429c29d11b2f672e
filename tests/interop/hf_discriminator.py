"""A discriminator made by transformers itself (not by electra-export), for electra-score's lone-model test.

Usage: hf_discriminator.py VOCAB OUT_DIR LINES_FILE SCORES_JSON

Writes a randomly initialised ElectraForPreTraining (embedding size != hidden size, so it has
embeddings_project) with its BertTokenizerFast into OUT_DIR through save_pretrained, as Google's
google/electra-*-discriminator comes, and writes for each line of LINES_FILE the tokenizer's ids and
sigmoid(logits) to SCORES_JSON.
"""
import json
import sys

import torch
from transformers import BertTokenizerFast, ElectraConfig, ElectraForPreTraining


def main():
    vocab, out_dir, lines_file, scores_json = sys.argv[1:5]
    torch.manual_seed(0)
    tokenizer = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    config = ElectraConfig(vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = ElectraForPreTraining(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    scores = []
    with torch.no_grad():
        for line in open(lines_file, encoding="utf-8").read().splitlines():
            enc = tokenizer(line, return_tensors="pt")
            logits = model(**enc).logits[0].double()
            scores.append({"ids": enc["input_ids"][0].tolist(), "replaced_prob": torch.sigmoid(logits).tolist()})
    with open(scores_json, "w") as f:
        json.dump(scores, f)


if __name__ == "__main__":
    main()
