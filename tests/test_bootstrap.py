"""Paired bootstrap intervals (alad_jax.metrics.bootstrap): closed-form cases, agreement with the metrics
they resample, verdict wording at the boundaries, seeds resampled with sentences."""

import numpy as np
import pytest

from alad_jax.errors import AladError
from alad_jax.metrics import bootstrap
from alad_jax.metrics.tagging import accuracy, entity_f1


def _pos(correct_per_sentence, words=10):
    """A system with ``correct`` of ``words`` words right in each sentence."""
    gold = [["NOUN"] * words for _ in correct_per_sentence]
    pred = [["NOUN"] * c + ["VERB"] * (words - c) for c in correct_per_sentence]
    return gold, pred


def test_identical_predictions_give_a_zero_interval():
    gold, pred = _pos(np.random.default_rng(1).integers(0, 11, 200))
    a = bootstrap.accuracy_counts(gold, pred)
    interval = bootstrap.paired_difference([(a, a)], resamples=2000)
    assert (interval.diff, interval.ci_low, interval.ci_high) == (0.0, 0.0, 0.0)
    assert interval.verdict == bootstrap.NO_DIFFERENCE


def test_a_constant_difference_is_recovered_exactly():
    """b is right on one word fewer than a in every 10-word sentence: a - b = 0.1 in every resample."""
    correct = np.random.default_rng(2).integers(1, 11, 300)
    gold, pred_a = _pos(correct)
    _, pred_b = _pos(correct - 1)
    interval = bootstrap.paired_difference([(bootstrap.accuracy_counts(gold, pred_a),
                                             bootstrap.accuracy_counts(gold, pred_b))], resamples=2000)
    assert interval.diff == pytest.approx(0.1)
    assert interval.ci_low == pytest.approx(0.1) and interval.ci_high == pytest.approx(0.1)
    assert interval.verdict == bootstrap.BETTER


def test_interval_of_a_known_difference_matches_its_normal_approximation():
    """Per sentence a - b is +1 word in 30% of 1,000 one-word sentences: diff 0.30, standard error
    sqrt(0.3 * 0.7 / 1000) = 0.0145, so the 95% interval is about 0.30 -+ 0.028."""
    n = 1000
    flips = np.zeros(n, int)
    flips[:300] = 1
    gold = [["X"] for _ in range(n)]
    pred_a = [["X"] for _ in range(n)]
    pred_b = [["Y"] if f else ["X"] for f in flips]
    interval = bootstrap.paired_difference([(bootstrap.accuracy_counts(gold, pred_a),
                                             bootstrap.accuracy_counts(gold, pred_b))], resamples=10_000)
    assert interval.diff == pytest.approx(0.3)
    half = 1.96 * np.sqrt(0.3 * 0.7 / n)
    assert interval.ci_low == pytest.approx(0.3 - half, abs=0.004)
    assert interval.ci_high == pytest.approx(0.3 + half, abs=0.004)


def test_accuracy_counts_pool_words_as_the_metric_does():
    gold = [["A", "B", "C"], ["A"], ["B", "B"]]
    pred = [["A", "B", "A"], ["B"], ["B", "B"]]
    counts = bootstrap.accuracy_counts(gold, pred)
    assert counts.counts.tolist() == [[2, 3], [0, 1], [2, 2]]
    assert counts.value == pytest.approx(accuracy(gold, pred)) == pytest.approx(4 / 6)


def test_entity_counts_recompute_seqeval_micro_f1_on_any_resample():
    """Micro F1 from summed per-sentence counts equals entity_f1 on the resampled sentences themselves."""
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["O", "O"], ["I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O"], ["B-LOC", "B-LOC"], ["B-ORG", "O", "O"], ["O", "B-PER"], ["B-LOC", "O"]]
    counts = bootstrap.entity_counts(gold, pred)
    assert counts.value == pytest.approx(entity_f1(gold, pred)["micro_f1"])
    rng = np.random.default_rng(3)
    for _ in range(20):
        idx = rng.integers(0, len(gold), len(gold))
        expected = entity_f1([gold[i] for i in idx], [pred[i] for i in idx])["micro_f1"]
        assert bootstrap.metric_of(counts.counts[idx].sum(0), "f1") == pytest.approx(expected)


