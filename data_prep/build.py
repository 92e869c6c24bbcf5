"""The common second half of every dataset script: segment, binarise with fairseq-preprocess, write the references.

A dataset module turns its sources into :class:`Split` objects (raw and/or Moses-tokenised lines per language) and
calls :func:`build`, which writes everything into one output folder, atomically (see ``common.atomic_output``):

    <dest>/dict.<src>.txt, dict.<tgt>.txt, {train,valid,test}.<src>-<tgt>.<lang>.{bin,idx}   fairseq data-bin
    <dest>/text/{split}.{lang}          the segmented text that was binarised
    <dest>/code  or  spm.model/.vocab   the BPE merge table or the sentencepiece model
    <dest>/ref/{split}.{lang}           detokenised references (sacreBLEU's input)
    <dest>/ref/{split}.tok.{lang}       BPE segmentation only: the tokenised text that
                                        ``fairseq-generate --remove-bpe`` prints as T- lines (tokenised BLEU)
    <dest>/ref/{split}.raw.{lang}       the original text where the source has it (BPE segmentation only;
                                        with sentencepiece, ref/{split}.{lang} is the original text)
    <dest>/prep.json                    settings, line counts, the --remove-bpe value and what evaluation needs
                                        (lowercased, bleu_tok_kind, references: see ``facts``); written last
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sage_toolkit.evaluation.facts import recorded_facts, reference_record

from . import text as T
from .common import (
    DataPrepError,
    atomic_output,
    check_same_length,
    read_lines,
    write_lines,
    write_manifest,
)

SEGMENTATIONS = ("bpe", "spm")


@dataclass
class Split:
    """One split (``train``, ``valid``, ``test``, ``test1`` ...) of a parallel corpus, line-aligned across languages.

    ``raw``: original text (sentencepiece input; raw references). ``tok``: Moses-tokenised text (BPE input).
    ``seg``: text that is already segmented (Google's BPE'd WMT'16 files), binarised as is.
    """

    name: str
    raw: dict[str, list[str]] | None = None
    tok: dict[str, list[str]] | None = None
    seg: dict[str, list[str]] | None = None
    origin: dict[str, str] = field(default_factory=dict)  # lang -> where the lines came from (for messages)

    def __len__(self) -> int:
        for side in (self.seg, self.tok, self.raw):
            if side:
                return len(next(iter(side.values())))
        return 0

    def check(self) -> None:
        for kind in ("raw", "tok", "seg"):
            side = getattr(self, kind)
            if side:
                (l1, a), (l2, b) = side.items()
                check_same_length(
                    self.origin.get(l1, f"{self.name}.{l1} ({kind})"), a, self.origin.get(l2, f"{self.name}.{l2}"), b
                )
                if not a:
                    raise DataPrepError(f"{self.origin.get(l1, self.name)}: the {self.name} split is empty")


def build(
    dest: Path,
    settings: dict,
    src: str,
    tgt: str,
    splits: Sequence[Split],
    segmentation: str,
    *,
    bpe_size: int = 10000,
    spm_size: int = 8000,
    spm_type: str = "unigram",
    spm_sentences: int | None = None,
    lowercased: bool = False,
    bleu_tok_kind: str = "tokenized",
    joined_dictionary: bool = True,
    bpe_langs: Sequence[str] | None = None,
    preprocess_extra: Sequence[str] = (),
    copy_files: dict[str, Path] | None = None,
    info: dict | None = None,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> Path:
    """Segment ``splits`` (the first must be ``train``), binarise, write references, all atomically into ``dest``.

    ``lowercased``: the tokenised text is lowercased, so the detokenised reference is made from it rather than taken
    from the (cased) raw text; with BPE segmentation evaluation then lowercases (``prep.json`` ``lowercased``).
    ``bleu_tok_kind``: the dataset's tokenized-BLEU variant (``tokenized``, or ``compound_split`` for WMT'16).
    ``bpe_langs``: the order in which the training sides are concatenated for BPE learning
    (default source, target). ``copy_files``: extra files to store in ``dest`` (e.g. the given BPE codes).
    """
    _check_splits(splits, segmentation)
    langs = (src, tgt)
    dest = Path(dest)
    facts = recorded_facts(lowercased=lowercased, bleu_tok_kind=bleu_tok_kind, segmentation=segmentation)
    with atomic_output(dest, settings, log) as tmp:
        if tmp is None:
            return dest
        text_dir, ref_dir, work = tmp / "text", tmp / "ref", tmp / "work"
        for d in (text_dir, ref_dir, work):
            d.mkdir()
        if all(sp.seg for sp in splits):  # segmented already (Google's BPE'd WMT'16): binarised as they are
            segment, seg_info = None, {"segmentation": segmentation, "remove_bpe": "subword_nmt"}
        elif segmentation == "bpe":
            segment, seg_info = _bpe_segmenter(splits, langs, tmp, bpe_size, bpe_langs, copy_files, log)
        else:
            segment, seg_info = _spm_segmenter(splits, langs, tmp, work, spm_size, spm_type, spm_sentences, log)
        counts, references = _write_splits(splits, langs, segment, segmentation, lowercased, text_dir, ref_dir, log)
        _binarise(splits, text_dir, tmp, src, tgt, joined_dictionary, preprocess_extra, workers, log)
        for name, path in (copy_files or {}).items():
            if name != "code":
                shutil.copyfile(path, tmp / name)
        shutil.rmtree(work)
        hint = f"fairseq-generate {dest} --path CHECKPOINT --remove-bpe {seg_info['remove_bpe']}"
        record = {"source_lang": src, "target_lang": tgt, "pairs": counts, "joined_dictionary": joined_dictionary,
                  **seg_info, "generate_hint": hint, **facts, "references": references, **(info or {})}  # fmt: skip
        write_manifest(tmp, settings, record)
    log(f"done: {dest}")
    return dest


def _check_splits(splits: Sequence[Split], segmentation: str) -> None:
    if segmentation not in SEGMENTATIONS:
        raise DataPrepError(f"unknown --segmentation {segmentation!r}; choose one of {', '.join(SEGMENTATIONS)}")
    if not splits or splits[0].name != "train":
        raise DataPrepError("internal error: the first split must be train")
    for sp in splits:
        sp.check()


Segmenter = Callable[[list[str]], list[str]]


def _bpe_segmenter(splits, langs, tmp: Path, bpe_size, bpe_langs, copy_files, log) -> tuple[Segmenter, dict]:
    """BPE of the tokenised text, with the given codes or codes learned on the training sides (``tmp/code``), and
    what ``prep.json`` records of it."""
    _need(splits, "tok", "BPE segmentation")
    codes = tmp / "code"
    if copy_files and "code" in copy_files:
        write_lines(codes, read_lines(copy_files["code"]))  # checked; .gz is decompressed
        log(f"using the given BPE codes {copy_files['code']}")
    else:
        order = list(bpe_langs or langs)
        log(f"learning BPE ({bpe_size} merges) on " + " + ".join(f"train.{lang}" for lang in order))
        T.learn_bpe([line for lang in order for line in splits[0].tok[lang]], bpe_size, codes)
    merges = sum(1 for line in codes.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))
    info = {"segmentation": "bpe", "remove_bpe": "subword_nmt", "bpe_merges": merges, "bpe_codes": "code"}
    return T.BPEApplier(codes), info


def _spm_segmenter(splits, langs, tmp: Path, work: Path, spm_size, spm_type, spm_sentences, log):
    """A joined sentencepiece model (``tmp/spm.model``) trained on the original training text, and what
    ``prep.json`` records of it."""
    _need(splits, "raw", "sentencepiece segmentation")
    for lang in langs:
        write_lines(work / f"train.raw.{lang}", splits[0].raw[lang])
    src, tgt = langs
    log(f"training a joined sentencepiece model ({spm_type}, {spm_size}) on train.{src} + train.{tgt}")
    model = T.train_spm(
        [work / f"train.raw.{lang}" for lang in langs], tmp / "spm", spm_size, spm_type, max_sentences=spm_sentences
    )
    info = {"segmentation": "spm", "remove_bpe": "sentencepiece", "spm_size": spm_size, "spm_type": spm_type,
            "spm_model": "spm.model"}  # fmt: skip
    return T.SPMEncoder(model), info


def _write_splits(splits, langs, segment, segmentation, lowercased, text_dir: Path, ref_dir: Path, log):
    """The segmented text of every split (``text/``) and the references of the non-training ones (``ref/``): the
    pair counts and the ``references`` record."""
    counts, references = {}, {}
    for sp in splits:
        counts[sp.name] = len(sp)
        for lang in langs:
            if segment is None:
                lines = sp.seg[lang]
            elif segmentation == "bpe":
                lines = segment(sp.tok[lang])
            else:
                lines = segment(sp.raw[lang])
            write_lines(text_dir / f"{sp.name}.{lang}", lines)
            if sp.name != "train":
                tokenized = _write_refs(ref_dir, sp, lang, segmentation, lowercased)
                references.setdefault(sp.name, {})[lang] = reference_record(sp.name, lang, tokenized)
        log(f"{sp.name}: {len(sp)} pairs")
    return counts, references


def _binarise(splits, text_dir: Path, dest: Path, src, tgt, joined_dictionary, extra, workers, log) -> None:
    """fairseq-preprocess of the segmented text: train, valid and every test split."""
    test_prefixes = [sp.name for sp in splits if sp.name.startswith("test")]
    if not any(sp.name == "valid" for sp in splits) or not test_prefixes:
        raise DataPrepError("internal error: valid and test splits are required")
    fairseq_preprocess(text_dir, dest, src, tgt, test_prefixes, joined_dictionary, extra, workers=workers, log=log)


def _need(splits: Sequence[Split], kind: str, what: str) -> None:
    for sp in splits:
        if not getattr(sp, kind):
            raise DataPrepError(f"{what} needs the {'original' if kind == 'raw' else 'tokenised'} text of {sp.name}")


def _write_refs(ref_dir: Path, sp: Split, lang: str, segmentation: str, lowercased: bool) -> bool:
    """Write the references of one split and language; returns whether there is a tokenised one."""
    if segmentation == "spm":
        write_lines(ref_dir / f"{sp.name}.{lang}", sp.raw[lang])
        return False
    if sp.tok:
        write_lines(ref_dir / f"{sp.name}.tok.{lang}", [T.collapse_ws(x) for x in sp.tok[lang]])
    if sp.raw:
        write_lines(ref_dir / f"{sp.name}.raw.{lang}", sp.raw[lang])
    if sp.raw and not lowercased:
        detok = sp.raw[lang]
    elif sp.tok:
        detok = T.moses_detokenize(sp.tok[lang], lang)
    else:
        raise DataPrepError(f"internal error: no text for the {sp.name} reference")
    write_lines(ref_dir / f"{sp.name}.{lang}", detok)
    return bool(sp.tok)


def fairseq_preprocess(
    text_dir: Path,
    dest: Path,
    src: str,
    tgt: str,
    test_prefixes: Sequence[str] = ("test",),
    joined_dictionary: bool = False,
    extra: Sequence[str] = (),
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> None:
    """Binarise ``text_dir/{train,valid,test...}.{src,tgt}`` into ``dest``: fairseq-preprocess, run in this process.

    In-process rather than as a second interpreter saves the torch/fairseq start-up (seconds) per call; the call is
    exactly ``fairseq-preprocess ARGS`` (the same parser and ``main``).
    """
    testpref = ",".join(str(text_dir / p) for p in test_prefixes)
    argv = [
        "--source-lang", src, "--target-lang", tgt, "--trainpref", str(text_dir / "train"),
        "--validpref", str(text_dir / "valid"), "--testpref", testpref, "--destdir", str(dest),
        "--workers", str(workers),
    ]  # fmt: skip
    if joined_dictionary:
        argv.append("--joined-dictionary")
    argv.extend(extra)
    log("fairseq-preprocess " + " ".join(argv))
    import logging
    import warnings

    root = logging.getLogger()
    root_handlers = list(root.handlers)
    with warnings.catch_warnings():  # fairseq's imports warn about deprecated torch APIs: not the user's concern
        warnings.simplefilter("ignore")
        from fairseq import options
        from fairseq_cli import preprocess
    for h in root.handlers:
        if h not in root_handlers:  # importing fairseq_cli.preprocess set up INFO logging to stdout: warnings only
            h.setLevel(logging.WARNING)
    handlers, level = list(preprocess.logger.handlers), preprocess.logger.level
    preprocess.logger.setLevel(logging.INFO)  # its <destdir>/preprocess.log gets the usual record
    try:
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
    except SystemExit as e:  # argparse
        raise DataPrepError(f"fairseq-preprocess rejected its arguments ({e.code}): {' '.join(argv)}") from None
    except Exception as e:
        raise DataPrepError(f"fairseq-preprocess failed: {type(e).__name__}: {e}") from e
    finally:  # main() adds a FileHandler for <destdir>/preprocess.log on every call: remove and close it
        preprocess.logger.setLevel(level)
        for h in list(preprocess.logger.handlers):
            if h not in handlers:
                preprocess.logger.removeHandler(h)
                h.close()
