"""What a data-bin says about how to score translations of it: languages, ``--remove-bpe``, lowercasing, the
tokenized-BLEU kind and the reference files, from its ``prep.json`` (written by data_prep) and the user's overrides.

A data_prep folder's ``prep.json`` records these facts (:mod:`.facts`): ``source_lang``/``target_lang``, ``remove_bpe``,
``lowercased``, ``bleu_tok_kind`` and per split and language the detokenised and tokenised reference
files. Nothing is guessed from a dataset's name. A ``prep.json`` written before ``lowercased``/``bleu_tok_kind``/
``references`` existed is read through ``facts.evaluation_facts``, which gives what the dataset module named
in its ``settings`` records: so a folder prepared by the previous version evaluates with the same settings and
numbers as before, without re-preparing it (a clear default from the authority that wrote the folder, rather than an
error: re-running data_prep on a complete folder does nothing, so the remedy would be to delete and rebuild it). A
``prep.json`` with neither the keys nor a data_prep dataset is refused unless ``--lowercase``/``--no-lowercase`` and
``--bleu-tok-kind`` state both facts.

Data-bins without ``prep.json`` (any fairseq data-bin): the languages are taken from the options or from the
``{subset}.{src}-{tgt}.*.idx`` file names; no ``--remove-bpe``, no lowercasing, plain tokenized BLEU, and the T- lines
of fairseq-generate as references, unless the options say otherwise. The options (:class:`ScoringOverrides`) also
override what ``prep.json`` says.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.facts import evaluation_facts

PREP_FILE = "prep.json"
# fairseq-generate --remove-bpe values whose output is Moses-tokenised text (detokenised with Moses for sacreBLEU)
_SUBWORD_NMT = ("subword_nmt", "@@ ", "@@")


@dataclass(frozen=True)
class ScoringOverrides:
    """The command line's word on the facts of a data-bin (None: what ``prep.json`` or the data-bin says)."""

    source_lang: str | None = None
    target_lang: str | None = None
    remove_bpe: str | None = None  # fairseq's values; "none" or "" for none
    ref: Path | None = None  # detokenised reference for sacreBLEU
    tok_ref: Path | None = None  # tokenised reference for tokenized BLEU
    detok: str | None = None  # "moses" or "none"
    lowercase: bool | None = None  # sacreBLEU/chrF lowercase option
    bleu_tok_kind: str | None = None  # "tokenized" or "compound_split"


@dataclass
class Setup:
    """How one subset of a data-bin is translated and scored."""

    src: str
    tgt: str
    remove_bpe: str | None
    dataset: str | None
    segmentation: str | None
    lowercase: bool
    detok: str  # "moses" or "none"
    bleu_tok_kind: str  # "tokenized" or "compound_split"
    ref: Path | None  # detokenised reference for sacreBLEU (None: T- lines)
    tok_ref: Path | None  # tokenised reference (None: T- lines)
    prep: dict | None


