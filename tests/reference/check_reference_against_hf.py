#!/usr/bin/env python3
"""Checks electra_reference.py against Hugging Face transformers, so the reference the C++ is compared
with is itself anchored to an implementation nobody here wrote:

  * the generator's MLM logits at the masked positions equal ElectraForMaskedLM's prediction scores
    (HF's generator is `electra.*` with the same shared embeddings; our `generator.*` names map onto it);
  * the discriminator logits on the corrupted ids equal ElectraForPreTraining's logits;
  * the script's end-to-end case run (HDF5 in, HDF5 out) reproduces the in-process losses and gradients,
    and its gradients match central finite differences of its loss on a few parameters;
  * the Python Philox matches the Random123 known-answer vectors.

Exit status 0 when everything agrees, 77 (skip) without transformers or h5py.
Run: .venv/bin/python tests/reference/check_reference_against_hf.py
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import electra_reference as ref  # noqa: E402
from philox import check_known_answers  # noqa: E402

CFG = {
    "vocab_size": 50, "embedding_size": 16, "hidden_size": 24, "num_layers": 2, "num_heads": 2,
    "intermediate_size": 40, "max_position_embeddings": 20, "type_vocab_size": 2,
    "generator": {"hidden_size": 12, "num_layers": 2, "num_heads": 1, "intermediate_size": 20},
    "num_classes": 2, "num_token_predictions": 4, "mlm_activation": "gelu", "output_type": "logits",
    "disallow_correct": True, "temperature": 1.0, "disc_loss_weight": 50.0,
}


def random_case(cfg, batch=3, seq=16, seed=0):
    """Random parameters (non-trivial LayerNorm and biases) and padded inputs with masked positions."""
    g = torch.Generator().manual_seed(seed)
    model = ref.ElectraPretrainerRef(cfg).double()
    params = {}
    for name, p in model.state_dict().items():
        scale = 0.3 if "LayerNorm.weight" not in name else 0.2
        base = 1.0 if "LayerNorm.weight" in name else 0.0
        params[name] = (base + scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).numpy()
    rng = np.random.default_rng(seed)
    v, p_max = cfg["vocab_size"], cfg["num_token_predictions"]
    lengths = [seq, seq - 5, seq - 9][:batch]
    ids = np.zeros((batch, seq), np.int32)
    mask = np.zeros((batch, seq), np.int32)
    types = np.zeros((batch, seq), np.int32)
    pos = np.zeros((batch, p_max), np.int32)
    mids = np.zeros((batch, p_max), np.int32)
    w = np.zeros((batch, p_max), np.float32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(5, v, n)
        ids[b, 0] = 1
        mask[b, :n] = 1
        types[b, n // 2:n] = 1
        k = p_max - b  # some rows have padded prediction slots
        chosen = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
        pos[b, :k] = chosen
        mids[b, :k] = ids[b, chosen]
        w[b, :k] = 1.0
        ids[b, chosen] = 4  # [MASK]
        ids[b, chosen[-1]] = mids[b, k - 1]  # one kept token
    inputs = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types, "masked_lm_positions": pos,
              "masked_lm_ids": mids, "masked_lm_weights": w, "next_sentence_labels": np.array([0, 1, 1][:batch],
                                                                                             np.int32)}
    return params, inputs


def to_torch(inputs):
    out = {k: torch.as_tensor(v) for k, v in inputs.items()}
    out["masked_lm_weights"] = out["masked_lm_weights"].double()
    return out


def hf_config(cfg, gen):
    from transformers import ElectraConfig
    enc = cfg["generator"] if gen else cfg
    return ElectraConfig(vocab_size=cfg["vocab_size"], embedding_size=cfg["embedding_size"],
                         hidden_size=enc["hidden_size"], num_hidden_layers=enc["num_layers"],
                         num_attention_heads=enc["num_heads"], intermediate_size=enc["intermediate_size"],
                         hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         max_position_embeddings=cfg["max_position_embeddings"],
                         type_vocab_size=cfg["type_vocab_size"], layer_norm_eps=1e-12)


def check_against_hf(cfg, params, inputs, failures):
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    model = ref.ElectraPretrainerRef(cfg).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    t = to_torch(inputs)
    out = model(t, seed=11, step=3, global_row_offset=5)

    shared = {k: v for k, v in params.items() if k.startswith("electra.embeddings.")}
    gen_sd = dict(shared)
    for k, v in params.items():
        if k.startswith("generator."):
            gen_sd["electra." + k[len("generator."):]] = v
        elif k.startswith("generator_predictions."):
            gen_sd[k] = v
    gen_sd["generator_lm_head.weight"] = params["electra.embeddings.word_embeddings.weight"]
    gen_sd["generator_lm_head.bias"] = params["generator_lm_head.bias"]
    hf_gen = ElectraForMaskedLM(hf_config(cfg, True)).double().eval()
    missing, unexpected = hf_gen.load_state_dict({k: torch.from_numpy(v) for k, v in gen_sd.items()}, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        failures.append("HF generator state dict: missing %s unexpected %s" % (missing, unexpected))
        return
    with torch.no_grad():
        scores = hf_gen(input_ids=t["input_word_ids"].long(), attention_mask=t["input_mask"].long(),
                        token_type_ids=t["input_type_ids"].long()).logits
    pos = t["masked_lm_positions"].long()
    hf_lm = torch.gather(scores, 1, pos[..., None].expand(-1, -1, scores.shape[-1]))
    compare("generator MLM logits vs ElectraForMaskedLM", out["lm_outputs"].detach(), hf_lm, 1e-12, failures)

    disc_sd = {k: v for k, v in params.items()
               if k.startswith("electra.") or k.startswith("discriminator_predictions.")}
    hf_disc = ElectraForPreTraining(hf_config(cfg, False)).double().eval()
    missing, unexpected = hf_disc.load_state_dict({k: torch.from_numpy(v) for k, v in disc_sd.items()},
                                                  strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        failures.append("HF discriminator state dict: missing %s unexpected %s" % (missing, unexpected))
        return
    with torch.no_grad():
        logits = hf_disc(input_ids=out["corrupted_ids"].long(), attention_mask=t["input_mask"].long(),
                         token_type_ids=t["input_type_ids"].long()).logits
    compare("discriminator logits vs ElectraForPreTraining", out["disc_logits"].detach(), logits, 1e-12, failures)
    if not bool((out["disc_label"] != 0).any()):
        failures.append("the case has no replaced tokens, so the discriminator check is weak")


def compare(what, got, want, tol, failures):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(np.abs(want).max(), 1e-300)
    err = np.abs(got - want).max() / scale
    print("%-60s max-abs-normalised error %.3g" % (what, err))
    if not err <= tol:
        failures.append("%s: error %.3g > %.3g" % (what, err, tol))


def check_case_files_and_gradients(cfg, params, inputs, failures):
    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        case, expected = os.path.join(tmp, "case.h5"), os.path.join(tmp, "expected.h5")
        with h5py.File(case, "w") as f:
            f.attrs["config"] = json.dumps(cfg)
            f.attrs["seed"] = np.uint64(12345678901)
            f.attrs["step"] = np.uint64(7)
            f.attrs["global_row_offset"] = np.uint64(9)
            for k, v in params.items():
                f.create_dataset("params/" + k, data=v)
            for k, v in inputs.items():
                f.create_dataset("inputs/" + k, data=v)
        ref.run_case(case, expected, use_sampled_ids=False)
        with h5py.File(expected, "r") as e:
            grads = {k: np.asarray(e["grads"][k]) for k in e["grads"]}
            total = float(e.attrs["total_loss"])
            sampled = np.asarray(e["outputs/sampled_ids"])
            sentence = float(e.attrs["sentence_loss"])
    torch.set_default_dtype(torch.float64)
    if set(grads) != set(params):
        failures.append("gradient names differ from parameter names")
        return
    if not sentence > 0:
        failures.append("sentence loss missing although next_sentence_labels were given")
    w = inputs["masked_lm_weights"] > 0
    if np.any(sampled[w] == inputs["masked_lm_ids"][w]):
        failures.append("disallow_correct is on but a sample equals the original token")

    def loss_with(name, index, delta):
        p = {k: v.copy() for k, v in params.items()}
        p[name][index] += delta
        model = ref.ElectraPretrainerRef(cfg).double().eval()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
        with torch.no_grad():
            return model(to_torch(inputs), 12345678901, 7, 9, sampled_ids=torch.as_tensor(sampled))[
                "total_loss"].item()

    base = loss_with("generator_lm_head.bias", (0,), 0.0)
    compare("case-file total loss vs in-process", [total], [base], 1e-13, failures)
    rng = np.random.default_rng(1)
    names = ["electra.embeddings.word_embeddings.weight", "electra.embeddings.LayerNorm.weight",
             "generator.encoder.layer.0.attention.self.query.weight", "electra.encoder.layer.1.output.dense.bias",
             "electra.embeddings_project.weight", "generator_classification_head.out_proj.weight",
             "discriminator_predictions.dense_prediction.weight", "generator_predictions.LayerNorm.bias"]
    h = 1e-6
    for name in names:
        for _ in range(3):
            index = tuple(int(rng.integers(0, s)) for s in params[name].shape)
            fd = (loss_with(name, index, h) - loss_with(name, index, -h)) / (2 * h)
            g = grads[name][index]
            err = abs(fd - g) / max(abs(fd), abs(g), 1e-3)
            if not err < 1e-5:
                failures.append("gradient of %s%s: autograd %.12g, finite difference %.12g" % (name, index, g, fd))
    print("%-60s checked %d entries" % ("gradients vs central finite differences", 3 * len(names)))


def main():
    try:
        import h5py  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print("SKIP: the reference environment lacks a package (%s); run jobs/setup.sh" % e)
        sys.exit(77)
    check_known_answers()
    torch.set_default_dtype(torch.float64)
    failures = []
    cfg = ref.model_config(CFG)
    params, inputs = random_case(cfg)
    check_against_hf(cfg, params, inputs, failures)
    check_case_files_and_gradients(cfg, params, inputs, failures)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("electra_reference.py agrees with Hugging Face transformers and finite differences")


if __name__ == "__main__":
    main()
