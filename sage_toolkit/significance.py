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

The pooled test treats the K seeds' copies of a sentence as K independent items, so the variation between training
runs never enters it: one seed pair with a large difference makes the pooled difference significant even when the
other seed pairs show none. :func:`two_level_bootstrap` resamples the seed as well (a two-level, or hierarchical,
bootstrap). Its data: K seed pairs (the baseline's and the system's run with the same seed), each with the two runs'
hypotheses of the same N test sentences. What one resample draws:

1. K seed pairs with replacement from the K (a pair may come twice or not at all);
2. for each drawn pair, N sentence indices with replacement, drawn anew for every drawn pair (the sentences within
   each seed pair), and the same indices for the pair's two runs (the test stays paired).

Its statistic: for each drawn pair, the corpus score (sacreBLEU's BLEU, chrF) of the system's run minus the
baseline's on the drawn sentences, averaged over the K drawn pairs. The observed statistic is the same on the data
itself: the mean over the seed pairs of each pair's corpus-score difference (the difference of the two optimizers'
mean test scores, as the study's test table gives them). The null: the two optimizers' expected scores are equal, the
resampled statistic centred on its mean standing for its distribution under the null. The p-value follows sacreBLEU's
paired bootstrap (its convention, taken from Moses' script and Koehn 2004, not its code): over ``n_samples`` resamples
(1,000, its default), the fraction whose absolute resampled statistic, minus the mean of those absolute values, is
greater than the absolute observed statistic, with the +1 correction, (count + 1) / (n_samples + 1); the draws come
from numpy's default generator seeded with sacreBLEU's default seed, 12345, so a p-value is reproducible. As in
sacreBLEU, the scores of a resample are computed from the sum of the drawn sentences' sufficient statistics (sacreBLEU's
own, and its own scorer), the sums vectorised with numpy (a sentence-count matrix times the statistics). Identical
systems (every seed pair's two hypothesis lists the same) get p = 1.0, as above. With K seed pairs, the seed level has
only K values to resample: with 2 seeds it can say little, and the bootstrap's spread of a mean of K values is
(K - 1)/K of the usual estimate's (Efron and Tibshirani 1993), so with few seeds it still errs on the small side.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ToolkitError

N_SAMPLES = 1000
RNG_SEED = 12345  # sacreBLEU's default SACREBLEU_SEED: the two-level test draws from the seed the pooled one does


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
    from sacrebleu.significance import PairedTest

    if not (len(baseline) == len(system) == len(references)) or not references:
        raise ToolkitError(
            f"paired bootstrap: {len(baseline)} baseline, {len(system)} system hypotheses and {len(references)} "
            "references: they must be the same non-zero number (the same test sentences in the same order)"
        )
    metrics = _metrics(lowercase)
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


def two_level_bootstrap(
    baseline_by_seed: Sequence[Sequence[str]],
    system_by_seed: Sequence[Sequence[str]],
    references: Sequence[str],
    *,
    lowercase: bool = False,
    n_samples: int = N_SAMPLES,
    rng_seed: int = RNG_SEED,
) -> dict[str, PairedResult]:
    """BLEU and chrF of ``system`` against ``baseline`` over K seed pairs (``baseline_by_seed[i]`` and
    ``system_by_seed[i]``: the two runs of seed pair i, hypotheses of ``references`` in order), with the two-level
    paired bootstrap's p-values (the module's docstring says what is resampled, the statistic, the null and the
    p-value). Each result's ``baseline``/``system``: the mean over the seed pairs of that run's corpus score;
    ``difference``: the observed statistic, their difference. Deterministic given ``rng_seed``."""
    import numpy as np

    pairs = len(baseline_by_seed)
    _check_seed_pairs(baseline_by_seed, system_by_seed, references, n_samples)
    sentences = len(references)
    rng = np.random.default_rng(rng_seed)
    drawn_pairs = rng.integers(0, pairs, size=(n_samples, pairs))  # resample b's j-th seed pair
    # sentence_counts[j][b, n]: how often resample b draws sentence n for its j-th seed pair
    sentence_counts = [_draw_counts(rng, n_samples, sentences) for _ in range(pairs)]
    identical = all(list(b) == list(s) for b, s in zip(baseline_by_seed, system_by_seed, strict=True))
    results = {}
    for metric_name, metric in _metrics(lowercase).items():
        stats = [  # stats[run][pair]: sacreBLEU's per-sentence sufficient statistics, sentences x statistics
            [np.asarray(metric._extract_corpus_statistics(list(h), [list(references)]), dtype=np.float64)
             for h in by_seed]
            for by_seed in (baseline_by_seed, system_by_seed)
        ]  # fmt: skip
        observed = np.array([[_score(metric, s.sum(axis=0)) for s in by_pair] for by_pair in stats])  # run x pair
        resampled = _resampled_scores(metric, stats, drawn_pairs, sentence_counts)
        difference = float((observed[1] - observed[0]).mean())
        base_sig = str(metric.get_signature())
        results[metric_name] = PairedResult(
            metric=metric_name,
            baseline=float(observed[0].mean()),
            system=float(observed[1].mean()),
            difference=difference,
            p_value=1.0 if identical else bootstrap_p_value((resampled[1] - resampled[0]).mean(axis=1), difference),
            signature=f"two-level-bs:{n_samples}|pairs:{pairs}|seed:{rng_seed}|{base_sig}",
        )
    return results


def _check_seed_pairs(baseline_by_seed, system_by_seed, references, n_samples: int) -> None:
    """The two-level bootstrap's inputs: as many baseline as system seeds, each with one hypothesis a reference."""
    pairs = len(baseline_by_seed)
    if pairs == 0 or pairs != len(system_by_seed):
        raise ToolkitError(
            f"two-level bootstrap: {pairs} baseline and {len(system_by_seed)} system seeds: they must be the same "
            "non-zero number (seed pairs)"
        )
    for i, (base, sys_) in enumerate(zip(baseline_by_seed, system_by_seed, strict=True)):
        if not (len(base) == len(sys_) == len(references)) or not references:
            raise ToolkitError(
                f"two-level bootstrap: seed pair {i + 1} has {len(base)} baseline, {len(sys_)} system hypotheses and "
                f"{len(references)} references: they must be the same non-zero number (the same test sentences)"
            )
    if n_samples < 1:
        raise ToolkitError(f"two-level bootstrap: n_samples must be >= 1, got {n_samples}")


def _resampled_scores(metric, stats: list, drawn_pairs, sentence_counts: list):
    """run x resample x drawn pair: the corpus score of each resample's j-th drawn seed pair, its sentences drawn
    with ``sentence_counts[j]``."""
    import numpy as np

    n_samples, pairs = drawn_pairs.shape
    resampled = np.empty((2, n_samples, pairs))
    for j, counts in enumerate(sentence_counts):
        for pair in range(pairs):
            chosen = drawn_pairs[:, j] == pair
            for run in (0, 1):
                sums = counts[chosen] @ stats[run][pair]
                resampled[run, chosen, j] = [_score(metric, row) for row in sums]
    return resampled


def bootstrap_p_value(resampled_differences, observed_difference: float) -> float:
    """sacreBLEU's paired-bootstrap p-value: the fraction of resamples whose absolute difference, centred on the mean
    absolute difference, is greater than the absolute observed one, with the +1 correction."""
    import numpy as np

    magnitudes = np.abs(np.asarray(resampled_differences, dtype=np.float64))
    exceeding = int(np.count_nonzero(magnitudes - magnitudes.mean() > abs(observed_difference)))
    return (exceeding + 1) / (len(magnitudes) + 1)


def _draw_counts(rng, n_samples: int, sentences: int):
    """n_samples draws of ``sentences`` indices with replacement, as counts: row b, column n = how often draw b took
    sentence n (float, for the product with the statistics)."""
    import numpy as np

    indices = rng.integers(0, sentences, size=(n_samples, sentences))
    flat = (indices + sentences * np.arange(n_samples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_samples * sentences).reshape(n_samples, sentences).astype(np.float64)


def _score(metric, statistics) -> float:
    return metric._compute_score_from_stats(statistics).score


def _metrics(lowercase: bool) -> dict:
    """The metrics of both tests: sacreBLEU's BLEU (lowercased with ``lowercase``) and chrF, at their defaults."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"BLEU": BLEU(lowercase=lowercase), "chrF": CHRF()}


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
