#!/usr/bin/env python3
"""The same ELECTRA pre-training step as electra-bench, written the way a PyTorch user would with Hugging
Face transformers (ElectraForMaskedLM generator + ElectraForPreTraining discriminator, tied embeddings,
eager mode), on the CPU or a GPU: the baseline the GPU path is to beat on the same card.

One step: generator forward on the masked batch, MLM loss at the masked positions, Gumbel-max samples of
replacements (no gradient; the original token is disallowed), discriminator forward on the corrupted ids,
loss = MLM + 50 x replaced-token detection, backward, global-norm clipping at 1.0, fused AdamW (no weight
decay on LayerNorm parameters and biases). Inputs are synthetic (tests/reference/electra_step_reference.py's
batches). --amp bf16|fp16 runs forward and backward under torch.autocast (fp16 with a GradScaler), as
NVIDIA's and Hugging Face's training scripts do; --sdpa uses PyTorch's scaled_dot_product_attention
(attn_implementation="sdpa") instead of HF's eager attention.

Prints median / min step time (CUDA-synchronised), sequences/s, tokens/s, model TFLOP/s (electra-mpi's
FLOP count) and peak memory (torch.cuda.max_memory_allocated, or RSS on the CPU); --json for one line.

Examples:
  python3 tests/bench/hf_electra_step.py --device cuda --config base --batch 128 --seq 128 --amp bf16 --sdpa
  .venv/bin/python tests/bench/hf_electra_step.py --config tiny --batch 4 --seq 32 --steps 2 --warmup 1
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import electra_step_reference as steps  # noqa: E402


def hf_configs(section, vocab, dropout):
    """ElectraConfig of the discriminator and of the generator from a model section (lib/model/config.cpp)."""
    gen = section.get("generator", {})
    common = dict(vocab_size=vocab, embedding_size=section["embedding_size"], max_position_embeddings=512,
                  type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.02)
    drop = 0.1 if dropout is None else dropout
    disc = transformers.ElectraConfig(hidden_size=section["hidden_size"], num_hidden_layers=section["num_layers"],
                                      num_attention_heads=section["num_heads"],
                                      intermediate_size=section["intermediate_size"], hidden_dropout_prob=drop,
                                      attention_probs_dropout_prob=drop, **common)
    genc = transformers.ElectraConfig(hidden_size=gen.get("hidden_size", section["hidden_size"] // 4),
                                      num_hidden_layers=gen.get("num_layers", section["num_layers"]),
                                      num_attention_heads=gen.get("num_heads", max(1, section["num_heads"] // 4)),
                                      intermediate_size=gen.get("intermediate_size",
                                                                section["intermediate_size"] // 4),
                                      hidden_dropout_prob=drop, attention_probs_dropout_prob=drop, **common)
    return disc, genc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="tiny|small|base|large or a JSON config file")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--sdpa", action="store_true", help="attn_implementation='sdpa' (default: HF eager)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--dropout", type=float, default=None, help="hidden and attention dropout (default 0.1)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU: torch intra-op threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU")
    if device.type == "cpu":
        torch.set_num_threads(args.threads if args.threads > 0 else (os.cpu_count() or 1))
        if args.amp != "none":
            sys.exit("--amp needs --device cuda")
    torch.manual_seed(args.seed)
    section = steps.load_model_section(args.config)
    disc_cfg, gen_cfg = hf_configs(section, args.vocab, args.dropout)
    for c in (disc_cfg, gen_cfg):
        c._attn_implementation = "sdpa" if args.sdpa else "eager"
    discriminator = transformers.ElectraForPreTraining(disc_cfg).to(device)
    generator = transformers.ElectraForMaskedLM(gen_cfg).to(device)
    # ELECTRA shares the embeddings (word, position, type) between the two networks.
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    params = list({id(q): q for q in list(discriminator.parameters()) + list(generator.parameters())}.values())
    named = [(n, q) for m in (discriminator, generator) for n, q in m.named_parameters()]
    seen, decay, no_decay = set(), [], []
    for n, q in named:
        if id(q) in seen:
            continue
        seen.add(id(q))
        (no_decay if n.endswith("bias") or "LayerNorm" in n else decay).append(q)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=5e-4, betas=(0.9, 0.999), eps=1e-6,
                                  **({"fused": True} if device.type == "cuda" else {}))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    cfg = {"vocab_size": args.vocab, "num_token_predictions": section["num_token_predictions"]}
    rng = torch.Generator().manual_seed(args.seed)
    n_params = sum(q.numel() for q in params)

    def step(batch):
        ids = batch["input_word_ids"].long()
        mask = batch["input_mask"].long()
        types = batch["input_type_ids"].long()
        positions = batch["masked_lm_positions"].long()
        labels = batch["masked_lm_ids"].long()
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = generator(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            picked = torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))
            mlm = torch.nn.functional.cross_entropy(picked.float().flatten(0, 1), labels.flatten())
            with torch.no_grad():
                scores = picked.float().scatter_add(-1, labels[..., None], torch.full_like(labels[..., None], -1000.0,
                                                                                           dtype=torch.float32))
                u = torch.rand_like(scores).clamp_(1e-12, 1.0 - 1e-7)
                sampled = torch.argmax(scores - torch.log(-torch.log(u)), dim=-1)
                original = ids.scatter(1, positions, labels)
                corrupted = ids.scatter(1, positions, sampled)
                disc_labels = (corrupted != original).float() * mask
            disc_logits = discriminator(input_ids=corrupted, attention_mask=mask, token_type_ids=types).logits
            rtd = torch.nn.functional.binary_cross_entropy_with_logits(disc_logits.float(), disc_labels,
                                                                       weight=mask.float(), reduction="sum")
            loss = mlm + 50.0 * rtd / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        return loss

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v)
                 for k, v in steps.synthetic_batch(cfg, args.batch, args.seq, rng, False).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(elapsed)

    median = statistics.median(times)
    full = dict(section, vocab_size=args.vocab)
    full.setdefault("generator", {})
    model_cfg = steps.ref.model_config(full)
    flops = steps.model_flops_per_step(model_cfg, args.batch, args.seq)
    memory_mib = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    result = {"impl": "hf-transformers-eager" + ("-sdpa" if args.sdpa else ""), "torch": torch.__version__,
              "transformers": transformers.__version__, "device": args.device,
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "", "amp": args.amp,
              "config": args.config, "batch": args.batch, "seq": args.seq, "params": n_params,
              "steps": args.steps, "median_step_s": median, "min_step_s": min(times),
              "sequences_per_s": args.batch / median, "tokens_per_s": args.batch * args.seq / median,
              "model_tflops_per_s": flops / median / 1e12, "peak_memory_mib": memory_mib,
              "first_loss": losses[0], "last_loss": losses[-1]}
    if args.json:
        print(json.dumps(result))
        return
    print("Hugging Face transformers %s / torch %s ELECTRA step on %s%s (amp %s, attention %s): %s, batch %d x "
          "seq %d, %.1fM params" % (transformers.__version__, torch.__version__, args.device,
                                    " (" + result["gpu"] + ")" if result["gpu"] else "", args.amp,
                                    "sdpa" if args.sdpa else "eager", args.config, args.batch, args.seq,
                                    n_params / 1e6))
    print("  step        median %.2f ms, min %.2f ms over %d steps (%d warm-up)"
          % (median * 1e3, min(times) * 1e3, args.steps, args.warmup))
    print("  throughput  %.1f sequences/s, %.0f tokens/s, %.2f model TFLOP/s"
          % (result["sequences_per_s"], result["tokens_per_s"], result["model_tflops_per_s"]))
    print("  memory      %.0f MiB peak" % memory_mib)
    print("  loss        %.4f -> %.4f" % (losses[0], losses[-1]))


if __name__ == "__main__":
    main()
