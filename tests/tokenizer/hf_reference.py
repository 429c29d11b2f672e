#!/usr/bin/env python3
"""Hugging Face reference for the tokenizer tests (tests/tokenizer/hf_compare_test.cpp).

Runs transformers' slow BertTokenizer (pure Python, the reference implementation of BERT's rules) the way
our BertTokenizer is specified: split_special_tokens=True (a literal "[MASK]" in text is split like any
text, as google-research/bert does) and wordpiece max_input_chars_per_word=200 (google-research/bert;
transformers defaults to 100).

Input files are read as bytes and split at b"\\n" only (like our LineReader; a final "\\n" ends the last
line), each line decoded with errors="replace" (U+FFFD per maximal subpart, like ours).

  ids     --vocab V --input F --output O [--cased]   one line of space-separated ids per input line
  basic   --input F --output O [--cased]             basic-tokenizer words per line (WordPiece skipped)
  unicode --output F                                 writes lines probing every assigned code point
  utf8    --input F --output O                       code points of each line after decoding (hex)
  check                                              exits 0 when transformers and tokenizers import
"""
import argparse
import sys
import unicodedata


def read_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [line.decode("utf-8", errors="replace") for line in lines]


def make_tokenizer(vocab, cased):
    from transformers import BertTokenizer

    class SplitSpecialBertTokenizer(BertTokenizer):
        # transformers 4.46's tokenize() does not pass split_special_tokens on to _tokenize, whose
        # BasicTokenizer then keeps a whitespace-delimited "[MASK]" whole; force it.
        def _tokenize(self, text, split_special_tokens=False):
            return super()._tokenize(text, split_special_tokens=True)

    tok = SplitSpecialBertTokenizer(vocab, do_lower_case=not cased, split_special_tokens=True)
    tok.wordpiece_tokenizer.max_input_chars_per_word = 200
    return tok


def cmd_ids(args):
    tok = make_tokenizer(args.vocab, args.cased)
    with open(args.output, "w", encoding="utf-8", newline="\n") as out:
        for line in read_lines(args.input):
            ids = tok.convert_tokens_to_ids(tok.tokenize(line))
            out.write(" ".join(map(str, ids)) + "\n")


def cmd_basic(args):
    import os
    import tempfile

    # BertTokenizer needs a vocab file; WordPiece is bypassed so its content does not matter.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
        vocab = f.name
    try:
        tok = make_tokenizer(vocab, args.cased)
    finally:
        os.unlink(vocab)
    tok.wordpiece_tokenizer.tokenize = lambda word: [word]
    with open(args.output, "w", encoding="utf-8", newline="\n") as out:
        for line in read_lines(args.input):
            out.write(" ".join(tok.tokenize(line)) + "\n")


def cmd_unicode(args):
    # Every code point Python's Unicode database assigns (surrogates excluded; private use sampled: the
    # 137k Co code points all behave the same), each in two contexts: inside a word and alone.
    per_line = 64
    cps = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        cat = unicodedata.category(chr(cp))
        if cat == "Cn":
            continue
        if cat == "Co" and cp not in (0xE000, 0xF8FF, 0xF0000, 0x10FFFD):
            continue
        cps.append(cp)
    with open(args.output, "w", encoding="utf-8", newline="\n", errors="surrogatepass") as out:
        for i in range(0, len(cps), per_line):
            chunk = cps[i : i + per_line]
            # "\n" would end the line: it is probed by the edge-case lines instead.
            out.write(" ".join(f"a{chr(c)}b {chr(c)}" for c in chunk if c != 0x0A) + "\n")
    print(f"{len(cps)} code points, Unicode {unicodedata.unidata_version}", file=sys.stderr)


def cmd_check(_args):
    import importlib.util

    # find_spec only locates the packages: importing transformers takes seconds.
    missing = [m for m in ("transformers", "tokenizers") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit("missing: " + ", ".join(missing))


def cmd_utf8(args):
    # Code points of each line decoded with errors="replace", as hex; "fffd" marks a substitution.
    with open(args.output, "w", encoding="ascii", newline="\n") as out:
        for line in read_lines(args.input):
            out.write(" ".join(f"{ord(c):x}" for c in line) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ids")
    p.add_argument("--vocab", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--cased", action="store_true")
    p.set_defaults(func=cmd_ids)
    p = sub.add_parser("basic")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--cased", action="store_true")
    p.set_defaults(func=cmd_basic)
    p = sub.add_parser("unicode")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_unicode)
    p = sub.add_parser("utf8")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_utf8)
    p = sub.add_parser("check")
    p.set_defaults(func=cmd_check)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
