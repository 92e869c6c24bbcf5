"""IWSLT'14 German-English (TED talks), prepared as fairseq's examples/translation/prepare-iwslt14.sh does.

Sources: ``de-en.tgz`` of the IWSLT 2014 evaluation campaign (WIT3), downloaded from fairseq's mirror
(the URL its prepare-iwslt14.sh uses today) or WIT3's original address, or ``--local-dir`` holding that archive,
its extracted ``de-en/`` folder, or the files themselves (``train.tags.de-en.{de,en}``, ``IWSLT14.TED*.{de,en}.xml``).

The published convention (``--segmentation bpe``), step by step as in prepare-iwslt14.sh:
1. train: from ``train.tags.de-en.L`` drop the lines containing ``<url>``, ``<talkid>`` or ``<keywords>``, delete
   the ``<title>``/``</title>``/``<description>``/``</description>`` tags, Moses-tokenise (``tokenizer.perl -l L``);
2. clean the pairs as ``clean-corpus-n.perl -ratio 1.5 ... 1 175``, then lowercase (``lowercase.perl``);
3. valid = every 23rd line of that (lines 23, 46, ...), train = the other lines;
4. test = the five sets IWSLT14.TED.dev2010, IWSLT14.TEDX.dev2012, IWSLT14.TED.tst2010, tst2011, tst2012
   (in that order): the ``<seg id=...>`` lines, tags removed, ``\u2019`` -> ``'``, tokenised, lowercased;
5. BPE: ``learn_bpe.py -s 10000`` on train.de + train.en (one merge table), applied to every file;
6. fairseq-preprocess with separate dictionaries (fairseq's examples/translation/README.md).
With ``--segmentation spm`` the same sentence pairs are kept (steps 1-4 decide them), but their original text
(cased, untokenised) goes into a joined sentencepiece model.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from . import text as T
from .build import Split
from .command import add_download_args, parse_dataset_args, prepare, used_by
from .common import (
    TAR_GZ,
    DataPrepError,
    check_same_length,
    cli_main,
    download,
    extract_tar,
    find_file,
    read_lines,
)

NAME = "iwslt14"
PROG = "prepare_iwslt14"
SEGMENTATION = ("bpe", 10000, 10000)  # --segmentation's default, --bpe-size's, --spm-size's
DOWNLOAD_DIR = "data-bin/downloads/iwslt14"
DEFAULT_DEST = "data-bin/iwslt14.tokenized.{src}-{tgt}"
LOWERCASED = True  # BPE preparations: the recipe lowercases the tokenised text (prepare-iwslt14.sh's lowercase.perl)
BLEU_TOK_KIND = "tokenized"  # see sage_toolkit/evaluation/facts.py
URLS = [
    "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz",  # fairseq's prepare-iwslt14.sh (current)
    "https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz",  # the script's original URL (WIT3)
]
PAIRS = [("de", "en"), ("en", "de")]
TEST_SETS = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
             "IWSLT14.TED.tst2012"]  # fmt: skip
VALID_EVERY = 23
CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO = 1, 175, 1.5

_DROP = ("<url>", "<talkid>", "<keywords>")
_DELETE = ("<title>", "</title>", "<description>", "</description>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def train_text(lines: list[str]) -> list[str]:
    """prepare-iwslt14.sh's ``grep -v`` / ``sed`` pipeline over ``train.tags.de-en.L``."""
    out = []
    for line in lines:
        if any(tag in line for tag in _DROP):
            continue
        for tag in _DELETE:
            line = line.replace(tag, "")
        out.append(line)
    return out


def seg_text(lines: list[str], normalize_quote: bool = True) -> list[str]:
    """The ``grep '<seg id'`` / ``sed`` pipeline over an ``IWSLT14.*.xml`` file (before tokenisation)."""
    out = []
    for line in lines:
        if "<seg id" not in line:
            continue
        line = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
        out.append(line.replace("\u2019", "'") if normalize_quote else line.strip())
    return out


def find_inputs(folder: Path, src: str, tgt: str) -> dict[str, Path]:
    """The train and test files inside an extracted ``de-en.tgz`` (``folder`` or ``folder/de-en``)."""
    if (folder / "de-en").is_dir():
        folder = folder / "de-en"
    files = {}
    for lang in (src, tgt):
        files[f"train.{lang}"] = find_file(folder, [f"train.tags.de-en.{lang}"], f"IWSLT'14 train ({lang})")
        for name in TEST_SETS:
            files[f"{name}.{lang}"] = find_file(folder, [f"{name}.de-en.{lang}.xml"], f"IWSLT'14 {name} ({lang})")
    return files


def locate(args, scratch: Path) -> tuple[dict[str, Path], str]:
    if args.local_dir is not None:
        base = args.local_dir
        if not base.is_dir():
            raise DataPrepError(f"--local-dir {base} is not a folder")
        archive = base / "de-en.tgz"
        if not (base / "de-en").is_dir() and not (base / "train.tags.de-en.de").exists() and archive.is_file():
            return find_inputs(extract_tar(archive, scratch), args.src, args.tgt), str(archive)
        return find_inputs(base, args.src, args.tgt), str(base)
    errors = []
    for url in URLS:
        try:
            archive = download(url, args.download_dir / "de-en.tgz", TAR_GZ)
            return find_inputs(extract_tar(archive, scratch), args.src, args.tgt), url
        except DataPrepError as e:
            errors.append(str(e))
    raise DataPrepError("could not download IWSLT'14:\n  " + "\n  ".join(errors))


