#!/usr/bin/env python3
"""A PyTorch (float32, eager, CPU) ELECTRA pre-training step of the same model as electra-mpi, to put
next to electra-bench: generator forward, Gumbel-max sampling of replacements, discriminator forward,
loss (MLM + 50 x replaced-token detection [+ NSP]), backward, global-norm clipping at 1.0 and an AdamW
update (no weight decay on LayerNorm parameters and biases). The modules are electra_reference.py's.

Inputs are synthetic: random token ids, P = num_token_predictions masked positions per row replaced by
[MASK] (id 103), all rows full length. Sampling uses torch's RNG (the Philox sampler of the reference is
written for exactness, not speed). Dropout follows the config (0.1) unless --dropout is given.

Prints the configuration, median / min step time over --steps timed steps (after --warmup), tokens/s,
model FLOP/s (same matmul count as electra-mpi's model_flops_per_step) and peak RSS (getrusage).

Examples:
  .venv/bin/python tests/reference/electra_step_reference.py --config small --batch 8 --seq 128 --threads 2
  .venv/bin/python tests/reference/electra_step_reference.py --config base --batch 2 --seq 512 --steps 5
"""

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import electra_reference as ref  # noqa: E402

# The model presets of lib/model/config.cpp (model_preset); google-research/electra numbers.
PRESETS = {
    "tiny": {"embedding_size": 32, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
             "generator": {"hidden_size": 32, "num_layers": 2, "num_heads": 1, "intermediate_size": 64},
             "num_token_predictions": 8},
    "small": {"embedding_size": 128, "hidden_size": 256, "num_layers": 12, "num_heads": 4,
              "intermediate_size": 1024,
              "generator": {"hidden_size": 64, "num_layers": 12, "num_heads": 1, "intermediate_size": 256},
              "num_token_predictions": 19},
    "base": {"embedding_size": 768, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
             "intermediate_size": 3072,
             "generator": {"hidden_size": 256, "num_layers": 12, "num_heads": 4, "intermediate_size": 1024},
             "num_token_predictions": 79},
    "large": {"embedding_size": 1024, "hidden_size": 1024, "num_layers": 24, "num_heads": 16,
              "intermediate_size": 4096,
              "generator": {"hidden_size": 256, "num_layers": 24, "num_heads": 4, "intermediate_size": 1024},
              "num_token_predictions": 130},
}
DEFAULT_SEQ = {"tiny": 128, "small": 128, "base": 512, "large": 512}


def load_model_section(name):
    """A preset name, or a JSON file (comments allowed) with a `model` section or a bare model section."""
    if name in PRESETS:
        return json.loads(json.dumps(PRESETS[name]))
    with open(name) as f:
        text = re.sub(r"^\s*//.*$", "", f.read(), flags=re.M)
    data = json.loads(text)
    return data.get("model", data)


