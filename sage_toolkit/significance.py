"""Paired significance of a BLEU/chrF difference on the same test sentences: sacreBLEU's paired bootstrap.

The paired bootstrap (Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation"; sacreBLEU's
``--paired-bs``, the behaviour of Moses' bootstrap-hypothesis-difference-significance.pl): the test set is resampled
with replacement ``n_samples`` times (sacreBLEU's default 1,000; its fixed default RNG seed 12345, so a p-value is
reproducible), both systems are scored on each resample, and the p-value is the fraction of resamples whose
(centred) absolute difference exceeds the observed one, with the +1 correction.

Two uses in the study: one seed of each optimizer against the other (seed s vs seed s), and the pooled systems: every
seed's hypotheses concatenated in seed order against the other optimizer's, the references repeated once per seed,
so a resample draws (seed, sentence) items and the test is on the pooled corpus score.

sacreBLEU returns p = 1/(n+1) for two identical hypothesis lists (every resampled difference is 0, and 0 > 0 is never
counted); that is not evidence of a difference, so identical systems are reported here with p = 1.0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ToolkitError

N_SAMPLES = 1000


@dataclass(frozen=True)
class PairedResult:
    """One metric of a paired test: the baseline's and the system's corpus scores, the difference (system -
    baseline), the p-value, and sacreBLEU's signature of the test."""

    metric: str
    baseline: float
    system: float
    difference: float
    p_value: float
    signature: str


def paired_bootstrap(
    baseline: Sequence[str],
    system: Sequence[str],
    references: Sequence[str],
    *,
    lowercase: bool = False,
    n_samples: int = N_SAMPLES,
) -> dict[str, PairedResult]:
    """BLEU and chrF of ``system`` against ``baseline`` on the same ``references`` (detokenised text, one line per
    sentence, in the same order), with sacreBLEU's paired bootstrap p-values. ``lowercase``: BLEU on lowercased text,
    as the evaluation scores lowercased preparations."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    if not (len(baseline) == len(system) == len(references)) or not references:
        raise ToolkitError(
            f"paired bootstrap: {len(baseline)} baseline, {len(system)} system hypotheses and {len(references)} "
            "references: they must be the same non-zero number (the same test sentences in the same order)"
        )
    metrics = {"BLEU": BLEU(lowercase=lowercase), "chrF": CHRF()}
    test = PairedTest(
        [("baseline", list(baseline)), ("system", list(system))],
        metrics,
        [list(references)],
        test_type="bs",
        n_samples=n_samples,
    )
    logger = logging.getLogger("sacrebleu")
    with _quiet(logger):
        signatures, scores = test()
    identical = list(baseline) == list(system)
    results = {}
    for name in scores:
        if name == "System":
            continue
        base, sys_ = scores[name]
        metric = "chrF" if name.startswith("chrF") else name
        results[metric] = PairedResult(
            metric=metric,
            baseline=base.score,
            system=sys_.score,
            difference=sys_.score - base.score,
            p_value=1.0 if identical else sys_.p_value,
            signature=str(signatures[name]),
        )
    return results


def pooled(hypotheses_by_seed: Sequence[Sequence[str]], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every seed's hypotheses concatenated in the given order, and the references repeated once per seed."""
    hyps = [line for seed in hypotheses_by_seed for line in seed]
    return hyps, list(references) * len(hypotheses_by_seed)


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
