"""Multi30k (WMT'16 multimodal task 1) English-German: a fairseq data-bin with either segmentation.

Sources: the official repository github.com/multi30k/dataset, ``data/task1/raw/{split}.{en,de}.gz`` (downloaded), or
``--local-dir`` holding the same files (directly or under ``raw/``, ``.gz`` or not), e.g. ../shared/data/multi30k.

Splits: train (29,000) -> train, val (1,014) -> valid, test_2016_flickr (1,000) -> test, and test_2017_flickr
(1,000) -> test1 where present.

Segmentations:
- ``bpe``: the dataset's own tokenisation (its scripts/task1-tokenize.sh: lowercase.perl, then
  normalize-punctuation.perl -l L, then tokenizer.perl -l L), then joint BPE learned on train.en + train.de (as its
  scripts/task1-bpe.sh; 10,000 merges by default) and a joined fairseq dictionary.
- ``spm``: a joined sentencepiece model on the original (cased, untokenised) train text.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import text as T
from .build import Split
from .command import add_download_args, parse_dataset_args, prepare, used_by
from .common import GZIP, DataPrepError, cli_main, download, find_file, read_parallel

NAME = "multi30k"
PROG = "prepare_multi30k"
SEGMENTATION = ("bpe", 10000, 8000)  # --segmentation's default, --bpe-size's, --spm-size's
DEFAULT_DEST = "data-bin/multi30k.{src}-{tgt}.{segmentation}"
DOWNLOAD_DIR = "data-bin/downloads/multi30k"
LOWERCASED = True  # BPE preparations: the dataset's task1-tokenize.sh lowercases
BLEU_TOK_KIND = "tokenized"  # see sage_toolkit/evaluation/facts.py
URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}.gz"
PAIRS = [("en", "de"), ("de", "en")]
SPLITS = [("train", "train", True), ("val", "valid", True), ("test_2016_flickr", "test", True),
          ("test_2017_flickr", "test1", False)]  # fmt: skip


def tokenize(lines: list[str], lang: str) -> list[str]:
    """Multi30k's task1-tokenize.sh: lowercase, normalise punctuation, Moses-tokenise (escaping on)."""
    return T.moses_tokenize(T.moses_normalize_punct(T.lowercase(lines), lang), lang)


def parse_args(argv=None):
    def options(p):
        p.add_argument("--train-size", type=int, default=None, help="use only the first N training pairs (quick runs)")

    sources = add_download_args("folder with {train,val,test_2016_flickr}.{en,de}[.gz] (or raw/...)", DOWNLOAD_DIR)
    return parse_dataset_args(sys.modules[__name__], argv, sources, options)


def locate(args) -> dict[str, Path]:
    """The input files: the local folder's, or downloads of the official repository's."""
    files = {}
    if args.local_dir is not None:
        base = args.local_dir
        if not base.is_dir():
            raise DataPrepError(f"--local-dir {base} is not a folder")
        folder = base / "raw" if (base / "raw").is_dir() else base
        for name, _, required in SPLITS:
            for lang in (args.src, args.tgt):
                try:
                    files[f"{name}.{lang}"] = find_file(folder, [f"{name}.{lang}"], f"Multi30k {name}.{lang}")
                except DataPrepError:
                    if required:
                        raise
    else:
        for name, _, _ in SPLITS:
            for lang in (args.src, args.tgt):
                fname = f"{name}.{lang}"
                files[fname] = download(URL.format(name=fname), args.download_dir / f"{fname}.gz", GZIP)
    return files


def read_splits(files: dict[str, Path], src: str, tgt: str, train_size: int | None, tokenized: bool) -> list[Split]:
    """The splits of the located files (test1 only where both its files exist), the training set cut to
    ``train_size`` pairs; with ``tokenized``, also Multi30k's own tokenisation of each (BPE's input)."""
    splits = []
    for name, split, _ in SPLITS:
        if f"{name}.{src}" not in files or f"{name}.{tgt}" not in files:
            continue
        sp, tp = files[f"{name}.{src}"], files[f"{name}.{tgt}"]
        src_lines, tgt_lines = read_parallel(sp, tp)
        if split == "train" and train_size is not None:
            src_lines, tgt_lines = src_lines[:train_size], tgt_lines[:train_size]
        raw = {src: src_lines, tgt: tgt_lines}
        tok = {lang: tokenize(lines, lang) for lang, lines in raw.items()} if tokenized else None
        splits.append(Split(split, raw=raw, tok=tok, origin={src: str(sp), tgt: str(tp)}))
    return splits


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_size is not None and args.train_size < 1:
        raise DataPrepError(f"--train-size must be positive, got {args.train_size}")
    dest = Path(str(args.dest).format(src=args.src, tgt=args.tgt, segmentation=args.segmentation))
    settings = {
        "dataset": NAME, "src": args.src, "tgt": args.tgt, "segmentation": args.segmentation,
        "bpe_size": used_by(args, "bpe", args.bpe_size), "spm_size": used_by(args, "spm", args.spm_size),
        "spm_type": used_by(args, "spm", args.spm_type), "train_size": args.train_size,
        "source": str(args.local_dir.absolute()) if args.local_dir else URL,
    }  # fmt: skip

    def read() -> dict:
        files = locate(args)
        splits = read_splits(files, args.src, args.tgt, args.train_size, tokenized=args.segmentation == "bpe")
        return {"splits": splits, "info": {"sources": {k: str(v) for k, v in files.items()}}}

    return prepare(sys.modules[__name__], args, dest, settings, read, joined_dictionary=True)


if __name__ == "__main__":
    raise SystemExit(cli_main(PROG, main))
