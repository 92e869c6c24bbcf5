"""The scores of a translation: tokenized BLEU with fairseq's own scorer (optionally compound-split), sacreBLEU and
chrF on detokenised text, and the check for subword markers left in the hypotheses.

- Tokenized BLEU is computed exactly as ``fairseq-score --sys HYP --ref REF`` (``fairseq.scoring.bleu``, order 4). For
  WMT'16 both sides are compound-split first as fairseq's ``scripts/compound_split_bleu.sh`` does
  (examples/scaling_nmt/README.md): every ``-`` between two non-space characters becomes `` ##AT##-##AT## ``.
- sacreBLEU: BLEU and chrF with default settings (13a tokenisation), as ``sacrebleu REF -i HYP -m bleu chrf``; with
  ``lowercase`` (lowercased preparations) as ``-lc --chrf-lowercase`` (``case:lc`` in the signatures).
- Detokenisation: ``moses`` (sacremoses, the target language) for subword-nmt BPE output, ``none`` otherwise
  (sentencepiece output is already detokenised by ``--remove-bpe sentencepiece``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.result import Scores

BLEU_TOK_KINDS = ("tokenized", "compound_split")
DETOKENIZERS = ("moses", "none")

# fairseq scripts/compound_split_bleu.sh: perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' (Perl's \S on bytes: ASCII)
_COMPOUND = re.compile(r"(\S)-(\S)", re.ASCII)
_BPE_MARKER = re.compile(r"@@(?= |$)")
SPM_MARKER = "\u2581"


def compound_split(line: str) -> str:
    """fairseq's compound splitting for WMT En-De tokenized BLEU (``a-b`` -> ``a ##AT##-##AT## b``)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def read_text_lines(path: Path) -> list[str]:
    """Lines as the ``sacrebleu`` command line reads them (text mode, UTF-8, each ``rstrip()``-ed)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip() for line in f]


def fairseq_bleu(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU exactly as ``fairseq-score --sys HYP --ref REF`` computes it (fairseq's C scorer, order 4)."""
    from fairseq.data import dictionary
    from fairseq.scoring import bleu

    d = dictionary.Dictionary()
    scorer = bleu.Scorer(bleu.BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for h, r in zip(hyps, refs, strict=True):
        sys_tok = d.encode_line(h)
        ref_tok = d.encode_line(r)
        scorer.add(ref_tok, sys_tok)
    syslen, reflen = int(scorer.stat.predlen), int(scorer.stat.reflen)
    if syslen == 0 or reflen == 0:
        return {"score": 0.0, "string": f"BLEU4 = 0.00 (syslen={syslen}, reflen={reflen})", "bp": 0.0,
                "sys_len": syslen, "ref_len": reflen}  # fmt: skip
    return {"score": scorer.score(4), "string": scorer.result_string(4), "bp": scorer.brevity(),
            "sys_len": syslen, "ref_len": reflen}  # fmt: skip


def sacrebleu_scores(hyps: list[str], refs: list[str], lowercase: bool) -> dict:
    """sacreBLEU BLEU and chrF (default settings), as ``sacrebleu REF -i HYP -m bleu chrf [-lc --chrf-lowercase]``."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(lowercase=lowercase), CHRF(lowercase=lowercase)
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    bleu_sig, chrf_sig = bleu.get_signature().format(), chrf.get_signature().format()
    return {
        "sacrebleu": b.score, "sacrebleu_signature": bleu_sig, "sacrebleu_string": b.format(signature=bleu_sig),
        "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len, "precisions": list(b.precisions),
        "chrf": c.score, "chrf_signature": chrf_sig,
    }  # fmt: skip


_DETOKENIZERS: dict[str, object] = {}


def moses_detokenize(lines: Iterable[str], lang: str) -> list[str]:
    """``detokenizer.perl -l LANG`` (sacremoses; un-escapes ``&apos;`` etc.): of hypotheses here, of references in
    data_prep."""
    from sacremoses import MosesDetokenizer

    if lang not in _DETOKENIZERS:
        _DETOKENIZERS[lang] = MosesDetokenizer(lang=lang)
    detok = _DETOKENIZERS[lang]
    return [detok.detokenize(line.split(), return_str=True, unescape=True) for line in lines]


def translation_scores(
    tok: dict, sb: dict, bleu_tok_kind: str, bleu_tok_reference: str, lowercase: bool, sacrebleu_reference: str
) -> Scores:
    """The evaluation's :class:`Scores`: :func:`fairseq_bleu`'s (``tok``, scored against ``bleu_tok_reference``
    after ``bleu_tok_kind`` tokenisation) and :func:`sacrebleu_scores`'s (``sb``, whose keys are the fields')."""
    return Scores(
        bleu_tok=tok["score"], bleu_tok_kind=bleu_tok_kind, bleu_tok_string=tok["string"], bleu_tok_bp=tok["bp"],
        bleu_tok_sys_len=tok["sys_len"], bleu_tok_ref_len=tok["ref_len"], bleu_tok_reference=bleu_tok_reference,
        **sb, sacrebleu_lowercase=lowercase, sacrebleu_reference=sacrebleu_reference,
    )  # fmt: skip


def detokenize(lines: list[str], how: str, lang: str) -> list[str]:
    """``lines`` detokenised: ``moses`` (sacremoses, language ``lang``) or ``none`` (unchanged)."""
    if how == "none":
        return list(lines)
    if how == "moses":
        return moses_detokenize(lines, lang)
    raise ToolkitError(f"unknown --detok {how!r}; choose one of {', '.join(DETOKENIZERS)}")


def subword_markers(hyps: list[str], remove_bpe: str | None) -> dict:
    """How many hypotheses still contain subword markers (``@@`` of BPE at a word's end, ``▁`` of sentencepiece: a
    missing or wrong ``--remove-bpe``), and, if any do, the warning to print with its remedy."""
    bpe = sum(1 for h in hyps if _BPE_MARKER.search(h))
    spm = sum(1 for h in hyps if SPM_MARKER in h)
    count = sum(1 for h in hyps if _BPE_MARKER.search(h) or SPM_MARKER in h)
    record = {"count": count, "fraction": count / len(hyps) if hyps else 0.0, "bpe": bpe, "sentencepiece": spm}
    if count:
        value = "sentencepiece" if spm > bpe else "subword_nmt"
        record["warning"] = (
            f"{count} of {len(hyps)} hypotheses ({100 * record['fraction']:.1f} %) still contain subword markers "
            f"('@@' of BPE in {bpe}, '{SPM_MARKER}' of sentencepiece in {spm}) and are scored with them, so the "
            f"scores are not those of the text; fairseq-generate ran with --remove-bpe {remove_bpe or 'none'}: "
            f"pass --remove-bpe {value} (or fix remove_bpe in the data-bin's prep.json)"
        )
    return record
