#!/usr/bin/env python3
"""A PyTorch (CPU) ELECTRA pre-training step of the same model as electra-mpi, to put next to
electra-bench: generator forward, Gumbel-max sampling of replacements, discriminator forward, loss (MLM +
50 x replaced-token detection [+ NSP]), backward, global-norm clipping at 1.0 and an AdamW update (no
weight decay on LayerNorm parameters and biases). The modules are electra_reference.py's.

--mode picks how PyTorch runs it (default eager-fp32: float32 eager, the explicit softmax(QK^T)V):
  eager-fp32 | eager-bf16 | sdpa-fp32 | sdpa-bf16 | compile-fp32 | compile-bf16 | compile-sdpa-fp32 | ...
  bf16     forward and loss under torch.autocast("cpu", dtype=torch.bfloat16); backward, parameters,
           gradients and the AdamW update stay float32 (--autocast bf16 is the same);
  sdpa     F.scaled_dot_product_attention in every layer (dropout_p = the attention dropout in training;
           no mask, the synthetic rows are full length) instead of the explicit softmax (--sdpa); the
           JSON's sdpa_backend names the kernel torch picks for training (math, not flash, when dropout_p > 0
           on the CPU: --dropout 0 shows the fused kernel);
  compile  torch.compile of the model (forward + loss; graph breaks at the sampling), --compile-mode
           passed on (--compile). Compilation happens in the warm-up steps: compile_s (warm-up time over
           the median step) is reported apart and excluded from tokens/s; give --warmup >= 2. With
           inductor's on-disk cache (/tmp/torchinductor_$USER) warm from an earlier run of the same shapes,
           compile_s is mostly the cache load (seconds, not a minute);
           TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 forces a fresh compile. recompiles_in_timed_steps counts
           graphs compiled after the warm-up (should be 0).
A mode this torch lacks (torch.compile and SDPA need torch >= 2.0) exits with status 3 and a one-line
reason; a mode that fails while running exits with status 1, the last stderr line naming the error.

Inputs are synthetic: random token ids, P = num_token_predictions masked positions per row replaced by
[MASK] (id 103), all rows full length. Sampling uses torch's RNG (the Philox sampler of the reference is
written for exactness, not speed). Dropout follows the config (0.1) unless --dropout is given.

Prints the configuration, median / min step time over --steps timed steps (after --warmup), tokens/s,
model FLOP/s (same matmul count as electra-mpi's model_flops_per_step) and peak RSS (getrusage).

Examples:
  .venv/bin/python tests/reference/electra_step_reference.py --config small --batch 8 --seq 128 --threads 2
  .venv/bin/python tests/reference/electra_step_reference.py --config base --batch 2 --seq 512 --steps 5
  /work/torchnew/bin/python tests/reference/electra_step_reference.py --config small --mode compile-bf16 --json
"""

import argparse
import contextlib
import gc
import json
import os
import re
import resource
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import electra_reference as ref  # noqa: E402

