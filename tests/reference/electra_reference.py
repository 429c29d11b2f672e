#!/usr/bin/env python3
"""Plain PyTorch reference of electra-mpi's ElectraPretrainer (generator + discriminator, ELECTRA
pre-training loss), written independently of the C++ from the model description:

  * BERT post-LayerNorm encoder layers, exact-erf GELU, LayerNorm eps from the config, attention over
    unpadded keys only (padding keys get probability 0);
  * one set of embeddings (word + position + token type, LayerNorm) shared by both networks, projected to
    each network's width by `<prefix>.embeddings_project` when embedding_size != hidden_size;
  * generator MLM head at the masked positions: Dense(E, mlm_activation) -> LayerNorm -> x word_emb^T +
    bias (log_softmax when output_type == 'predictions');
  * generator sentence head on the [CLS] output: Dense(tanh) -> Dense(num_classes);
  * Gumbel-max sampling of replacement tokens keyed by Philox (seed, kSampling, step, global row,
    offset p * V + v), sample = argmax((logit - 1000 [v == original if disallow_correct]) / temperature +
    gumbel); the corrupted input keeps the original tokens and takes the samples at positions whose
    weight is > 0; discriminator labels are input_mask * (corrupted != original);
  * loss = sum(w CE) / (sum(w) + 1e-6) + disc_loss_weight * sum(mask BCE) / (sum(mask) + 1e-6)
    [+ mean NSP cross-entropy when next_sentence_labels are given].

Parameter names are the flat buffer's Hugging Face names (lib/model/parameter_layout.h).

Usage: electra_reference.py CASE.h5 EXPECTED.h5 [--use-sampled-ids]
  CASE.h5: /params/<name>, /inputs/{input_word_ids, input_mask, input_type_ids, masked_lm_positions,
           masked_lm_ids, masked_lm_weights[, next_sentence_labels][, sampled_ids]}, attributes config
           (JSON of the model section), seed, step, global_row_offset
           [, masked_lm_weight_sum, input_mask_count, examples: the global normalisers; the MLM and RTD
           losses are then divided by these + 1e-6 and the NSP loss by `examples`].
  EXPECTED.h5: /outputs/{lm_outputs, sentence_outputs, disc_logits, disc_label, sampled_ids,
           corrupted_ids}, attributes total_loss, mlm_loss, disc_loss, sentence_loss,
           own_sampled_ids_mismatches; /grads/<name> for every parameter; /own_sampled_ids.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from philox import PhiloxStream, check_known_answers  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# configuration (the C++ `model` section, lib/model/config.h)

_DEFAULTS = {
    "vocab_size": 30522, "embedding_size": 128, "hidden_size": 256, "num_layers": 12, "num_heads": 4,
    "intermediate_size": 1024, "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_dropout": 0.1,
    "attention_dropout": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
    "generator": {"hidden_size": 64, "num_layers": 12, "num_heads": 1, "intermediate_size": 256},
    "num_classes": 2, "num_token_predictions": 19, "mlm_activation": "gelu",
    "mlm_initializer": "truncated_normal", "mlm_initializer_stddev": 0.02, "output_type": "logits",
    "disallow_correct": False, "temperature": 1.0, "disc_loss_weight": 50.0,
}


def model_config(section):
    """The `model` section with every key filled in from the C++ defaults."""
    unknown = set(section) - set(_DEFAULTS)
    if unknown:
        raise ValueError("unknown model config keys: %s" % sorted(unknown))
    cfg = json.loads(json.dumps(_DEFAULTS))
    for key, value in section.items():
        if key == "generator":
            unknown = set(value) - set(_DEFAULTS["generator"])
            if unknown:
                raise ValueError("unknown model.generator keys: %s" % sorted(unknown))
            cfg["generator"].update(value)
        else:
            cfg[key] = value
    # The C++ holds these as float; use the same values (0.8f is not 0.8).
    for key in ("hidden_dropout", "attention_dropout", "initializer_range", "layer_norm_eps",
                "mlm_initializer_stddev", "temperature", "disc_loss_weight"):
        cfg[key] = float(np.float32(cfg[key]))
    return cfg


def activation(name):
    return {
        "none": lambda x: x,
        "linear": lambda x: x,
        "gelu": lambda x: F.gelu(x),  # exact erf form
        "relu": F.relu,
        "tanh": torch.tanh,
    }[name]


# ---------------------------------------------------------------------------------------------------------
# modules (state_dict keys are the flat buffer's names)


class Embeddings(nn.Module):
    """electra.embeddings: word + position + token type, LayerNorm, dropout."""

    def __init__(self, cfg):
        super().__init__()
        e = cfg["embedding_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], e)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], e)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], e)
        self.LayerNorm = nn.LayerNorm(e, eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout"])

    def forward(self, ids, type_ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings(
            type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class AttentionOutput(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class Attention(nn.Module):
    def __init__(self, hidden, heads, eps):
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = AttentionOutput(hidden, eps)


class Intermediate(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)


class Output(nn.Module):
    def __init__(self, ffn, hidden, eps):
        super().__init__()
        self.dense = nn.Linear(ffn, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class Layer(nn.Module):
    """One post-LayerNorm BERT layer (Hugging Face ElectraLayer names)."""

    def __init__(self, hidden, heads, ffn, eps, hidden_dropout, attention_dropout):
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, ffn)
        self.output = Output(ffn, hidden, eps)
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attention_dropout = nn.Dropout(attention_dropout)

    def forward(self, x, key_mask):
        """x [B,S,C]; key_mask [B,S] bool, True = real token (may be attended to)."""
        b, s, c = x.shape
        sa = self.attention.self
        h = sa.heads
        d = c // h

        def split(t):
            return t.view(b, s, h, d).transpose(1, 2)  # [B,H,S,D]

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = self.attention_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, c)
        ao = self.attention.output
        x = ao.LayerNorm(x + self.hidden_dropout(ao.dense(context)))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + self.hidden_dropout(y))


class LayerStack(nn.Module):
    def __init__(self, enc, cfg):
        super().__init__()
        self.layer = nn.ModuleList([
            Layer(enc["hidden_size"], enc["num_heads"], enc["intermediate_size"], cfg["layer_norm_eps"],
                  cfg["hidden_dropout"], cfg["attention_dropout"]) for _ in range(enc["num_layers"])
        ])


class Encoder(nn.Module):
    """<prefix>.embeddings_project (when E != hidden) and <prefix>.encoder.layer.{i}."""

    def __init__(self, enc, cfg, with_embeddings):
        super().__init__()
        if with_embeddings:
            self.embeddings = Embeddings(cfg)
        if cfg["embedding_size"] != enc["hidden_size"]:
            self.embeddings_project = nn.Linear(cfg["embedding_size"], enc["hidden_size"])
        self.encoder = LayerStack(enc, cfg)

    def forward(self, embedded, key_mask):
        x = self.embeddings_project(embedded) if hasattr(self, "embeddings_project") else embedded
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x


class GeneratorPredictions(nn.Module):
    def __init__(self, gen_hidden, e, eps):
        super().__init__()
        self.dense = nn.Linear(gen_hidden, e)
        self.LayerNorm = nn.LayerNorm(e, eps=eps)


class LmHead(nn.Module):
    """generator_lm_head: only the bias; the weight is tied to the word embeddings."""

    def __init__(self, vocab):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))


class ClassificationHead(nn.Module):
    def __init__(self, hidden, num_classes):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_classes)


class DiscriminatorPredictions(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dense_prediction = nn.Linear(hidden, 1)


def gumbel_max_sample(logits, disallow, temperature, seed, step, first_example):
    """The backend's gumbel_sample contract (lib/backend/backend.h) for logits [B,P,V] (float64 numpy):
    row (b, p) uses stream (seed, kSampling, step, first_example + b) at offsets p * V + v."""
    b_rows, p_rows, vocab = logits.shape
    logits = np.array(logits, dtype=np.float64, copy=True)
    if disallow is not None:
        for b in range(b_rows):
            for p in range(p_rows):
                logits[b, p, disallow[b, p]] -= 1000.0
    samples = np.zeros((b_rows, p_rows), dtype=np.int32)
    offsets = np.arange(p_rows * vocab, dtype=np.uint64)
    for b in range(b_rows):
        noise = PhiloxStream(seed, "sampling", step, first_example + b).gumbel(offsets).reshape(p_rows, vocab)
        scores = logits[b] / float(temperature) + noise
        samples[b] = np.argmax(scores, axis=-1)  # first index of the maximum, as a left-to-right scan
    return samples


class ElectraPretrainerRef(nn.Module):
    """Generator + discriminator with the flat buffer's parameter names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        gen = cfg["generator"]
        disc = {k: cfg[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
        e, eps = cfg["embedding_size"], cfg["layer_norm_eps"]
        self.electra = Encoder(disc, cfg, with_embeddings=True)
        self.generator = Encoder(gen, cfg, with_embeddings=False)
        self.generator_predictions = GeneratorPredictions(gen["hidden_size"], e, eps)
        self.generator_lm_head = LmHead(cfg["vocab_size"])
        self.generator_classification_head = ClassificationHead(gen["hidden_size"], cfg["num_classes"])
        self.discriminator_predictions = DiscriminatorPredictions(disc["hidden_size"])

    def generator_forward(self, inputs):
        cfg = self.cfg
        ids, mask, types = inputs["input_word_ids"], inputs["input_mask"], inputs["input_type_ids"]
        key_mask = mask != 0
        embedded = self.electra.embeddings(ids, types)
        seq = self.generator(embedded, key_mask)  # [B,S,Cg]
        positions = inputs["masked_lm_positions"].long()
        gathered = torch.gather(seq, 1, positions[..., None].expand(-1, -1, seq.shape[-1]))  # [B,P,Cg]
        head = self.generator_predictions
        h = head.LayerNorm(activation(cfg["mlm_activation"])(head.dense(gathered)))
        logits = torch.matmul(h, self.electra.embeddings.word_embeddings.weight.t()) + self.generator_lm_head.bias
        lm_outputs = torch.log_softmax(logits, dim=-1) if cfg["output_type"] == "predictions" else logits
        cls = self.generator_classification_head
        sentence_outputs = cls.out_proj(torch.tanh(cls.dense(seq[:, 0])))
        return lm_outputs, sentence_outputs

    def forward(self, inputs, seed, step, global_row_offset, sampled_ids=None, normalizers=None, sampler=None):
        """Returns a dict of outputs and losses.

        normalizers: {'mlm', 'disc', 'sentence'} denominators that replace this batch's own
        (sum(w) + 1e-6, sum(mask) + 1e-6, rows). sampled_ids [B,P] replaces the model's own samples when
        given (the own samples are still returned as 'own_sampled_ids'). sampler(lm_outputs [B,P,V]
        detached tensor, disallow [B,P] numpy or None) -> [B,P] ids replaces the Philox sampler (the step
        benchmark uses torch's RNG)."""
        cfg = self.cfg
        normalizers = normalizers or {}
        ids, mask, types = inputs["input_word_ids"], inputs["input_mask"], inputs["input_type_ids"]
        positions = inputs["masked_lm_positions"].long()
        labels = inputs["masked_lm_ids"].long()
        weights = inputs["masked_lm_weights"].to(self.dtype)

        lm_outputs, sentence_outputs = self.generator_forward(inputs)

        # Replaced tokens: Gumbel-max over the generator's distribution, no gradient.
        disallow = labels.cpu().numpy() if cfg["disallow_correct"] else None
        if sampler is None:
            lm_np = lm_outputs.detach().double().cpu().numpy()
            own = gumbel_max_sample(lm_np, disallow, cfg["temperature"], seed, step, global_row_offset)
        else:
            own = sampler(lm_outputs.detach(), disallow)
        own = own.long() if isinstance(own, torch.Tensor) else torch.as_tensor(np.asarray(own), dtype=torch.long)
        own = own.to(ids.device)
        samples = own if sampled_ids is None else sampled_ids.long()

        real = weights > 0
        original = ids.long().clone()
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(positions)
        original[rows[real], positions[real]] = labels[real]
        corrupted = original.clone()
        corrupted[rows[real], positions[real]] = samples[real]
        disc_label = (mask != 0) & (corrupted != original)

        key_mask = mask != 0
        embedded = self.electra.embeddings(corrupted, types)
        disc_seq = self.electra(embedded, key_mask)
        dp = self.discriminator_predictions
        disc_logits = dp.dense_prediction(activation(cfg["mlm_activation"])(dp.dense(disc_seq)))[..., 0]

        # Losses.
        log_probs = torch.log_softmax(lm_outputs, dim=-1)  # identity on 'predictions' up to rounding
        ce = -torch.gather(log_probs, -1, labels[..., None])[..., 0]
        mlm_den = normalizers.get("mlm", None)
        mlm_den = (weights.sum() + 1e-6) if mlm_den is None else mlm_den
        mlm_loss = (weights * ce).sum() / mlm_den
        maskf = (mask != 0).to(self.dtype)
        bce = F.binary_cross_entropy_with_logits(disc_logits, disc_label.to(self.dtype), reduction="none")
        disc_den = normalizers.get("disc", None)
        disc_den = (maskf.sum() + 1e-6) if disc_den is None else disc_den
        disc_loss = (maskf * bce).sum() / disc_den
        total = mlm_loss + cfg["disc_loss_weight"] * disc_loss
        sentence_loss = torch.zeros((), dtype=self.dtype)
        if inputs.get("next_sentence_labels") is not None:
            nsl = inputs["next_sentence_labels"].long()
            sen_den = normalizers.get("sentence", None)
            sen_den = nsl.shape[0] if sen_den is None else sen_den
            sentence_loss = F.cross_entropy(sentence_outputs, nsl, reduction="sum") / sen_den
            total = total + sentence_loss
        return {
            "lm_outputs": lm_outputs, "sentence_outputs": sentence_outputs, "disc_logits": disc_logits,
            "disc_label": disc_label.to(torch.int32), "sampled_ids": samples.to(torch.int32),
            "own_sampled_ids": own.to(torch.int32), "corrupted_ids": corrupted.to(torch.int32),
            "total_loss": total, "mlm_loss": mlm_loss, "disc_loss": disc_loss, "sentence_loss": sentence_loss,
        }

    @property
    def dtype(self):
        return self.generator_lm_head.bias.dtype


# ---------------------------------------------------------------------------------------------------------
# case files

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids", "masked_lm_positions", "masked_lm_ids",
               "masked_lm_weights")


def _attr(f, name, default=None):
    if name not in f.attrs:
        return default
    value = f.attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def run_case(case_path, expected_path, use_sampled_ids):
    import h5py

    check_known_answers()
    torch.set_default_dtype(torch.float64)
    with h5py.File(case_path, "r") as f:
        cfg = model_config(json.loads(_attr(f, "config")))
        seed, step, row0 = int(_attr(f, "seed")), int(_attr(f, "step")), int(_attr(f, "global_row_offset", 0))
        params = {name: np.asarray(f["params"][name], dtype=np.float64) for name in f["params"]}
        inputs = {name: torch.as_tensor(np.asarray(f["inputs"][name])) for name in INPUT_NAMES}
        inputs["masked_lm_weights"] = inputs["masked_lm_weights"].double()
        inputs["next_sentence_labels"] = (torch.as_tensor(np.asarray(f["inputs"]["next_sentence_labels"]))
                                          if "next_sentence_labels" in f["inputs"] else None)
        given_samples = None
        if use_sampled_ids:
            if "sampled_ids" not in f["inputs"]:
                sys.exit("electra_reference: --use-sampled-ids but the case has no /inputs/sampled_ids")
            given_samples = torch.as_tensor(np.asarray(f["inputs"]["sampled_ids"]))
        # Global denominators (lib/model/pretrainer.h GlobalNormalizers): losses are divided by these
        # (+1e-6 for the MLM and RTD sums) instead of this slice's own sums.
        normalizers = {}
        for key, attr, eps in (("mlm", "masked_lm_weight_sum", 1e-6), ("disc", "input_mask_count", 1e-6),
                               ("sentence", "examples", 0.0)):
            if _attr(f, attr) is not None:
                normalizers[key] = float(_attr(f, attr)) + eps

    model = ElectraPretrainerRef(cfg).double()
    model.eval()  # dropout off
    state = model.state_dict()
    missing = sorted(set(state) - set(params))
    extra = sorted(set(params) - set(state))
    if missing or extra:
        sys.exit("electra_reference: parameter names differ from the case file: missing %s, unexpected %s" %
                 (missing, extra))
    for name, value in params.items():
        if tuple(state[name].shape) != value.shape:
            sys.exit("electra_reference: parameter %s has shape %s in the case file, expected %s" %
                     (name, value.shape, tuple(state[name].shape)))
    model.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})

    out = model(inputs, seed, step, row0, sampled_ids=given_samples, normalizers=normalizers)
    out["total_loss"].backward()

    own, used = out["own_sampled_ids"].numpy(), out["sampled_ids"].numpy()
    mismatches = int((own != used).sum())
    with h5py.File(expected_path + ".tmp", "w") as g:
        o = g.create_group("outputs")
        for name in ("lm_outputs", "sentence_outputs", "disc_logits", "disc_label", "sampled_ids", "corrupted_ids"):
            o.create_dataset(name, data=out[name].detach().numpy())
        g.create_dataset("own_sampled_ids", data=own)
        for name in ("total_loss", "mlm_loss", "disc_loss", "sentence_loss"):
            g.attrs[name] = float(out[name].detach())
        g.attrs["own_sampled_ids_mismatches"] = mismatches
        grads = g.create_group("grads")
        for name, p in model.named_parameters():
            grads.create_dataset(name, data=(p.grad if p.grad is not None else torch.zeros_like(p)).numpy())
    os.replace(expected_path + ".tmp", expected_path)
    print("electra_reference: total %.17g mlm %.17g disc %.17g sentence %.17g; own samples differ at %d of %d" %
          (out["total_loss"].item(), out["mlm_loss"].item(), out["disc_loss"].item(), out["sentence_loss"].item(),
           mismatches, own.size))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", help="case file (HDF5) written by the C++ test")
    parser.add_argument("expected", help="expected file (HDF5) to write")
    parser.add_argument("--use-sampled-ids", action="store_true",
                        help="take the replacement tokens from /inputs/sampled_ids (float models, where a "
                        "near-tie may flip an argmax); the script still reports whether its own agree")
    args = parser.parse_args()
    run_case(args.case, args.expected, args.use_sampled_ids)


if __name__ == "__main__":
    main()