def model_flops_per_step(cfg, batch, seq):
    """Matmul FLOPs of forward + backward (3x forward), as lib/model/config.cpp counts them."""
    n, b, e, v = batch * seq, batch, cfg["embedding_size"], cfg["vocab_size"]

    def encoder(enc):
        c, f = enc["hidden_size"], enc["intermediate_size"]
        total = 2.0 * n * e * c if e != c else 0.0
        per_layer = 2.0 * n * c * 3 * c + 2.0 * n * seq * c * 2 + 2.0 * n * c * c + 2.0 * n * c * f * 2
        return total + enc["num_layers"] * per_layer

    gen = cfg["generator"]
    disc = {k: cfg[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
    cg, cd, m = gen["hidden_size"], disc["hidden_size"], b * cfg["num_token_predictions"]
    forward = encoder(gen) + encoder(disc)
    forward += 2.0 * m * cg * e + 2.0 * m * e * v
    forward += 2.0 * b * cg * cg + 2.0 * b * cg * cfg["num_classes"]
    forward += 2.0 * n * cd * cd + 2.0 * n * cd
    return 3.0 * forward


def synthetic_batch(cfg, batch, seq, generator, with_nsp):
    v, p = cfg["vocab_size"], cfg["num_token_predictions"]
    if p >= seq:
        sys.exit("num_token_predictions (%d) must be below the sequence length (%d)" % (p, seq))
    ids = torch.randint(1000, v, (batch, seq), generator=generator, dtype=torch.int32)
    ids[:, 0] = 101
    types = torch.zeros(batch, seq, dtype=torch.int32)
    types[:, seq // 2:] = 1
    positions = torch.stack([torch.randperm(seq - 1, generator=generator)[:p] + 1 for _ in range(batch)])
    positions = positions.sort(dim=1).values.to(torch.int32)
    labels = torch.gather(ids, 1, positions.long())
    ids.scatter_(1, positions.long(), 103)
    inputs = {
        "input_word_ids": ids, "input_mask": torch.ones(batch, seq, dtype=torch.int32), "input_type_ids": types,
        "masked_lm_positions": positions, "masked_lm_ids": labels,
        "masked_lm_weights": torch.ones(batch, p, dtype=torch.float32),
        "next_sentence_labels": torch.randint(0, 2, (batch,), generator=generator) if with_nsp else None,
    }
    return inputs


def torch_gumbel_sampler(temperature):
    def sample(logits, disallow):
        logits = logits.float()
        if disallow is not None:
            logits = logits.scatter_add(-1, torch.as_tensor(disallow).long()[..., None],
                                        torch.full(disallow.shape + (1,), -1000.0))
        u = torch.rand_like(logits).clamp_(1e-12, 1.0 - 1e-7)
        return torch.argmax(logits / temperature - torch.log(-torch.log(u)), dim=-1)

    return sample


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="tiny|small|base|large or a JSON config file")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=0, help="sequence length (default: 128 small, 512 base)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=None, help="override hidden and attention dropout")
    parser.add_argument("--nsp", action="store_true", help="add the next-sentence loss")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()

    section = load_model_section(args.config)
    section["vocab_size"] = args.vocab
    if args.dropout is not None:
        section["hidden_dropout"] = section["attention_dropout"] = args.dropout
    cfg = ref.model_config(section)
    seq = args.seq or DEFAULT_SEQ.get(args.config, 128)
    if seq > cfg["max_position_embeddings"]:
        sys.exit("--seq %d exceeds max_position_embeddings %d" % (seq, cfg["max_position_embeddings"]))
    torch.set_num_threads(args.threads if args.threads > 0 else (os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.float32)

    model = ref.ElectraPretrainerRef(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, cfg["initializer_range"])
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay,
                                                                              "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = torch_gumbel_sampler(cfg["temperature"])
    n_params = sum(p.numel() for p in model.parameters())

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        inputs = synthetic_batch(cfg, args.batch, seq, generator, args.nsp)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        out = model(inputs, args.seed, step, 0, sampler=sampler)
        out["total_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(out["total_loss"].item())
        if step >= args.warmup:
            times.append(elapsed)

    median = statistics.median(times)
    tokens = args.batch * seq
    flops = model_flops_per_step(cfg, args.batch, seq)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "impl": "pytorch-eager-fp32", "torch": torch.__version__, "config": args.config, "batch": args.batch,
        "seq": seq, "vocab": cfg["vocab_size"], "threads": torch.get_num_threads(), "params": n_params,
        "steps": args.steps, "median_step_s": median, "min_step_s": min(times), "tokens_per_s": tokens / median,
        "model_gflops_per_s": flops / median / 1e9, "peak_rss_mib": peak_rss_mib, "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if args.json:
        print(json.dumps(result))
        return
    print("PyTorch %s eager float32 ELECTRA step: config %s, batch %d x seq %d, vocab %d, %d threads, %.2fM params"
          % (torch.__version__, args.config, args.batch, seq, cfg["vocab_size"], result["threads"], n_params / 1e6))
    print("  step time   median %.1f ms, min %.1f ms over %d steps (%d warm-up)"
          % (median * 1e3, min(times) * 1e3, args.steps, args.warmup))
    print("  throughput  %.0f tokens/s, %.2f model GFLOP/s (%.2f GFLOP per step)"
          % (tokens / median, flops / median / 1e9, flops / 1e9))
    print("  peak RSS    %.0f MiB" % peak_rss_mib)
    print("  loss        %.4f -> %.4f" % (losses[0], losses[-1]))


if __name__ == "__main__":
    main()