# The model presets of lib/model/config.cpp (model_preset); google-research/electra numbers.
PRESETS = {
    "tiny": {"embedding_size": 64, "hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512,
             "generator": {"hidden_size": 64, "num_layers": 2, "num_heads": 1, "intermediate_size": 256},
             "num_token_predictions": 19},
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


MODE_PARTS = ("eager", "sdpa", "compile", "fp32", "bf16")
UNSUPPORTED = 3  # exit status: this torch lacks the mode


def parse_mode(text):
    """'eager-fp32', 'sdpa-bf16', 'compile-sdpa-bf16', ... -> (compile, sdpa, autocast)."""
    parts = text.lower().split("-")
    bad = [p for p in parts if p not in MODE_PARTS]
    if bad or ("eager" in parts and "compile" in parts) or ("fp32" in parts and "bf16" in parts):
        raise ValueError("bad --mode %r (parts: eager|compile, sdpa, fp32|bf16; e.g. compile-sdpa-bf16)" % text)
    return "compile" in parts, "sdpa" in parts, "bf16" if "bf16" in parts else "none"


def mode_name(compiled, sdpa, autocast):
    """The canonical name: eager-fp32, sdpa-bf16, compile-fp32, compile-sdpa-bf16, ..."""
    parts = ["compile"] if compiled else []
    parts += ["sdpa"] if sdpa else ([] if compiled else ["eager"])
    return "-".join(parts + ["bf16" if autocast == "bf16" else "fp32"])


def describe_mode(compiled, sdpa, autocast):
    words = ["torch.compile" if compiled else "eager", "bf16 autocast" if autocast == "bf16" else "float32"]
    return " ".join(words) + (" SDPA" if sdpa else "")


class SdpaLayer(ref.Layer):
    """ref.Layer with F.scaled_dot_product_attention (dropout_p = the attention dropout while training)
    in place of the explicit softmax(QK^T / sqrt(d)) V; the same parameters. full_rows: every row of the
    batch is full length (as synthetic_batch's), so no mask is passed and the fused kernels may serve."""

    full_rows = False

    def forward(self, x, key_mask):
        b, s, c = x.shape
        sa = self.attention.self
        h = sa.heads
        d = c // h

        def split(t):
            return t.view(b, s, h, d).transpose(1, 2)  # [B,H,S,D]

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        mask = None if self.full_rows else key_mask[:, None, None, :]
        p = self.attention_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # scale 1 / sqrt(d)
        context = context.transpose(1, 2).reshape(b, s, c)
        ao = self.attention.output
        x = ao.LayerNorm(x + self.hidden_dropout(ao.dense(context)))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + self.hidden_dropout(y))


