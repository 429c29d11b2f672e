#!/usr/bin/env python3
"""Make a small text-classification task from the Python documentation sources.

    tests/jobs/make_doc_sections_task.py OUT [--corpus DIR] [--classes 6] [--per-class 300]
        [--dev-fraction 0.25] [--seed 1] [--exclude-list FILE]

The task: which top-level section of the Python docs (library, c-api, whatsnew, howto, ...) does a
paragraph come from. The corpus is the reStructuredText sources Sphinx ships with the HTML docs
(Debian: python3-doc, /usr/share/doc/python3*/html/_sources); the label of a file is its first path
component under _sources (files directly in _sources are skipped). Paragraphs are blocks separated by
blank lines. Literal (code) blocks are skipped; markup-only lines (directives "..", field lists
":Author: x", section rules "===", "---", ...) are dropped; inline markup is unwrapped
(:func:`~x` -> x, ``x`` -> x, `x <url>`_ -> x); whitespace is collapsed and the text is truncated to
60 words. Only prose-like paragraphs are kept (at least 8 words, mostly letters), and a text found in
two sections is dropped. The --classes sections with the most paragraphs are used, each subsampled to
the same number of paragraphs (--per-class, or fewer if a section has fewer), and split stratified
into OUT/train.tsv and OUT/dev.tsv ("text<TAB>label" lines after a "text<TAB>label" header).
--exclude-list names files to leave out, e.g. files held out of a pre-training corpus: paths
relative to _sources ("library/os.rst.txt"; the ".txt" may be left off), one a line, '#' comments.
Deterministic for a given corpus and --seed.
Exit codes: 0 written, 2 bad arguments or too little data.
"""

import argparse
import collections
import glob
import os
import random
import re
import sys

MAX_WORDS = 60
MIN_WORDS = 8
MIN_LETTER_FRACTION = 0.75
# Directives and comments, field lists (":Author: x", not a line opening with a role), doctest lines,
# section rules.
MARKUP_LINE = re.compile(r"^(\.\.|:[^:`]+:(\s|$)|>>>|\.\.\.\s|([=\-~^*#+`'\"_])\3{2,}\s*$)")
CODE_DIRECTIVE = re.compile(r"\.\. (code-block|code|sourcecode|doctest|test\w+|"
                            r"productionlist|literalinclude)::")
LITERAL = re.compile(r"``(.+?)``")
ROLE = re.compile(r"(?:(?::[\w.+-]+)+:)?`[~!]?([^`]*?)(?:\s*<[^>]*>)?`_{0,2}")  # :role:`~x <y>`, `x <y>`_


def default_corpus():
    found = sorted(glob.glob("/usr/share/doc/python3*/html/_sources"))
    return found[0] if found else None


def clean_paragraph(lines):
    """The prose text of one blank-line-separated block, or None if it is not prose-like."""
    if MARKUP_LINE.match(lines[0].strip()):  # a directive, field list, doctest or over-lined title
        return None
    kept = [line.strip() for line in lines if not MARKUP_LINE.match(line.strip())]
    text = ROLE.sub(r"\1", LITERAL.sub(r"\1", " ".join(kept))).replace("`", "").replace("**", "")
    text = text.replace("::", ":").replace("\\", "")
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    visible = "".join(words)
    if sum(c.isalpha() for c in visible) < MIN_LETTER_FRACTION * len(visible):
        return None
    return " ".join(words[:MAX_WORDS])


def blocks(path):
    block = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield block
                block = []
    if block:
        yield block


def paragraphs(path):
    """The blank-line-separated blocks of a file, less literal blocks (the more indented blocks after
    a paragraph ending in "::" or after a code directive)."""
    literal_indent = None
    for block in blocks(path):
        indent = len(block[0]) - len(block[0].lstrip())
        if literal_indent is not None and indent > literal_indent:
            continue
        first = block[0].strip()
        starts_code = CODE_DIRECTIVE.match(first) or (block[-1].endswith("::") and not first.startswith(".."))
        literal_indent = indent if starts_code else None
        yield block


def collect(corpus, excluded):
    """{label: [text, ...]} over the corpus, in sorted file order; texts seen under two labels dropped."""
    by_text = {}
    for root, dirs, files in os.walk(corpus, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, corpus)
            if os.sep not in rel or not name.endswith(".txt") or {rel, rel[:-4]} & excluded:
                continue
            label = rel.split(os.sep)[0]
            for block in paragraphs(path):
                text = clean_paragraph(block)
                if text is not None:
                    by_text.setdefault(text, set()).add(label)
    sections = collections.defaultdict(list)
    for text, labels in by_text.items():
        if len(labels) == 1:
            sections[labels.pop()].append(text)
    return sections


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output directory (train.tsv, dev.tsv)")
    parser.add_argument("--corpus", default=default_corpus(), help="the docs' _sources directory")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--dev-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exclude-list", help="files to skip, relative to _sources, one per line")
    args = parser.parse_args()
    if not args.corpus or not os.path.isdir(args.corpus):
        parser.error(f"no documentation sources at {args.corpus!r} (install python3-doc or pass --corpus)")
    if args.classes < 2 or args.per_class < 2 or not 0 < args.dev_fraction < 1:
        parser.error("need --classes >= 2, --per-class >= 2 and 0 < --dev-fraction < 1")
    excluded = set()
    if args.exclude_list:
        if not os.path.isfile(args.exclude_list):
            parser.error(f"--exclude-list {args.exclude_list}: no such file")
        with open(args.exclude_list, encoding="utf-8") as f:
            excluded = {os.path.normpath(l.strip()) for l in f if l.strip() and not l.startswith("#")}

    sections = collect(args.corpus, excluded)
    ranked = sorted(sections, key=lambda label: (-len(sections[label]), label))
    print("make_doc_sections_task: paragraphs per section: "
          + ", ".join(f"{label} {len(sections[label])}" for label in ranked))
    chosen = sorted(ranked[:args.classes])
    if len(chosen) < args.classes:
        parser.error(f"only {len(chosen)} sections with paragraphs in {args.corpus}")
    per_class = min(args.per_class, min(len(sections[label]) for label in chosen))
    if per_class < 2:
        parser.error(f"a chosen section has {per_class} paragraph(s); use fewer --classes")
    if per_class < args.per_class:
        print(f"make_doc_sections_task: warning: only {per_class} paragraphs per class available",
              file=sys.stderr)

    rng = random.Random(args.seed)
    train, dev = [], []
    n_dev = max(1, round(per_class * args.dev_fraction))
    for label in chosen:
        texts = rng.sample(sections[label], per_class)
        dev += [(text, label) for text in texts[:n_dev]]
        train += [(text, label) for text in texts[n_dev:]]
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        rng.shuffle(rows)
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            f.write("text\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
    print(f"make_doc_sections_task: {len(chosen)} classes x {per_class} paragraphs "
          f"({', '.join(chosen)}): {len(train)} train / {len(dev)} dev -> {args.out}")


if __name__ == "__main__":
    main()