def read_prep(data_bin: Path) -> dict | None:
    """The data-bin's ``prep.json``, or None when it has none."""
    prep_path = Path(data_bin) / PREP_FILE
    if not prep_path.is_file():
        return None
    try:
        return json.loads(prep_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ToolkitError(f"cannot read {prep_path}: {e}") from e


def infer_langs(data_bin: Path, subset: str) -> tuple[str, str]:
    """The language pair of ``subset`` from the data-bin's ``{subset}.{src}-{tgt}.{lang}.idx`` file names."""
    pairs = set()
    for path in data_bin.glob(f"{subset}.*-*.*.idx"):
        m = re.fullmatch(rf"{re.escape(subset)}\.([^.-]+)-([^.-]+)\.([^.]+)\.idx", path.name)
        if m and m.group(3) in (m.group(1), m.group(2)):
            pairs.add((m.group(1), m.group(2)))
    if len(pairs) != 1:
        found = ", ".join(f"{s}-{t}" for s, t in sorted(pairs)) or "none"
        raise ToolkitError(
            f"{data_bin} has no prep.json and the language pair of {subset!r} is not unique (found: {found}); "
            "give --source-lang and --target-lang"
        )
    return next(iter(pairs))


def _reference(data_bin: Path, facts: dict, lang: str, kind: str) -> Path | None:
    relative = (facts["references"].get(lang) or {}).get(kind)
    return data_bin / relative if relative else None


def resolve_setup(data_bin: Path, subset: str, overrides: ScoringOverrides | None = None) -> Setup:
    """The :class:`Setup` of ``subset`` of ``data_bin``: ``prep.json`` (if any), then ``overrides``."""
    o = overrides or ScoringOverrides()
    data_bin = Path(data_bin)
    prep = read_prep(data_bin)
    if prep is not None:
        prep_path = data_bin / PREP_FILE
        settings = prep.get("settings", {})
        src = o.source_lang or prep.get("source_lang")
        tgt = o.target_lang or prep.get("target_lang")
        if not src or not tgt:
            raise ToolkitError(f"{prep_path} names no source_lang/target_lang; give --source-lang and --target-lang")
        dataset = settings.get("dataset")
        segmentation = prep.get("segmentation") or settings.get("segmentation")
        remove_bpe = o.remove_bpe if o.remove_bpe is not None else prep.get("remove_bpe")
        facts = evaluation_facts(prep, data_bin, subset)
        if facts is None:
            if o.lowercase is None or o.bleu_tok_kind is None:
                raise ToolkitError(
                    f"{prep_path} records neither lowercased/bleu_tok_kind nor a data_prep dataset "
                    f"({dataset!r}): give --lowercase or --no-lowercase, and --bleu-tok-kind"
                )
            lowercase, kind, ref, tok_ref = o.lowercase, o.bleu_tok_kind, None, None
        else:
            lowercase, kind = bool(facts["lowercased"]), facts["bleu_tok_kind"]
            ref = _reference(data_bin, facts, tgt, "detokenized")
            tok_ref = _reference(data_bin, facts, tgt, "tokenized")
    else:
        if o.source_lang and o.target_lang:
            src, tgt = o.source_lang, o.target_lang
        else:
            src, tgt = infer_langs(data_bin, subset)
            src, tgt = o.source_lang or src, o.target_lang or tgt
        dataset = segmentation = None
        remove_bpe = o.remove_bpe
        lowercase = False
        ref = tok_ref = None
        kind = "tokenized"
    if o.ref is not None:
        ref = o.ref
    if o.tok_ref is not None:
        tok_ref = o.tok_ref
    if o.lowercase is not None:
        lowercase = o.lowercase
    if o.bleu_tok_kind is not None:
        kind = o.bleu_tok_kind
    if remove_bpe in ("none", ""):
        remove_bpe = None
    detok = o.detok or ("moses" if remove_bpe in _SUBWORD_NMT else "none")
    return Setup(src, tgt, remove_bpe, dataset, segmentation, lowercase, detok, kind, ref, tok_ref, prep)


def check_data_bin(data_bin: Path, setup: Setup, subset: str) -> None:
    """The dictionaries, the binarised ``subset`` and the reference files exist (else an error naming the file)."""
    for lang in (setup.src, setup.tgt):
        d = data_bin / f"dict.{lang}.txt"
        if not d.is_file():
            raise ToolkitError(f"{data_bin} is not a fairseq data-bin for {setup.src}-{setup.tgt}: {d} does not exist")
    idx = data_bin / f"{subset}.{setup.src}-{setup.tgt}.{setup.tgt}.idx"
    if not idx.is_file():
        pair = f"{setup.src}-{setup.tgt}"
        raise ToolkitError(f"{data_bin} has no binarised {subset!r} split for {pair}: {idx} is missing")
    check_split_has_sentences(data_bin, subset, "--subset")
    for what, path in (("sacreBLEU reference", setup.ref), ("tokenised reference", setup.tok_ref)):
        if path is not None and not Path(path).is_file():
            raise ToolkitError(f"the {what} {path} does not exist")


def check_split_has_sentences(data_bin: Path, subset: str, option: str) -> None:
    """Refuse a binarised split without sentences, naming its file: fairseq-preprocess writes an empty text file as a
    ``.bin`` of 0 bytes (every sentence has at least its end-of-sentence token), and fairseq would stop on it with
    numpy's "cannot mmap an empty file". ``option``: the option that named the split, for the message."""
    for data in sorted(Path(data_bin).glob(f"{glob.escape(subset)}.*.bin")):
        if data.stat().st_size == 0:
            raise ToolkitError(f"{data} is empty: the {subset!r} split of {data_bin} ({option}) has no sentences")


def check_dictionaries(checkpoint: Path, model: Mapping, dictionaries: Mapping[str, tuple[Path, int]]) -> None:
    """Refuse a checkpoint whose embedding tables do not have one row per entry of the data-bin's dictionaries: it was
    trained on another data-bin, and fairseq would stop with a size-mismatch traceback while loading it.

    ``model``: the checkpoint's tensors; ``dictionaries``: ``"encoder"``/``"decoder"`` -> (dictionary file, its number
    of entries as fairseq loads it). A model without ``{encoder,decoder}.embed_tokens.weight`` is not checked here.
    A dictionary of the same size but other words cannot be told from the checkpoint.
    """
    for side, (path, size) in dictionaries.items():
        table = model.get(f"{side}.embed_tokens.weight")
        if table is not None and table.dim() == 2 and table.shape[0] != size:
            raise ToolkitError(
                f"{checkpoint} was trained with a dictionary of {table.shape[0]} entries for its {side}, but {path} "
                f"has {size}: the checkpoint was made for another data-bin; give the data-bin it was trained on"
            )


def check_checkpoint_fits(checkpoint: Path, data_bin: Path, setup: Setup) -> None:
    """:func:`check_dictionaries` for the data-bin's ``dict.{src,tgt}.txt``, before fairseq-generate is started."""
    from fairseq.data import Dictionary

    from sage_toolkit.evaluation.checkpoints import load_checkpoint

    paths = {"encoder": Path(data_bin) / f"dict.{setup.src}.txt", "decoder": Path(data_bin) / f"dict.{setup.tgt}.txt"}
    model = load_checkpoint(checkpoint)["model"]
    check_dictionaries(
        checkpoint, model, {side: (path, len(Dictionary.load(str(path)))) for side, path in paths.items()}
    )
