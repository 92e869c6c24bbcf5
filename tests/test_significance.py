"""sage_toolkit.significance: sacreBLEU's paired bootstrap, wrapped for the study, and the two-level bootstrap over
the seed pairs."""

import random

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.significance import bootstrap_p_value, paired_bootstrap, pooled, two_level_bootstrap

WORDS = "the a man woman dog runs sits on in street park red blue child plays ball".split()


def _corpus(n=200, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 14))) for _ in range(n)]


def _noisy(refs, keep, seed):
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else "xyz" for w in r.split()) for r in refs]


def test_a_much_better_system_is_significant_and_a_resample_of_noise_is_not():
    refs = _corpus()
    weak, strong = _noisy(refs, 0.5, 1), _noisy(refs, 0.9, 2)
    result = paired_bootstrap(weak, strong, refs)
    assert result["BLEU"].difference > 10 and result["BLEU"].p_value < 0.01
    assert result["chrF"].difference > 0 and result["chrF"].p_value < 0.01
    assert "bs:1000" in result["BLEU"].signature
    # two systems of the same quality (independent noise at the same rate): no evidence at the 0.01 level
    similar = paired_bootstrap(_noisy(refs, 0.7, 3), _noisy(refs, 0.7, 4), refs)
    assert similar["BLEU"].p_value > 0.01


def test_identical_systems_get_p_one_not_sacrebleus_degenerate_minimum():
    refs = _corpus()
    hyps = _noisy(refs, 0.7, 5)
    result = paired_bootstrap(hyps, list(hyps), refs)
    assert result["BLEU"].difference == 0 and result["BLEU"].p_value == 1.0


def test_lowercase_is_applied_to_bleu():
    refs = _corpus()
    upper = [r.upper() for r in refs]
    assert paired_bootstrap(upper, upper, refs, lowercase=True)["BLEU"].system == pytest.approx(100.0)
    assert paired_bootstrap(upper, upper, refs)["BLEU"].system < 5


def test_mismatched_lengths_are_refused_with_the_counts():
    refs = _corpus(10)
    with pytest.raises(ToolkitError, match="9 baseline, 10 system hypotheses and 10 references"):
        paired_bootstrap(refs[:9], refs, refs)


def test_pooled_concatenates_seeds_and_repeats_references():
    hyps, refs = pooled([["a1", "b1"], ["a2", "b2"]], ["A", "B"])
    assert hyps == ["a1", "b1", "a2", "b2"] and refs == ["A", "B", "A", "B"]


# -- the two-level bootstrap: seed pairs, then sentences ------------------------------------------------------------

SEEDS = 5
MINIMUM = 1 / 1001  # (0 + 1) / (1000 + 1): no resample beyond the observed difference


