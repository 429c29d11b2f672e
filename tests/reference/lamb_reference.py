#!/usr/bin/env python3
"""LAMB as NVIDIA DeepLearningExamples' ELECTRA (TensorFlow2) pre-trains with it, in PyTorch float64, for
tests/reference/lamb_reference_test.cpp. Written from their recipe, not from electra-mpi's code:

  optimization.py create_optimizer(optimizer="lamb"): tfa.optimizers.LAMB with
      exclude_from_weight_decay = ["layer_norm", "bias", "LayerNorm"] and, with --skip_adaptive (their
      scripts/run_pretraining.sh passes it), exclude_from_layer_adaptation = the same list;
  run_pretraining.py train_one_step: gradients clipped by global norm (tf.clip_by_global_norm) first;
  tfa LAMB, per variable at step t = iterations + 1:
      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
      u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  [+ wd * w unless excluded from weight decay]
      r = ||w|| / ||u|| if both > 0 else 1                 [1 when excluded from layer adaptation]
      w = w - r * lr * u
The learning rate follows google-research/electra's schedule (what electra-mpi uses for both optimizers):
lr(t) = lr0 * (1 - min(t, T) / T)^p * min(1, t / W).

TensorFlow holds the hyperparameters and the clipping factor in float32; so does this script (rounded
with torch) before computing everything else in float64.

Usage: lamb_reference.py CASE_DIR
  CASE_DIR/case.json   {"n", "steps", "lr", "warmup_steps", "total_steps", "decay_power", "beta1",
                        "beta2", "eps", "weight_decay", "clip_norm", "tensors": [{"name", "offset", "size"}]}
  CASE_DIR/params.f32  n float32 (little-endian);  CASE_DIR/grads.f32  steps x n float32
Writes CASE_DIR/out_params.f64, out_m.f64, out_v.f64 (n float64 each) and out.json {"lr": [...],
"clip_factor": [...], "trust_ratio": [[per tensor] per step]}.
"""

import json
import math
import os
import re
import sys

import numpy
import torch

EXCLUDE = ["layer_norm", "bias", "LayerNorm"]  # NVIDIA's lists (regular expressions searched in the name)


def excluded(name):
    return any(re.search(pattern, name) is not None for pattern in EXCLUDE)


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32))


def learning_rate(case, step):
    T = case["total_steps"]
    t = min(max(step, 0), T)
    lr = case["lr"] * (1.0 - t / T) ** case["decay_power"]
    if case["warmup_steps"] > 0:
        lr *= min(1.0, step / case["warmup_steps"])
    return lr


def main():
    case_dir = sys.argv[1]
    with open(os.path.join(case_dir, "case.json")) as f:
        case = json.load(f)
    n, steps = case["n"], case["steps"]
    flat = torch.from_numpy(numpy.fromfile(os.path.join(case_dir, "params.f32"), dtype="<f4", count=n))
    flat = flat.to(torch.float64)
    all_grads = numpy.fromfile(os.path.join(case_dir, "grads.f32"), dtype="<f4", count=steps * n)
    all_grads = torch.from_numpy(all_grads).to(torch.float64).reshape(steps, n)
    tensors = [(t["name"], t["offset"], t["size"]) for t in case["tensors"]]
    params = [flat[o:o + s].clone() for _, o, s in tensors]
    ms = [torch.zeros(s, dtype=torch.float64) for _, _, s in tensors]
    vs = [torch.zeros(s, dtype=torch.float64) for _, _, s in tensors]
    b1, b2, eps, wd = (f32(case[k]) for k in ("beta1", "beta2", "eps", "weight_decay"))
    out = {"lr": [], "clip_factor": [], "trust_ratio": []}
    for step in range(steps):
        grads = [all_grads[step, o:o + s] for _, o, s in tensors]
        # tf.clip_by_global_norm: g * clip_norm / max(global_norm, clip_norm).
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        clip = case["clip_norm"]
        factor = f32(clip / max(norm, clip)) if clip > 0 else 1.0
        lr = f32(learning_rate(case, step))
        t = step + 1
        ratios = []
        for k, (name, _, _) in enumerate(tensors):
            g = grads[k] * factor
            w = params[k]
            ms[k] = b1 * ms[k] + (1.0 - b1) * g
            vs[k] = b2 * vs[k] + (1.0 - b2) * g * g
            m_hat = ms[k] / (1.0 - b1 ** t)
            v_hat = vs[k] / (1.0 - b2 ** t)
            update = m_hat / (torch.sqrt(v_hat) + eps)
            if not excluded(name) and wd > 0:
                update = update + wd * w
            ratio = 1.0
            if not excluded(name):
                w_norm = float(torch.linalg.vector_norm(w))
                u_norm = float(torch.linalg.vector_norm(update))
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            params[k] = w - ratio * lr * update
            ratios.append(ratio)
        out["lr"].append(lr)
        out["clip_factor"].append(factor)
        out["trust_ratio"].append(ratios)
    for name, buffers in (("out_params", params), ("out_m", ms), ("out_v", vs)):
        result = torch.zeros(n, dtype=torch.float64)
        for (_, o, s), b in zip(tensors, buffers):
            result[o:o + s] = b
        result.numpy().astype("<f8").tofile(os.path.join(case_dir, name + ".f64"))
    with open(os.path.join(case_dir, "out.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
