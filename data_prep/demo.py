"""The embedded demo corpus: Tatoeba German-English pairs (CC BY 2.0, see data_prep/demo/ATTRIBUTION.md).

Direction German -> English by default (``--src de --tgt en``; ``--src en --tgt de`` also works).

Split: the pairs are grouped by their *source* sentence (compared after collapsing white space and case-folding, so
"Hallo!" and "hallo!" count as one); the distinct sources are shuffled with ``--seed`` and the first ``--valid-size``
go to valid, the next ``--test-size`` to test, the rest to train. Every pair of a source goes to that source's split,
so no valid or test source sentence (in that normalised form, hence also verbatim) occurs in train. Valid and test
keep one pair per source (the first in the file: one reference per sentence); train keeps all pairs of its sources,
shuffled with the same seed, of which ``--train-size`` are used (the first N of that fixed order, so a smaller
train set is a subset of a larger one and valid/test do not depend on it).

Default segmentation: a joined sentencepiece model (8,000 pieces) on the original text; ``--segmentation bpe``
uses Moses tokenisation (case kept) and joint BPE instead.
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

from . import text as T
from .build import Split
from .command import parse_dataset_args, prepare, used_by
from .common import DataPrepError, cli_main, read_lines

NAME = "tatoeba-demo"
PROG = "prepare_demo"
SEGMENTATION = ("spm", 8000, 8000)  # --segmentation's default, --bpe-size's, --spm-size's
DEFAULT_DEST = "data-bin/tatoeba-demo.{src}-{tgt}.{segmentation}.{train}"
LICENSE = "CC BY 2.0; attribution: www.manythings.org/anki and tatoeba.org"
LOWERCASED = False  # BPE preparations: the Tatoeba text keeps its case
BLEU_TOK_KIND = "tokenized"  # see sage_toolkit/evaluation/facts.py
CORPUS = Path(__file__).resolve().parent / "demo" / "deu.txt.gz"
PAIRS = [("de", "en"), ("en", "de")]


def read_tatoeba(path: Path = CORPUS) -> list[tuple[str, str]]:
    """(English, German) pairs of a manythings.org ``deu.txt`` (``English<TAB>German`` per line)."""
    path = Path(path).absolute()
    stat = path.stat() if path.is_file() else None
    return list(_read_tatoeba(path, stat.st_mtime_ns if stat else None))


@functools.lru_cache(maxsize=2)
def _read_tatoeba(path: Path, _mtime) -> tuple[tuple[str, str], ...]:
    pairs = []
    for n, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise DataPrepError(f"{path} line {n}: expected 'English<TAB>German', got {line[:80]!r}")
        pairs.append((fields[0].strip(), fields[1].strip()))  # later manythings files add a 3rd (attribution) field
    return tuple(pairs)


def source_key(sentence: str) -> str:
    return " ".join(sentence.split()).casefold()


def split_pairs(
    pairs: list[tuple[str, str]], src_index: int, valid_size: int, test_size: int, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Deterministic split of (en, de) pairs by source sentence; see the module docstring."""
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(source_key(pair[src_index]), []).append(i)
    keys = list(groups)  # first-appearance order: deterministic
    if valid_size + test_size >= len(keys):
        raise DataPrepError(
            f"--valid-size {valid_size} + --test-size {test_size} leave no training data "
            f"({len(keys)} distinct source sentences)"
        )
    rng = random.Random(seed)
    rng.shuffle(keys)
    valid_keys, test_keys = keys[:valid_size], keys[valid_size : valid_size + test_size]
    train_idx = [i for k in keys[valid_size + test_size :] for i in groups[k]]
    rng.shuffle(train_idx)
    return {
        "train": [pairs[i] for i in train_idx],
        "valid": [pairs[groups[k][0]] for k in valid_keys],
        "test": [pairs[groups[k][0]] for k in test_keys],
    }


def to_splits(parts: dict[str, list[tuple[str, str]]], src: str, tgt: str, corpus: Path, tokenize=None) -> list[Split]:
    """The (en, de) pairs of each split as a :class:`Split` from ``src`` to ``tgt``; with ``tokenize`` (lines, lang
    -> lines), also their tokenised text."""
    splits = []
    for name, ps in parts.items():
        raw = {"en": [p[0] for p in ps], "de": [p[1] for p in ps]}
        raw = {src: raw[src], tgt: raw[tgt]}
        tok = {lang: tokenize(lines, lang) for lang, lines in raw.items()} if tokenize else None
        splits.append(Split(name, raw=raw, tok=tok, origin={lang: f"{corpus} ({name}.{lang})" for lang in raw}))
    return splits


def parse_args(argv=None):
    def sources(p):
        p.add_argument("--corpus", type=Path, default=CORPUS, help="a manythings.org deu.txt[.gz] (default: embedded)")

    def options(p):
        p.add_argument("--train-size", type=int, default=None, help="training pairs to use (default: all, ~166k)")
        p.add_argument("--valid-size", type=int, default=1000, help="valid sentences (default 1000)")
        p.add_argument("--test-size", type=int, default=1000, help="test sentences (default 1000)")
        p.add_argument("--seed", type=int, default=1, help="shuffle seed (default 1)")

    return parse_dataset_args(sys.modules[__name__], argv, sources, options)


def main(argv=None) -> int:
    args = parse_args(argv)
    for opt in ("train_size", "valid_size", "test_size"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise DataPrepError(f"--{opt.replace('_', '-')} must be positive, got {value}")
    train_name = "all" if args.train_size is None else f"train{args.train_size}"
    dest = Path(str(args.dest).format(src=args.src, tgt=args.tgt, segmentation=args.segmentation, train=train_name))
    settings = {
        "dataset": NAME, "src": args.src, "tgt": args.tgt, "segmentation": args.segmentation,
        "bpe_size": used_by(args, "bpe", args.bpe_size), "spm_size": used_by(args, "spm", args.spm_size),
        "spm_type": used_by(args, "spm", args.spm_type),
        "train_size": args.train_size, "valid_size": args.valid_size, "test_size": args.test_size,
        "seed": args.seed, "corpus": str(args.corpus.absolute()),
    }  # fmt: skip

    def read() -> dict:
        pairs = read_tatoeba(args.corpus)
        parts = split_pairs(pairs, 1 if args.src == "de" else 0, args.valid_size, args.test_size, args.seed)
        available = len(parts["train"])
        if args.train_size is not None:
            if args.train_size > available:
                raise DataPrepError(f"--train-size {args.train_size} is more than the {available} training pairs")
            parts["train"] = parts["train"][: args.train_size]
        tokenize = T.moses_tokenize if args.segmentation == "bpe" else None
        info = {"corpus": str(args.corpus), "license": LICENSE, "train_pairs_available": available,
                "corpus_pairs": len(pairs)}  # fmt: skip
        return {"splits": to_splits(parts, args.src, args.tgt, args.corpus, tokenize), "info": info}

    return prepare(sys.modules[__name__], args, dest, settings, read, joined_dictionary=True)


if __name__ == "__main__":
    raise SystemExit(cli_main(PROG, main))
