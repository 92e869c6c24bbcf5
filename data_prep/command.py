"""The command line every dataset module shares: its options (sources, language pair, segmentation, output), their
checks, and the end of its main (nothing to do for a finished identical preparation, else read and :func:`build`).

A dataset module (``iwslt14``, ``multi30k``, ``wmt16``, ``demo``) states ``NAME``, ``PROG``, ``PAIRS`` (the first is
the default ``--src``/``--tgt``), ``SEGMENTATION``, ``DEFAULT_DEST``, ``LOWERCASED`` and ``BLEU_TOK_KIND``; its ``main``
parses with :func:`parse_dataset_args`, checks its own options, and ends with :func:`prepare`. See
docs/contributing.md, "Where new things go".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from .build import SEGMENTATIONS, build
from .common import DataPrepError, check_lang_pair, is_complete

AddArgs = Callable[[argparse.ArgumentParser], None]


def add_segmentation_args(p: argparse.ArgumentParser, default_seg: str, bpe_size: int, spm_size: int) -> None:
    g = p.add_argument_group("segmentation")
    g.add_argument(
        "--segmentation", choices=SEGMENTATIONS, default=default_seg,
        help=f"bpe: Moses tokenisation + subword-nmt BPE (the published convention); spm: sentencepiece on the "
        f"original text, joined vocabulary, decode with --remove-bpe sentencepiece (default: {default_seg})",
    )  # fmt: skip
    g.add_argument("--bpe-size", type=int, default=bpe_size, help=f"BPE merge operations (default {bpe_size})")
    g.add_argument("--spm-size", type=int, default=spm_size, help=f"sentencepiece vocabulary size (default {spm_size})")
    g.add_argument("--spm-type", choices=("unigram", "bpe"), default="unigram", help="sentencepiece model type")
    g.add_argument("--workers", type=int, default=1, help="fairseq-preprocess worker processes (default 1)")


def add_output_args(p: argparse.ArgumentParser, default_dest: str) -> None:
    p.add_argument(
        "--dest", type=Path, default=Path(default_dest),
        help=f"output folder (data-bin + references), created atomically (default {default_dest})",
    )  # fmt: skip


def add_download_args(local_help: str, download_dir: str) -> AddArgs:
    """The sources of a downloaded corpus: ``--local-dir`` (a copy of it) or ``--download-dir``."""

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--local-dir", type=Path, help=local_help)
        p.add_argument("--download-dir", type=Path, default=Path(download_dir), help="download folder")

    return add


def check_sizes(args) -> None:
    if args.bpe_size < 1:
        raise DataPrepError(f"--bpe-size must be positive, got {args.bpe_size}")
    if args.spm_size < 10:
        raise DataPrepError(f"--spm-size must be at least 10, got {args.spm_size}")


def parse_dataset_args(
    module: ModuleType, argv: Sequence[str] | None, sources: AddArgs, options: AddArgs | None = None
) -> argparse.Namespace:
    """The options of ``module``'s command (its ``PROG``), checked where they are the same for every dataset:
    ``sources`` (where the corpus comes from), ``--src``/``--tgt`` (one of its ``PAIRS``), its own ``options``, the
    segmentation (its ``SEGMENTATION``: the default, BPE merges, sentencepiece size) and ``--dest`` (its
    ``DEFAULT_DEST``, a template the module formats)."""
    p = argparse.ArgumentParser(prog=module.PROG, description=module.__doc__.split("\n\n")[0])
    sources(p)
    src, tgt = module.PAIRS[0]
    p.add_argument("--src", default=src, help=f"source language (default {src})")
    p.add_argument("--tgt", default=tgt, help=f"target language (default {tgt})")
    if options is not None:
        options(p)
    add_segmentation_args(p, *module.SEGMENTATION)
    add_output_args(p, module.DEFAULT_DEST)
    args = p.parse_args(argv)
    check_lang_pair(args.src, args.tgt, module.PAIRS, module.NAME)
    check_sizes(args)
    return args


def used_by(args, segmentation: str, value):
    """``value`` where ``args`` segment with ``segmentation``, else None (a setting that did not shape the output)."""
    return value if args.segmentation == segmentation else None


def prepare(module: ModuleType, args, dest: Path, settings: dict, read: Callable[[], dict], **build_options) -> int:
    """The end of a dataset command's main: nothing to do where ``dest`` holds this preparation already (the same
    ``settings``; decided before anything is read or downloaded), else the splits ``read()`` gives (a dict of
    :func:`build` arguments: ``splits``, ``info``, ``copy_files`` ...) built into ``dest`` with ``args``' segmentation
    options, ``module``'s facts and ``build_options``."""
    if is_complete(dest, settings):
        return 0
    build(
        dest, settings, args.src, args.tgt, segmentation=args.segmentation,
        bpe_size=args.bpe_size, spm_size=args.spm_size, spm_type=args.spm_type, workers=args.workers,
        lowercased=module.LOWERCASED, bleu_tok_kind=module.BLEU_TOK_KIND, **build_options, **read(),
    )  # fmt: skip
    return 0
