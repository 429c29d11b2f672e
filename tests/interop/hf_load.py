"""Loads electra-export's directories with Hugging Face transformers and writes what they compute.

usage: hf_load.py EXPORT_DIR INPUT.json OUTPUT.json [SAVE_DIR]

INPUT.json: {"ids": [[...], ...], "mask": [[...], ...], "type_ids": [[...], ...], "lines": ["text", ...]}
OUTPUT.json: {"disc_logits": [B][S], "gen_logits": [B][S][V],
              "tokenizer_ids": {"bert": [[...]], "electra": [[...]]}, "do_lower_case": bool}

With SAVE_DIR, the loaded models and tokenizer are written back with Hugging Face's own save_pretrained
to SAVE_DIR/discriminator and SAVE_DIR/generator (the form of Google's checkpoints as converted by HF:
the tied generator_lm_head.weight left out, HF's header order and metadata), for the import test.

Exits non-zero (with a message) when from_pretrained reports missing, unexpected or mismatched keys.
"""
import json
import os
import sys

import torch
from transformers import BertTokenizer, ElectraForMaskedLM, ElectraForPreTraining, ElectraTokenizer


def load(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"{cls.__name__} from {path}: loading problems {problems}")
    model.eval()
    return model


def main():
    export_dir, input_path, output_path = sys.argv[1:4]
    save_dir = sys.argv[4] if len(sys.argv) > 4 else None
    with open(input_path) as f:
        inputs = json.load(f)
    disc_dir = os.path.join(export_dir, "discriminator")
    gen_dir = os.path.join(export_dir, "generator")
    disc = load(ElectraForPreTraining, disc_dir)
    gen = load(ElectraForMaskedLM, gen_dir)
    if gen.generator_lm_head.weight.data_ptr() != gen.electra.embeddings.word_embeddings.weight.data_ptr():
        sys.exit("ElectraForMaskedLM: generator_lm_head.weight is not tied to the word embeddings")

    ids = torch.tensor(inputs["ids"], dtype=torch.long)
    mask = torch.tensor(inputs["mask"], dtype=torch.long)
    type_ids = torch.tensor(inputs["type_ids"], dtype=torch.long)
    with torch.no_grad():
        disc_logits = disc(input_ids=ids, attention_mask=mask, token_type_ids=type_ids).logits
        gen_logits = gen(input_ids=ids, attention_mask=mask, token_type_ids=type_ids).logits

    with open(os.path.join(disc_dir, "tokenizer_config.json")) as f:
        do_lower_case = json.load(f)["do_lower_case"]
    bert = BertTokenizer(os.path.join(disc_dir, "vocab.txt"), do_lower_case=do_lower_case)
    electra = ElectraTokenizer.from_pretrained(disc_dir)
    out = {
        "disc_logits": disc_logits.tolist(),
        "gen_logits": gen_logits.tolist(),
        "tokenizer_ids": {
            "bert": [bert.encode(line) for line in inputs["lines"]],
            "electra": [electra.encode(line) for line in inputs["lines"]],
        },
        "do_lower_case": do_lower_case,
    }
    with open(output_path, "w") as f:
        json.dump(out, f)
    if save_dir:
        for name, model in (("discriminator", disc), ("generator", gen)):
            model.save_pretrained(os.path.join(save_dir, name), safe_serialization=True)
            electra.save_pretrained(os.path.join(save_dir, name))


if __name__ == "__main__":
    main()
