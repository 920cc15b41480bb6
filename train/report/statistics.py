"""The intervals of results.json: every comparison of "Did alignment help?" and the gap-recovered column,
computed from the rows' saved test predictions (:mod:`alad_train.predictions`) by a paired bootstrap
(:mod:`alad_jax.metrics.bootstrap`; docs/statistics.md).

- ``comparisons``: ``{a, b, diff, ci_low, ci_high, verdict, unit, resamples}`` per pair of
  :func:`pairs`, ``diff`` = a - b in the metric's own units (as the rows' ``test``);
- ``gap_recovered``: ``{row, value, ci_low, ci_high, resamples}`` in percent of the probe-to-teacher gap.

One seed resamples the test units (sentences; questions for QA). Several seeds (:mod:`alad_train.seeds`)
resample seeds and, within each, units: the interval then includes seed-to-seed variation
(``unit`` says ``"seeds x sentences"``) and each entry lists its ``seeds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from alad_jax.metrics import bootstrap
from alad_jax.metrics.squad import raw_scores
from alad_train import cases, predictions

TEACHER = cases.TEACHER_FT.row_name()
PROBE = cases.PROBE.row_name()
STUDENT_FT = cases.STUDENT_FT.row_name()
SEED = 0  # the bootstrap's own seed: the same predictions always give the same intervals


def pairs(windows: Sequence[int]) -> list[tuple[str, str]]:
    """The comparisons ``(a, b)`` that answer "did alignment help?", per window K."""
    out = []
    for k in windows:
        frozen = cases.FROZEN.row_name(k)
        out += [(frozen, PROBE), (frozen, cases.NOALIGN.row_name(k)), (cases.JOINT.row_name(k), STUDENT_FT)]
    return out


def unit_counts(task: str, records: list[dict]) -> bootstrap.UnitCounts:
    """Per-unit counts of a row's saved records under the task's headline metric (QA: F1 in percent)."""
    if task == "pos":
        return bootstrap.accuracy_counts([r["gold"] for r in records], [r["pred"] for r in records])
    if task == "ner":
        return bootstrap.entity_counts([r["gold"] for r in records], [r["pred"] for r in records])
    _, f1 = raw_scores(predictions.qa_examples(records), {r["id"]: r["pred"] for r in records})
    return bootstrap.mean_counts([100.0 * f1[r["id"]] for r in records])


def load_counts(workdir: str | Path, task: str, names: Sequence[str]) -> dict[str, bootstrap.UnitCounts]:
    """Test counts of every row in ``names`` that saved its test predictions."""
    out = {}
    for name in names:
        file = predictions.path(workdir, name, "test")
        if file.is_file():
            out[name] = unit_counts(task, predictions.read(file)[1])
    return out


def intervals(task: str, per_seed: Sequence[dict[str, bootstrap.UnitCounts]], windows: Sequence[int], *,
              seeds: Sequence[int] | None = None, resamples: int = bootstrap.RESAMPLES) -> dict:
    """``{"comparisons": [...], "gap_recovered": [...]}`` from each seed's row counts (one dict per seed), comparing
    the rows of each window K in ``windows``.

    Rows missing in any seed (no saved predictions) are left out of both lists.
    """
    names = [n for n in per_seed[0] if all(n in counts for counts in per_seed)]
    if not names:
        return {"comparisons": [], "gap_recovered": []}
    samples = bootstrap.resample_metrics([[counts[n] for n in names] for counts in per_seed], resamples=resamples,
                                         seed=SEED)
    column = {n: samples[:, i] for i, n in enumerate(names)}
    value = {n: float(np.mean([counts[n].value for counts in per_seed])) for n in names}
    unit = "questions" if task == "qa" else "sentences"
    extra = {} if seeds is None else {"seeds": list(seeds)}
    if seeds is not None:
        unit = f"seeds x {unit}"
    comparisons = []
    for a, b in pairs(windows):
        if a in column and b in column:
            low, high = bootstrap.percentile_interval(column[a] - column[b])
            comparisons.append({"a": a, "b": b, "diff": value[a] - value[b], "ci_low": low, "ci_high": high,
                                "verdict": bootstrap.verdict(low, high), "unit": unit, "resamples": resamples,
                                **extra})
    gaps = []
    if TEACHER in column and PROBE in column and value[TEACHER] != value[PROBE]:
        gap = column[TEACHER] - column[PROBE]
        for name in names:
            if name in (TEACHER, PROBE):
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                low, high = bootstrap.percentile_interval(100.0 * (column[name] - column[PROBE]) / gap)
            gaps.append({"row": name, "value": 100.0 * (value[name] - value[PROBE]) / (value[TEACHER] - value[PROBE]),
                         "ci_low": low, "ci_high": high, "resamples": resamples, **extra})
    return {"comparisons": comparisons, "gap_recovered": gaps}


def run_intervals(workdir: str | Path, task: str, rows: Sequence[cases.RowId]) -> dict:
    """:func:`intervals` of one run's saved test predictions of ``rows``."""
    return intervals(task, [load_counts(workdir, task, [row.name for row in rows])], cases.windows_in(rows))
