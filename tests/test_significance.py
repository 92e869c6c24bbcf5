"""sage_toolkit.significance: sacreBLEU's paired bootstrap, wrapped for the study."""

import random

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.significance import paired_bootstrap, pooled

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