def _seed_pairs(case: str, refs: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Baseline and system hypotheses of each seed pair (each seed's noise drawn apart, as training runs differ)."""
    if case == "identical systems":
        runs = [_noisy(refs, 0.7, seed) for seed in range(SEEDS)]
        return runs, [list(run) for run in runs]
    if case == "the references against noisy copies, on every seed":
        return [_noisy(refs, 0.5, seed) for seed in range(SEEDS)], [list(refs) for _ in range(SEEDS)]
    if case == "better by about the same on every seed":
        return [_noisy(refs, 0.6, seed) for seed in range(SEEDS)], [_noisy(refs, 0.7, 10 + s) for s in range(SEEDS)]
    if case == "one seed pair carries the whole difference":  # the others: the same hypotheses in both
        same = [_noisy(refs, 0.7, seed) for seed in range(1, SEEDS)]
        return [_noisy(refs, 0.5, 0), *same], [list(refs), *[list(run) for run in same]]
    if case == "seed pairs that differ in opposite directions":
        low, high = [_noisy(refs, 0.6, s) for s in range(4)], [_noisy(refs, 0.8, 10 + s) for s in range(4)]
        return [low[0], high[1], low[2], high[3]], [high[0], low[1], high[2], low[3]]
    raise AssertionError(case)


# case -> (the two-level p as (low, high) bounds, or exact; the pooled test's p, likewise)
KNOWN_ANSWERS = {
    "identical systems": (1.0, 1.0),
    "the references against noisy copies, on every seed": (MINIMUM, MINIMUM),
    "better by about the same on every seed": (MINIMUM, MINIMUM),
    # the pooled test sees 1,000 (seed, sentence) items and a large difference; over the seeds, 4 of 5 pairs show
    # none: a resample that draws the one pair at most once (~74 % of them by the binomial) is never beyond
    # the observed difference, one that draws it 3 times or more (~6 %) always is
    "one seed pair carries the whole difference": ((0.05, 0.35), MINIMUM),
    "seed pairs that differ in opposite directions": ((0.4, 1.0), (0.05, 1.0)),
}


@pytest.mark.parametrize("case", KNOWN_ANSWERS)
def test_two_level_bootstrap_known_answers_beside_the_pooled_test(case):
    refs = _corpus()
    baseline, system = _seed_pairs(case, refs)
    two_level = two_level_bootstrap(baseline, system, refs)
    pooled_base, pooled_refs = pooled(baseline, refs)
    pooled_test = paired_bootstrap(pooled_base, pooled(system, refs)[0], pooled_refs)
    for metric in ("BLEU", "chrF"):
        for expected, got in zip(KNOWN_ANSWERS[case], (two_level, pooled_test), strict=True):
            p = got[metric].p_value
            if isinstance(expected, tuple):
                assert expected[0] < p <= expected[1], (case, metric, p)
            else:
                assert p == expected, (case, metric, p)
    if case == "one seed pair carries the whole difference":  # the same data: pooled significant, two-level not
        assert two_level["BLEU"].difference > 10 and two_level["BLEU"].p_value > 100 * pooled_test["BLEU"].p_value


def test_two_level_statistic_is_the_mean_of_the_seed_pairs_corpus_score_differences():
    from sacrebleu.metrics import BLEU, CHRF

    refs = _corpus()
    baseline, system = _seed_pairs("better by about the same on every seed", refs)
    result = two_level_bootstrap(baseline, system, refs, lowercase=True)
    for metric, scorer in (("BLEU", BLEU(lowercase=True)), ("chrF", CHRF())):
        base = [scorer.corpus_score(hyps, [refs]).score for hyps in baseline]
        sys_ = [scorer.corpus_score(hyps, [refs]).score for hyps in system]
        assert result[metric].baseline == pytest.approx(sum(base) / SEEDS, abs=1e-9)
        assert result[metric].system == pytest.approx(sum(sys_) / SEEDS, abs=1e-9)
        assert result[metric].difference == pytest.approx(result[metric].system - result[metric].baseline, abs=1e-9)
    assert result["BLEU"].signature.startswith("two-level-bs:1000|pairs:5|seed:12345|nrefs:1|case:lc|")


def test_two_level_bootstrap_is_deterministic_given_its_seed():
    refs = _corpus(100)
    baseline, system = _seed_pairs("one seed pair carries the whole difference", refs)
    first = two_level_bootstrap(baseline, system, refs, n_samples=200)
    assert two_level_bootstrap(baseline, system, refs, n_samples=200) == first
    others = {two_level_bootstrap(baseline, system, refs, n_samples=200, rng_seed=s)["BLEU"].p_value for s in (1, 2, 3)}
    assert len(others | {first["BLEU"].p_value}) > 1  # the draws do depend on the seed


@pytest.mark.parametrize(
    ("resampled", "observed", "expected"),
    [
        ([0.0, 0.0, 0.0], 0.0, 1 / 4),  # nothing is greater than 0: only the +1
        ([1.0, 1.0, 1.0, 5.0], 1.0, 2 / 5),  # |d| - mean |d| = -1, -1, -1, 3: one is greater than 1
        ([-1.0, -1.0, -1.0, -5.0], -1.0, 2 / 5),  # the sign of the difference does not matter
        ([0.0, 0.0, 0.0, 4.0], 3.0, 1 / 5),  # centred: -1, -1, -1, 3; equal to the observed is not greater
    ],
)
def test_the_p_value_follows_sacrebleus_convention(resampled, observed, expected):
    assert bootstrap_p_value(resampled, observed) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("baseline", "system", "message"),
    [
        ([["a"]], [["a"], ["a"]], "1 baseline and 2 system seeds"),
        ([], [], "0 baseline and 0 system seeds"),
        ([["a"], ["a"]], [["a"], ["a", "b"]], "seed pair 2 has 1 baseline, 2 system hypotheses and 1 references"),
    ],
)
def test_two_level_bootstrap_refuses_seed_pairs_that_do_not_match(baseline, system, message):
    with pytest.raises(ToolkitError, match=message):
        two_level_bootstrap(baseline, system, ["A"])