def read_splits(files: dict[str, Path], src: str, tgt: str, segmentation: str) -> list[Split]:
    raw_train = {lang: train_text(read_lines(files[f"train.{lang}"])) for lang in (src, tgt)}
    check_same_length(
        f"{files[f'train.{src}']} (after removing tag lines)", raw_train[src],
        f"{files[f'train.{tgt}']} (after removing tag lines)", raw_train[tgt],
    )  # fmt: skip
    tok_train = {lang: T.moses_tokenize(lines, lang) for lang, lines in raw_train.items()}
    keep = T.clean_corpus(tok_train[src], tok_train[tgt], CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO)
    if not keep:
        raise DataPrepError(f"no training pair of {files[f'train.{src}']} passed the length filter")
    # awk 'NR % 23 == 0' -> valid: the 23rd, 46th, ... kept pair (1-based line numbers).
    parts: dict[str, list[int]] = {"train": [], "valid": []}
    for n, i in enumerate(keep, start=1):
        parts["valid" if n % VALID_EVERY == 0 else "train"].append(i)
    splits = []
    for name in ("train", "valid"):
        idx = parts[name]
        raw = {lang: [raw_train[lang][i].strip() for i in idx] for lang in (src, tgt)}
        tok = {lang: T.lowercase(T.clean_line(tok_train[lang][i]) for i in idx) for lang in (src, tgt)}
        origin = {lang: str(files[f"train.{lang}"]) for lang in (src, tgt)}
        splits.append(Split(name, raw=raw, tok=tok if segmentation == "bpe" else None, origin=origin))
    raw_test: dict[str, list[str]] = {src: [], tgt: []}
    tok_test: dict[str, list[str]] = {src: [], tgt: []}
    for name in TEST_SETS:
        per_lang = {}
        for lang in (src, tgt):
            lines = read_lines(files[f"{name}.{lang}"])
            per_lang[lang] = lines
            raw_test[lang] += seg_text(lines, normalize_quote=False)
            if segmentation == "bpe":
                tok_test[lang] += T.lowercase(T.moses_tokenize(seg_text(lines), lang))
        check_same_length(
            f"{files[f'{name}.{src}']} (<seg> lines)", seg_text(per_lang[src]),
            f"{files[f'{name}.{tgt}']} (<seg> lines)", seg_text(per_lang[tgt]),
        )  # fmt: skip
    splits.append(
        Split("test", raw=raw_test, tok=tok_test if segmentation == "bpe" else None,
              origin={lang: f"the IWSLT14 test sets ({lang})" for lang in (src, tgt)})
    )  # fmt: skip
    return splits


def parse_args(argv=None):
    def options(p):
        p.add_argument("--bpe-codes", type=Path, help="apply this BPE merge table instead of learning one")

    sources = add_download_args("folder with de-en.tgz, its de-en/ folder, or the files themselves", DOWNLOAD_DIR)
    return parse_dataset_args(sys.modules[__name__], argv, sources, options)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bpe_codes is not None and not args.bpe_codes.is_file():
        raise DataPrepError(f"--bpe-codes {args.bpe_codes}: no such file")
    if args.bpe_codes is not None and args.segmentation != "bpe":
        raise DataPrepError("--bpe-codes needs --segmentation bpe")
    dest = str(args.dest)
    if dest == DEFAULT_DEST and args.segmentation == "spm":
        dest = "data-bin/iwslt14.spm.{src}-{tgt}"
    dest = Path(dest.format(src=args.src, tgt=args.tgt))
    settings = {
        "dataset": NAME, "src": args.src, "tgt": args.tgt, "segmentation": args.segmentation,
        "bpe_size": used_by(args, "bpe", args.bpe_size),
        "bpe_codes": str(args.bpe_codes.absolute()) if args.bpe_codes else None,
        "spm_size": used_by(args, "spm", args.spm_size), "spm_type": used_by(args, "spm", args.spm_type),
        "source": str(args.local_dir.absolute()) if args.local_dir else URLS[0],
    }  # fmt: skip

    def read() -> dict:
        with tempfile.TemporaryDirectory(prefix="iwslt14-") as scratch:
            files, origin = locate(args, Path(scratch))
            splits = read_splits(files, args.src, args.tgt, args.segmentation)
        info = {"source": origin, "clean": f"{CLEAN_MIN}-{CLEAN_MAX} words, ratio {CLEAN_RATIO}",
                "valid": f"every {VALID_EVERY}th cleaned train pair", "test": TEST_SETS}  # fmt: skip
        return {"splits": splits, "info": info}

    return prepare(
        sys.modules[__name__], args, dest, settings, read, joined_dictionary=args.segmentation == "spm",
        bpe_langs=("de", "en"), copy_files={"code": args.bpe_codes} if args.bpe_codes else None,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(cli_main(PROG, main))
