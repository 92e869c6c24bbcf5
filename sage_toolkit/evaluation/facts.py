"""What evaluation needs to know about a prepared folder, written into its ``prep.json`` by ``data_prep.build.build``.

The dataset module that prepares a corpus knows how its text was made (its ``LOWERCASED`` and ``BLEU_TOK_KIND``);
evaluation reads these keys and guesses nothing from dataset names:

``lowercased``
    the prepared text, and so its references, is lowercased (IWSLT'14 and Multi30k with BPE, whose recipes lowercase
    before tokenising): sacreBLEU and chrF are then computed with their lowercase option.
``bleu_tok_kind``
    the tokenized-BLEU variant: ``compound_split`` for WMT'16 (fairseq's ``scripts/compound_split_bleu.sh``),
    ``tokenized`` otherwise. Sentencepiece preparations have no tokenised reference, so there it is fairseq-generate's
    own BLEU of the detokenised text (of that text compound-split, for WMT'16).
``references``
    per split and language, the files evaluation compares with, relative to the folder: ``detokenized`` (sacreBLEU's
    reference, ``ref/{split}.{lang}``) and ``tokenized`` (``ref/{split}.tok.{lang}`` of a BPE preparation, what the
    ``--remove-bpe`` output is compared with for tokenized BLEU; None where the preparation has none).

``remove_bpe`` (fairseq-generate's ``--remove-bpe`` value) was written before these and is unchanged.

A ``prep.json`` written before these keys existed still says which dataset module prepared the folder with which
segmentation (its ``settings``): :func:`evaluation_facts` then gives what that module records (:data:`LEGACY_DATASETS`,
the datasets that existed then), so an old folder evaluates exactly as it did (the same numbers, no re-preparation
needed). This module is the evaluation's, so the toolkit never imports data_prep; data_prep imports it.
"""

from __future__ import annotations

from pathlib import Path

from sage_toolkit.evaluation.scoring import BLEU_TOK_KINDS

KEYS = ("lowercased", "bleu_tok_kind", "references")


def recorded_facts(*, lowercased: bool, bleu_tok_kind: str, segmentation: str) -> dict:
    """``lowercased`` and ``bleu_tok_kind`` of a preparation. ``lowercased`` is the dataset module's word for its
    Moses-tokenised text, which only BPE segmentation uses: sentencepiece is trained on the original (cased) text."""
    if bleu_tok_kind not in BLEU_TOK_KINDS:
        raise ValueError(f"internal error: unknown tokenized-BLEU kind {bleu_tok_kind!r}")
    return {"lowercased": bool(lowercased) and segmentation == "bpe", "bleu_tok_kind": bleu_tok_kind}


def reference_record(split: str, lang: str, tokenized: bool) -> dict:
    """The ``references`` entry of one split and language (paths relative to the prepared folder)."""
    return {"detokenized": f"ref/{split}.{lang}", "tokenized": f"ref/{split}.tok.{lang}" if tokenized else None}


# (lowercased, bleu_tok_kind) of the dataset modules that wrote prep.json before the keys above existed, by the
# ``settings.dataset`` they recorded; every later preparation records the keys itself (tests check this table against
# data_prep's modules).
LEGACY_DATASETS = {
    "tatoeba-demo": (False, "tokenized"),
    "iwslt14": (True, "tokenized"),
    "multi30k": (True, "tokenized"),
    "wmt16": (False, "compound_split"),
}


def evaluation_facts(manifest: dict, folder: Path, split: str) -> dict | None:
    """What evaluating ``split`` of ``folder`` needs from its ``prep.json`` (``manifest``): ``lowercased``,
    ``bleu_tok_kind`` and ``references`` (language -> its ``references`` entry; a split the manifest does not list has
    none). For a manifest written before these keys existed: what its dataset module records, the references
    being ``ref/{split}.{lang}`` and, where that file exists, ``ref/{split}.tok.{lang}``. None when the manifest has
    none of the keys and names no dataset of this package (not a data_prep folder)."""
    if all(key in manifest for key in KEYS):
        return {
            "lowercased": manifest["lowercased"],
            "bleu_tok_kind": manifest["bleu_tok_kind"],
            "references": (manifest["references"] or {}).get(split, {}),
        }
    settings = manifest.get("settings") or {}
    legacy = LEGACY_DATASETS.get(settings.get("dataset"))
    if legacy is None:
        return None
    lowercased, bleu_tok_kind = legacy
    segmentation = manifest.get("segmentation") or settings.get("segmentation")
    facts = recorded_facts(lowercased=lowercased, bleu_tok_kind=bleu_tok_kind, segmentation=segmentation)
    langs = [lang for lang in (manifest.get("source_lang"), manifest.get("target_lang")) if lang]
    facts["references"] = {
        lang: reference_record(split, lang, (Path(folder) / "ref" / f"{split}.tok.{lang}").is_file()) for lang in langs
    }
    return facts
