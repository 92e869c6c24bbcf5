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

import argparse
from pathlib import Path

from . import text as T
from .build import Split, add_output_args, add_segmentation_args, build, check_sizes
from .common import GZIP, DataPrepError, check_lang_pair, cli_main, download, find_file, is_complete, read_parallel

NAME = "multi30k"
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
    p = argparse.ArgumentParser(prog="prepare_multi30k", description=__doc__.split("\n\n")[0])
    p.add_argument("--local-dir", type=Path, help="folder with {train,val,test_2016_flickr}.{en,de}[.gz] (or raw/...)")
    p.add_argument("--download-dir", type=Path, default=Path("data-bin/downloads/multi30k"), help="download folder")
    p.add_argument("--src", default="en", help="source language (default en)")
    p.add_argument("--tgt", default="de", help="target language (default de)")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training pairs (quick runs)")
    add_segmentation_args(p, "bpe", bpe_size=10000, spm_size=8000)
    add_output_args(p, "data-bin/multi30k.{src}-{tgt}.{segmentation}")
    return p.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    check_lang_pair(args.src, args.tgt, PAIRS, NAME)
    check_sizes(args)
    if args.train_size is not None and args.train_size < 1:
        raise DataPrepError(f"--train-size must be positive, got {args.train_size}")
    dest = Path(str(args.dest).format(src=args.src, tgt=args.tgt, segmentation=args.segmentation))
    settings = {
        "dataset": NAME, "src": args.src, "tgt": args.tgt, "segmentation": args.segmentation,
        "bpe_size": args.bpe_size if args.segmentation == "bpe" else None,
        "spm_size": args.spm_size if args.segmentation == "spm" else None,
        "spm_type": args.spm_type if args.segmentation == "spm" else None, "train_size": args.train_size,
        "source": str(args.local_dir.absolute()) if args.local_dir else URL,
    }  # fmt: skip
    if is_complete(dest, settings):
        return 0
    files = locate(args)
    splits = []
    for name, split, _ in SPLITS:
        if f"{name}.{args.src}" not in files or f"{name}.{args.tgt}" not in files:
            continue
        sp, tp = files[f"{name}.{args.src}"], files[f"{name}.{args.tgt}"]
        src_lines, tgt_lines = read_parallel(sp, tp)
        if split == "train" and args.train_size is not None:
            src_lines, tgt_lines = src_lines[: args.train_size], tgt_lines[: args.train_size]
        raw = {args.src: src_lines, args.tgt: tgt_lines}
        tok = None
        if args.segmentation == "bpe":
            tok = {lang: tokenize(lines, lang) for lang, lines in raw.items()}
        splits.append(Split(split, raw=raw, tok=tok, origin={args.src: str(sp), args.tgt: str(tp)}))
    build(
        dest, settings, args.src, args.tgt, splits, args.segmentation,
        bpe_size=args.bpe_size, spm_size=args.spm_size, spm_type=args.spm_type,
        lowercased=LOWERCASED, bleu_tok_kind=BLEU_TOK_KIND, joined_dictionary=True, workers=args.workers,
        info={"sources": {k: str(v) for k, v in files.items()}},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main("prepare_multi30k", main))
