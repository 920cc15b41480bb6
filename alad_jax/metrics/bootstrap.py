"""Paired bootstrap intervals for differences between systems scored on the same test units.

A metric here is a function of per-unit counts summed over the units the metric averages over:

- word accuracy: per sentence ``[correct words, words]``, metric = sum(correct) / sum(words)
  (words pooled per resample, as :func:`alad_jax.metrics.tagging.accuracy` pools them);
- entity F1 (seqeval semantics): per sentence ``[correct, predicted, gold entities]``, micro F1 =
  2 sum(correct) / (sum(predicted) + sum(gold)); entities never cross a sentence, so this is
  :func:`alad_jax.metrics.tagging.entity_f1`'s micro F1 recomputed on the resampled sentences;
- a mean over questions (SQuAD F1 or EM): per question ``[score, 1]``.

Resampling draws units with replacement (the same draw for every system: a *paired* bootstrap) and
recomputes each metric from the summed counts. Across seeds, :func:`resample_metrics` resamples
seeds and, within each drawn seed, its units (a two-level bootstrap), so the interval carries the
seed-to-seed variation as well as the test-set sampling. Everything is seeded: the same inputs give
the same interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from alad_jax.errors import AladError
from alad_jax.metrics.tagging import entities

RESAMPLES = 10_000
CONFIDENCE = 0.95
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
KINDS = ("ratio", "f1")


@dataclasses.dataclass(frozen=True)
class UnitCounts:
    """Per-unit counts of one system on one test set: ``counts[unit, k]``.

    ``kind`` says how summed counts give the metric: ``"ratio"`` (``k = 2``: sum c0 / sum c1) or
    ``"f1"`` (``k = 3``: 2 sum c0 / (sum c1 + sum c2), 0 when both sums are 0, as seqeval's zero
    division).
    """

    counts: np.ndarray
    kind: str

    def __post_init__(self):
        width = {"ratio": 2, "f1": 3}.get(self.kind)
        if width is None:
            raise AladError(f"bootstrap: unit counts of kind {self.kind!r}; use one of {list(KINDS)}")
        if self.counts.ndim != 2 or self.counts.shape[1] != width or not len(self.counts):
            raise AladError(f"bootstrap: {self.kind} counts must be [units >= 1, {width}], got {self.counts.shape}")

    @property
    def value(self) -> float:
        """The metric on every unit once (what the row reports)."""
        return float(metric_of(self.counts.sum(0), self.kind))


def metric_of(sums: np.ndarray, kind: str) -> np.ndarray:
    """The metric of summed counts ``sums[..., k]`` (see :class:`UnitCounts`)."""
    sums = np.asarray(sums, np.float64)
    if kind == "ratio":
        return sums[..., 0] / sums[..., 1]
    denominator = sums[..., 1] + sums[..., 2]
    return np.where(denominator > 0, 2.0 * sums[..., 0] / np.where(denominator > 0, denominator, 1.0), 0.0)


def accuracy_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> UnitCounts:
    """Per sentence ``[words tagged right, words]``."""
    _check_pairs(gold, pred)
    counts = [[sum(g == p for g, p in zip(gs, ps)), len(gs)] for gs, ps in zip(gold, pred)]
    return UnitCounts(np.asarray(counts, np.float64).reshape(-1, 2), "ratio")


def entity_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], *, scheme: str = "BIO") -> UnitCounts:
    """Per sentence ``[entities predicted right, entities predicted, gold entities]`` (seqeval semantics)."""
    _check_pairs(gold, pred)
    gold_entities, pred_entities = entities(gold, scheme=scheme), entities(pred, scheme=scheme)
    n = len(gold)
    column = lambda found: np.bincount([e[0] for e in found], minlength=n) if found else np.zeros(n)
    counts = np.stack([column(gold_entities & pred_entities), column(pred_entities), column(gold_entities)], 1)
    return UnitCounts(counts.astype(np.float64).reshape(-1, 3), "f1")


def mean_counts(scores: Sequence[float]) -> UnitCounts:
    """Per unit ``[score, 1]``: the metric is the mean score (e.g. SQuAD F1 per question)."""
    values = np.asarray(scores, np.float64).reshape(-1)
    return UnitCounts(np.stack([values, np.ones_like(values)], 1), "ratio")


def _check_pairs(gold, pred) -> None:
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise AladError("bootstrap: gold and predicted labels must pair up sentence by sentence and word by word")


def resample_metrics(seeds: Sequence[Sequence[UnitCounts]], *, resamples: int = RESAMPLES,
                     seed: int = 0) -> np.ndarray:
    """Each system's metric on ``resamples`` paired resamples: ``[resamples, systems]``.

    ``seeds[s][i]`` is system ``i`` trained with seed ``s``; all systems of a seed are scored on the
    same units (a seed may have its own test set). One seed: each resample draws that seed's units with
    replacement, the same draw for every system. Several seeds: each resample draws as many seeds with
    replacement, for each drawn seed its units, and averages each system's metric over the drawn seeds.
    """
    if not seeds or not seeds[0]:
        raise AladError("bootstrap: no systems to resample")
    if resamples < 1:
        raise AladError(f"bootstrap: resamples is {resamples}; use at least 1 (10,000 by default)")
    systems = len(seeds[0])
    stacked = []
    for s, group in enumerate(seeds):
        if len(group) != systems or len({(c.kind, len(c.counts)) for c in group}) != 1 or group[0].kind != seeds[0][0].kind:
            raise AladError(f"bootstrap: seed #{s}'s systems are not scored on one test set with one metric "
                            f"({[(c.kind, len(c.counts)) for c in group]})")
        stacked.append(np.stack([c.counts for c in group], 1))  # [units, systems, k]
    kind, n_seeds = seeds[0][0].kind, len(seeds)
    rng = np.random.default_rng(seed)
    out = np.zeros((resamples, systems))
    chunk = 1000
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = rng.integers(n_seeds, size=(rows, n_seeds)) if n_seeds > 1 else np.zeros((rows, 1), int)
        total = np.zeros((rows, systems))
        for position in range(drawn.shape[1]):
            for s, counts in enumerate(stacked):
                which = np.nonzero(drawn[:, position] == s)[0]
                if not len(which):
                    continue
                units = len(counts)
                # How often each unit is drawn in each resample (a multinomial draw = n draws with replacement).
                weights = rng.multinomial(units, np.full(units, 1.0 / units), size=len(which)).astype(np.float64)
                sums = (weights @ counts.reshape(units, -1)).reshape(len(which), systems, -1)
                total[which] += metric_of(sums, kind)
        out[start:start + rows] = total / drawn.shape[1]
    return out


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference ``a - b`` (in the metric's units), its percentile interval and the verdict."""

    diff: float
    ci_low: float
    ci_high: float
    resamples: int
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        return verdict(self.ci_low, self.ci_high)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``samples`` (non-finite samples dropped)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_difference(seeds: Sequence[tuple[UnitCounts, UnitCounts]], *, resamples: int = RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> Interval:
    """``a - b`` averaged over seeds (each pair one seed's ``(a, b)``), with its bootstrap interval."""
    samples = resample_metrics([list(pair) for pair in seeds], resamples=resamples, seed=seed)
    diff = float(np.mean([a.value - b.value for a, b in seeds]))
    low, high = percentile_interval(samples[:, 0] - samples[:, 1], confidence)
    return Interval(diff, low, high, resamples, confidence)


def verdict(ci_low: float, ci_high: float) -> str:
    """``"better"`` when the interval lies above 0, ``"worse"`` below 0, else ``"no detectable difference"``
    (an interval touching 0 does not exclude it)."""
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return NO_DIFFERENCE
