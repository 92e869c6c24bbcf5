"""WMT'16 English-German as in fairseq's examples/scaling_nmt (Ott et al. 2018): Google's preprocessed set.

Source: ``wmt16_en_de.tar.gz``, "the preprocessed WMT'16 En-De data provided by Google" that fairseq's
examples/scaling_nmt/README.md links (a Google Drive file; made by tensorflow/nmt's nmt/scripts/wmt16_en_de.sh:
Europarl v7 + Common Crawl + News Commentary v11, Moses-tokenised, cleaned to 1-80 tokens, joint BPE with 32,000
merges). Downloaded, or ``--local-dir`` holding the archive or its extracted files.

- ``--segmentation bpe`` (the published convention): binarise Google's BPE'd files as they are
  (train.tok.clean.bpe.32000, valid = newstest2013.tok.bpe.32000, test = newstest2014.tok.bpe.32000) with a joined
  dictionary, ``--nwordssrc 32768 --nwordstgt 32768``, exactly the README's fairseq-preprocess call.
- ``--segmentation spm``: a joined sentencepiece model trained on (at most ``--spm-sentences`` lines of) the original
  train.{en,de}, after the same 1-80 words clean-corpus filter on white-space words (ratio 9, Moses' default, as the
  Google script did not set one); valid/test = the original newstest2013/2014.

References: ``ref/test.<tgt>`` = the original newstest2014 (sacreBLEU); ``ref/test.tok.<tgt>`` = Google's tokenised
newstest2014, what ``--remove-bpe`` output is compared with for tokenised BLEU.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import text as T
from .build import Split
from .command import add_download_args, parse_dataset_args, prepare, used_by
from .common import (
    TAR_GZ,
    DataPrepError,
    cli_main,
    download,
    extract_tar,
    find_file,
    read_parallel,
)

NAME = "wmt16"
PROG = "prepare_wmt16"
SEGMENTATION = ("bpe", 32000, 32000)  # --segmentation's default, --bpe-size's, --spm-size's
DEFAULT_DEST = "data-bin/wmt16_{src}_{tgt}_{seg}"
LOWERCASED = False  # Google's files keep their case
# as fairseq's scripts/compound_split_bleu.sh (examples/scaling_nmt); see sage_toolkit/evaluation/facts.py
BLEU_TOK_KIND = "compound_split"
URL = "https://drive.google.com/uc?export=download&id=0B_bZck-ksdkpM25jRUN2X2UxMm8"  # fairseq scaling_nmt README
ARCHIVE = "wmt16_en_de.tar.gz"
PAIRS = [("en", "de"), ("de", "en")]
SPLITS = [("train", "train"), ("valid", "newstest2013"), ("test", "newstest2014")]


def parse_args(argv=None):
    def options(p):
        p.add_argument("--spm-sentences", type=int, default=2_000_000, help="sentencepiece training sample (lines)")

    sources = add_download_args(f"folder with {ARCHIVE} or its extracted files", "data-bin/downloads/wmt16")
    return parse_dataset_args(sys.modules[__name__], argv, sources, options)


def _folder_with_files(base: Path, scratch: Path) -> tuple[Path, str]:
    if not base.is_dir():
        raise DataPrepError(f"--local-dir {base} is not a folder")
    archive = base / ARCHIVE
    has_files = any(base.glob("newstest2014*")) or any(base.glob("train.*"))
    if archive.is_file() and not has_files:
        return extract_tar(archive, scratch), str(archive)
    return base, str(base)


def _pair(folder: Path, stem: str, src: str, tgt: str, what: str) -> dict[str, Path]:
    return {lang: find_file(folder, [f"{stem}.{lang}"], f"WMT'16 {what} ({lang})") for lang in (src, tgt)}


def read_splits(folder: Path, src: str, tgt: str, segmentation: str) -> list[Split]:
    splits = []
    for name, stem in SPLITS:
        if segmentation == "bpe":
            seg_stem = "train.tok.clean.bpe.32000" if name == "train" else f"{stem}.tok.bpe.32000"
            files = _pair(folder, seg_stem, src, tgt, f"BPE'd {stem}")
            seg = dict(zip((src, tgt), read_parallel(files[src], files[tgt]), strict=True))
            sp = Split(name, seg=seg, origin={k: str(v) for k, v in files.items()})
            if name != "train":
                tok_files = _pair(folder, f"{stem}.tok", src, tgt, f"tokenised {stem}")
                raw_files = _pair(folder, stem, src, tgt, f"original {stem}")
                sp.tok = dict(zip((src, tgt), read_parallel(tok_files[src], tok_files[tgt]), strict=True))
                sp.raw = dict(zip((src, tgt), read_parallel(raw_files[src], raw_files[tgt]), strict=True))
                for kind, side in (("tokenised", sp.tok), ("original", sp.raw)):
                    if len(side[src]) != len(seg[src]):
                        raise DataPrepError(
                            f"{kind} {stem} has {len(side[src])} lines but its BPE'd version has {len(seg[src])}"
                        )
        else:
            files = _pair(folder, stem, src, tgt, f"original {stem}")
            a, b = read_parallel(files[src], files[tgt])
            if name == "train":
                keep = T.clean_corpus(a, b, 1, 80, ratio=9)
                a, b = [T.clean_line(a[i]) for i in keep], [T.clean_line(b[i]) for i in keep]
            sp = Split(name, raw={src: a, tgt: b}, origin={k: str(v) for k, v in files.items()})
        splits.append(sp)
    return splits


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.segmentation == "bpe" and args.bpe_size != 32000:
        raise DataPrepError("--bpe-size: Google's WMT'16 files come with 32,000 BPE merges; use --segmentation spm")
    seg_name = "bpe32k" if args.segmentation == "bpe" else f"spm{args.spm_size}"  # bpe: fairseq README's name
    dest = Path(str(args.dest).format(src=args.src, tgt=args.tgt, seg=seg_name))
    settings = {
        "dataset": NAME, "src": args.src, "tgt": args.tgt, "segmentation": args.segmentation,
        "spm_size": used_by(args, "spm", args.spm_size), "spm_type": used_by(args, "spm", args.spm_type),
        "spm_sentences": used_by(args, "spm", args.spm_sentences),
        "source": str(args.local_dir.absolute()) if args.local_dir else URL,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="wmt16-") as scratch:  # the extracted archive, until the build is done

        def read() -> dict:
            if args.local_dir is not None:
                folder, origin = _folder_with_files(args.local_dir, Path(scratch))
            else:
                archive = download(URL, args.download_dir / ARCHIVE, TAR_GZ)
                folder, origin = extract_tar(archive, Path(scratch)), URL
            codes = folder / "bpe.32000"
            return {
                "splits": read_splits(folder, args.src, args.tgt, args.segmentation),
                "copy_files": {"bpe.32000": codes} if codes.is_file() and args.segmentation == "bpe" else None,
                "info": {"source": origin, "valid": "newstest2013", "test": "newstest2014"},
            }

        extra = ["--nwordssrc", "32768", "--nwordstgt", "32768"] if args.segmentation == "bpe" else []
        return prepare(
            sys.modules[__name__], args, dest, settings, read, joined_dictionary=True, preprocess_extra=extra,
            spm_sentences=args.spm_sentences,
        )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(cli_main(PROG, main))
