#!/usr/bin/env python3
"""Plot the training curves of one or more electra-train runs into a PNG.

    jobs/plot_metrics.py RUN_DIR [RUN_DIR ...] [--output plot.png] [--smooth N] [--title TEXT]

Reads RUN_DIR/metrics.jsonl (one JSON object per logged step, as electra-train writes it) and draws,
against the optimizer step, one line per run: the total loss, the generator (masked-LM) loss, the
discriminator loss beside the entropy of its prior (dashed: a collapsed discriminator's loss lies on it),
the accuracies (masked-LM solid, discriminator dashed) and tokens/s. Held-out
evaluations (lines with "eval/..." keys, from train.eval_every) are drawn with markers: eval/masked_lm_loss
on the generator panel, eval/disc_loss on the discriminator panel, eval/masked_lm_accuracy and
eval/disc_accuracy on the accuracy panel, and eval/disc_auc in a sixth panel.

A torn last line (a run killed mid-write) is skipped; when a step appears twice (a resumed run), the
later line wins. Needs matplotlib (Debian: python3-matplotlib); draws with the Agg backend, no display.
Exit codes: 0 written, 1 no metrics in any run, 2 bad arguments or matplotlib missing.
"""

import argparse
import json
import math
import os
import sys

TRAIN_PANELS = [
    # (title, [(key, label suffix, line style)], y label)
    ("total loss", [("loss", "", "-")], "loss"),
    ("generator (masked LM) loss", [("gen_loss", "", "-")], "cross-entropy"),
    # The prior's entropy (dashed): a discriminator that learned only the base rate has its loss on it.
    ("discriminator loss and its prior", [("disc_loss", "", "-"), ("disc_prior_entropy", " prior", "--")],
     "sigmoid cross-entropy (nats)"),
    ("accuracy", [("mlm_accuracy", " mlm", "-"), ("disc_accuracy", " disc", "--")], "accuracy"),
    ("throughput (real tokens)", [("tokens_per_s", "", "-")], "real (non-pad) tokens / s"),
]
# Held-out keys drawn on the panels above (by panel index), and the AUC panel.
EVAL_ON_PANEL = {
    1: [("eval/masked_lm_loss", " eval", "o")],
    2: [("eval/disc_loss", " eval", "o")],
    3: [("eval/masked_lm_accuracy", " eval mlm", "o"), ("eval/disc_accuracy", " eval disc", "s")],
}
AUC_KEY = "eval/disc_auc"


def read_metrics(run_dir):
    """{step: record} of RUN_DIR/metrics.jsonl; bad lines (a torn tail) are skipped with a warning."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} an electra-train run directory?)")
    train, evals = {}, {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError, OverflowError):  # UnicodeDecodeError is a ValueError
                print(f"plot_metrics: {path}:{number}: skipping a line that is not a metrics record",
                      file=sys.stderr)
                continue
            is_eval = any(k.startswith("eval/") for k in record)
            target = evals if is_eval else train
            target.setdefault(step, {}).update(record)
    return train, evals


def series(records, key, smooth=1):
    """Sorted (steps, values) of the finite values of `key`, with a trailing moving average of `smooth`."""
    def finite(value):
        try:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        except OverflowError:  # an integer beyond float
            return False
    points = [(s, r[key]) for s, r in sorted(records.items()) if finite(r.get(key))]
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    if smooth > 1 and values:
        out, total = [], 0.0
        for i, v in enumerate(values):
            total += v
            if i >= smooth:
                total -= values[i - smooth]
            out.append(total / min(i + 1, smooth))
        values = out
    return steps, values


def labels_for(run_dirs):
    """Short, distinct labels: the directory names, or the paths when names repeat."""
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(d) for d in run_dirs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="electra-train run directories")
    parser.add_argument("--output", "-o", help="PNG to write (default: RUN_DIR/metrics.png for one run, "
                                                "else metrics.png)")
    parser.add_argument("--smooth", type=int, default=1, help="moving average over N logged steps (default 1)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be at least 1")
    output = args.output or (os.path.join(args.runs[0], "metrics.png") if len(args.runs) == 1 else "metrics.png")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot_metrics: matplotlib is missing ({e}); install python3-matplotlib", file=sys.stderr)
        return 2

    runs = []
    for run_dir in args.runs:
        try:
            runs.append(read_metrics(run_dir))
        except OSError as e:
            print(f"plot_metrics: {e}", file=sys.stderr)
            return 2
    if not any(train or evals for train, evals in runs):
        print("plot_metrics: no metrics in " + ", ".join(args.runs), file=sys.stderr)
        return 1
    has_eval = any(evals for _, evals in runs)

    fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    axes = axes.flatten()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, (train, evals)) in enumerate(zip(labels_for(args.runs), runs)):
        color = colors[index % len(colors)]
        for panel, (title, keys, ylabel) in enumerate(TRAIN_PANELS):
            ax = axes[panel]
            for key, suffix, style in keys:
                steps, values = series(train, key, args.smooth)
                if steps:
                    # A single point has no line to draw: a marker shows it (a run that logged once).
                    ax.plot(steps, values, style, color=color, linewidth=1.4, label=label + suffix,
                            marker="o" if len(steps) == 1 else None)
            for key, suffix, marker in EVAL_ON_PANEL.get(panel, []):
                steps, values = series(evals, key)
                if steps:
                    ax.plot(steps, values, ":", marker=marker, color=color, markersize=5, label=label + suffix)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
        steps, values = series(evals, AUC_KEY)
        if steps:
            axes[5].plot(steps, values, "-", marker="o", color=color, markersize=5, label=label)

    if has_eval:
        axes[5].set_title("held-out discriminator ROC AUC")
        axes[5].set_xlabel("step")
        axes[5].set_ylabel("AUC")
    else:
        axes[5].axis("off")
    for ax in axes:
        if ax.get_lines():
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    axes[3].set_ylim(bottom=0)
    fig.suptitle(args.title or "electra-train: " + ", ".join(labels_for(args.runs)))
    if not os.path.splitext(output)[1]:
        output += ".png"  # what matplotlib writes for a name without a format
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        fig.savefig(output, dpi=100)
    except (OSError, ValueError) as e:  # an unwritable place, a format matplotlib does not know (.txt)
        print(f"plot_metrics: cannot write {output}: {e}", file=sys.stderr)
        return 2
    finally:
        plt.close(fig)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