def test_f1_with_no_entities_anywhere_is_zero_as_seqeval():
    counts = bootstrap.entity_counts([["O", "O"]], [["O", "O"]])
    assert counts.value == 0.0 == entity_f1([["O", "O"]], [["O", "O"]])["micro_f1"]


@pytest.mark.parametrize("low, high, expected", [
    (0.001, 0.5, bootstrap.BETTER),
    (0.0, 0.5, bootstrap.NO_DIFFERENCE),     # touching 0 does not exclude it
    (-0.5, 0.0, bootstrap.NO_DIFFERENCE),
    (-0.5, -1e-9, bootstrap.WORSE),
    (-0.33, 0.65, bootstrap.NO_DIFFERENCE),  # the frozen - noalign on an unseen corpus
    (float("nan"), float("nan"), bootstrap.NO_DIFFERENCE),
])
def test_verdict_wording_at_the_boundaries(low, high, expected):
    assert bootstrap.verdict(low, high) == expected


def test_same_inputs_and_seed_give_the_same_interval_and_another_seed_a_close_one():
    gold, pred_a = _pos(np.random.default_rng(4).integers(0, 11, 150))
    _, pred_b = _pos(np.random.default_rng(5).integers(0, 11, 150))
    pair = [(bootstrap.accuracy_counts(gold, pred_a), bootstrap.accuracy_counts(gold, pred_b))]
    one, again = (bootstrap.paired_difference(pair, resamples=3000, seed=7) for _ in range(2))
    other = bootstrap.paired_difference(pair, resamples=3000, seed=8)
    assert one == again
    assert other != one and other.ci_low == pytest.approx(one.ci_low, abs=0.01)


def test_seeds_widen_the_interval_by_their_spread():
    """Three seeds whose differences are +0.0, +0.1, +0.2 with no sentence-level noise: one seed's interval
    is a point (better); across seeds the interval spans the seeds' spread and the point is their mean."""
    correct = np.full(200, 5)
    gold, pred_b = _pos(correct)
    seeds = []
    for extra in (0, 1, 2):
        _, pred_a = _pos(correct + extra)
        seeds.append((bootstrap.accuracy_counts(gold, pred_a), bootstrap.accuracy_counts(gold, pred_b)))
    single = bootstrap.paired_difference(seeds[1:2], resamples=2000)
    assert (single.ci_low, single.ci_high) == (pytest.approx(0.1), pytest.approx(0.1))
    across = bootstrap.paired_difference(seeds, resamples=4000)
    assert across.diff == pytest.approx(0.1)
    # The mean of 3 seeds drawn from {0, .1, .2}: all three 0 (or all .2) has probability 1/27 = 3.7% > 2.5%.
    assert across.ci_low == pytest.approx(0.0, abs=1e-12) and across.ci_high == pytest.approx(0.2)
    assert single.verdict == bootstrap.BETTER and across.verdict == bootstrap.NO_DIFFERENCE


def test_mismatched_systems_are_one_clear_error():
    a = bootstrap.mean_counts([1.0, 0.0, 1.0])
    b = bootstrap.mean_counts([1.0, 0.0])
    with pytest.raises(AladError, match="not scored on one test set"):
        bootstrap.resample_metrics([[a, b]])
    with pytest.raises(AladError, match="must pair up"):
        bootstrap.accuracy_counts([["A"]], [["A", "B"]])
    with pytest.raises(AladError, match="resamples is 0"):
        bootstrap.resample_metrics([[a, a]], resamples=0)