def sdpa_backend(cfg, batch, seq, dropout, dtype):
    """Which fused kernel torch picks for the discriminator's attention in training, by name (or '?')."""
    try:
        h = cfg["num_heads"]
        q = torch.zeros(batch, h, seq, cfg["hidden_size"] // h, dtype=dtype)
        choice = torch._fused_sdp_choice(q, q, q, None, dropout, False)
        names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
        return names.get(int(choice), str(int(choice)))
    except Exception:  # a private function; only a diagnostic
        return "?"


def dynamo_graphs():
    """torch._dynamo's count of compiled graphs (private; None when unavailable)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return None


def error_line(exc):
    """One line naming an exception: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "%s: %s" % (type(exc).__name__, lines[0][:300] if lines else "")


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
    parser.add_argument("--mode", default="eager-fp32",
                        help="eager|compile [-sdpa] -fp32|-bf16, e.g. sdpa-bf16, compile-sdpa-bf16 (see above)")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none",
                        help="bf16: forward + loss under CPU bf16 autocast (as --mode ...-bf16)")
    parser.add_argument("--sdpa", action="store_true", help="F.scaled_dot_product_attention (as --mode sdpa-...)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as --mode compile-...)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile's mode: default | reduce-overhead | max-autotune | ...")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()
    try:
        compiled, sdpa, autocast = parse_mode(args.mode)
    except ValueError as e:
        parser.error(str(e))
    compiled, sdpa = compiled or args.compile, sdpa or args.sdpa
    autocast = "bf16" if args.autocast == "bf16" else autocast
    mode = mode_name(compiled, sdpa, autocast)
    if compiled and not hasattr(torch, "compile"):
        print("mode %s: torch.compile needs torch >= 2.0 (this is torch %s)" % (mode, torch.__version__),
              file=sys.stderr)
        sys.exit(UNSUPPORTED)
    if sdpa and not hasattr(F, "scaled_dot_product_attention"):
        print("mode %s: F.scaled_dot_product_attention needs torch >= 2.0 (this is torch %s)"
              % (mode, torch.__version__), file=sys.stderr)
        sys.exit(UNSUPPORTED)

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
    if sdpa:
        for module in model.modules():
            if isinstance(module, ref.Layer):
                module.__class__ = SdpaLayer
                module.full_rows = True  # synthetic_batch's rows are all full length
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay,
                                                                              "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = torch_gumbel_sampler(cfg["temperature"])
    n_params = sum(p.numel() for p in model.parameters())
    forward = torch.compile(model, mode=args.compile_mode) if compiled else model
    autocast_ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast == "bf16" else (
        contextlib.nullcontext)

    times, warmup_times, losses = [], [], []
    graphs_after_warmup = None
    try:
        for step in range(args.warmup + args.steps):
            if step == args.warmup and compiled:
                graphs_after_warmup = dynamo_graphs()
                # Compilation leaves many Python objects; without this a full collection of them lands
                # in a timed step (0.6 s in the third step of tiny after a fresh compile).
                gc.collect()
                gc.freeze()
            inputs = synthetic_batch(cfg, args.batch, seq, generator, args.nsp)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=False)
            with autocast_ctx():
                out = forward(inputs, args.seed, step, 0, sampler=sampler)
            out["total_loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            elapsed = time.perf_counter() - start
            losses.append(out["total_loss"].item())
            (times if step >= args.warmup else warmup_times).append(elapsed)
    except Exception as e:  # e.g. torch.compile without a working C++ compiler
        traceback.print_exc()
        print("mode %s failed: %s" % (mode, error_line(e)), file=sys.stderr)
        sys.exit(1)

    median = statistics.median(times)
    # Compilation (and other first-step costs) is what the warm-up steps took beyond the median step.
    compile_s = sum(max(0.0, w - median) for w in warmup_times) if compiled else 0.0
    recompiles = None
    if compiled and graphs_after_warmup is not None:
        recompiles = dynamo_graphs() - graphs_after_warmup
    tokens = args.batch * seq
    flops = model_flops_per_step(cfg, args.batch, seq)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "impl": "pytorch-" + mode, "torch": torch.__version__, "config": args.config, "batch": args.batch,
        "seq": seq, "vocab": cfg["vocab_size"], "threads": torch.get_num_threads(), "params": n_params,
        "steps": args.steps, "median_step_s": median, "min_step_s": min(times), "tokens_per_s": tokens / median,
        "model_gflops_per_s": flops / median / 1e9, "peak_rss_mib": peak_rss_mib, "first_loss": losses[0],
        "last_loss": losses[-1], "mode": mode, "autocast": autocast, "sdpa": sdpa, "compile": compiled,
        "warmup": args.warmup, "warmup_s": sum(warmup_times), "compile_s": compile_s,
    }
    if sdpa:
        result["sdpa_backend"] = sdpa_backend(cfg, args.batch, seq, cfg["attention_dropout"],
                                              torch.bfloat16 if autocast == "bf16" else torch.float32)
    if compiled:
        result["compile_mode"] = args.compile_mode
        result["recompiles_in_timed_steps"] = recompiles
    if args.json:
        print(json.dumps(result))
        return
    print("PyTorch %s %s ELECTRA step: config %s, batch %d x seq %d, vocab %d, %d threads, %.2fM params"
          % (torch.__version__, describe_mode(compiled, sdpa, autocast), args.config, args.batch, seq,
             cfg["vocab_size"], result["threads"], n_params / 1e6))
    print("  step time   median %.1f ms, min %.1f ms over %d steps (%d warm-up)"
          % (median * 1e3, min(times) * 1e3, args.steps, args.warmup))
    if compiled:
        print("  compile     %.1f s in the warm-up steps beyond the median step; %s graphs compiled after warm-up"
              % (compile_s, "?" if recompiles is None else recompiles))
    if sdpa:
        print("  SDPA        kernel in training: %s" % result["sdpa_backend"])
    print("  throughput  %.0f tokens/s, %.2f model GFLOP/s (%.2f GFLOP per step)"
          % (tokens / median, flops / median / 1e9, flops / 1e9))
    print("  peak RSS    %.0f MiB" % peak_rss_mib)
    print("  loss        %.4f -> %.4f" % (losses[0], losses[-1]))


if __name__ == "__main__":
    main()
