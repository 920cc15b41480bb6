"""Several seeds: one whole run per seed, reported together (``seeds = [0, 1, 2]`` or ``alad run --seeds 0,1,2``).

A thin layer around the one-seed run: seed ``s`` runs :func:`alad_train.pipeline.run` with ``seed = s`` in
``WORKDIR/seed_<s>/`` (a complete work directory of its own, resumable on its own: a run killed in seed 2
resumes there, seeds 0 and 1 are read back from their progress). The seed changes everything a seed
drives: initialisations, batch order, dropout and the subsamples of ``data.max_*`` (so each seed may
have its own test sentences). Then ``WORKDIR/results.json`` holds per row the mean and sample standard
deviation over seeds, every seed's numbers, the comparisons with intervals that resample seeds and
sentences together, and each seed's own comparisons (docs/statistics.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alad_jax import distributed
from alad_train.config import Config
from alad_train import cases, pipeline, report
from alad_train.report.markdown import _Numbers, still_rising
from alad_train.workdir import prepare_workdir

STOPPING = ("epochs_run", "best_epoch", "stopped", "history")


def seed_dir(workdir: str | Path, seed: int) -> Path:
    return Path(workdir) / f"seed_{seed}"


def run(cfg: Config, workdir: str | Path, *, restart: bool = False) -> dict:
    """``cfg``'s run in ``workdir``: one seed (``cfg.seeds`` empty) as :func:`pipeline.run`, else one run per seed
    and their summary."""
    if not cfg.seeds:
        return pipeline.run(cfg, workdir, restart=restart)
    workdir = prepare_workdir(Path(workdir), cfg, restart=restart)
    per_seed = {}
    for seed in cfg.seeds:
        one = dataclasses.replace(cfg, seed=seed, seeds=[])
        per_seed[seed] = pipeline.run(one, seed_dir(workdir, seed), restart=restart)
    results = summarize(cfg, workdir, per_seed)
    if distributed.is_primary():
        report.write_results(workdir, results)
        report.plot_results(workdir, results)
    return results


def _mean_std(values: list) -> tuple:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of numbers or of dicts of numbers."""
    if isinstance(values[0], dict):
        pairs = {k: _mean_std([v[k] for v in values]) for k in values[0]}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _least_finished(rows: dict[int, dict], nums: dict[int, _Numbers]) -> int:
    """The seed whose row is least finished: still rising at its cap, else stopped at its cap, else the first."""
    for test in (lambda s: still_rising(rows[s], nums[s]), lambda s: rows[s].get("stopped") == "cap"):
        for seed in rows:
            if test(seed):
                return seed
    return next(iter(rows))


def summarize(cfg: Config, workdir: Path, per_seed: dict[int, dict]) -> dict:
    """The several-seed results.json from each seed's results (and its saved test predictions)."""
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    by_seed = {s: {r["name"]: r for r in res["rows"]} for s, res in per_seed.items()}
    nums = {s: _Numbers(res) for s, res in per_seed.items()}
    rows = []
    for name in by_seed[seeds[0]]:
        seed_rows = {s: by_seed[s][name] for s in seeds if name in by_seed[s]}
        (dev, dev_std), (test, test_std) = (_mean_std([r[split] for r in seed_rows.values()]) for split in ("dev", "test"))
        stopping_seed = _least_finished(seed_rows, nums)
        cosines = [r["cosine"] for r in seed_rows.values()]
        row = {
            "name": name, **{k: seed_rows[seeds[0]][k] for k in ("case", "window")}, "dev": dev, "test": test, "dev_std": dev_std, "test_std": test_std,
            "params": seed_rows[seeds[0]]["params"],
            "latency_ms": float(np.mean([r["latency_ms"] for r in seed_rows.values()])),
            "cosine": None if any(c is None for c in cosines) else float(np.mean(cosines)),
            "per_seed": [{"seed": s, "dev": r["dev"], "test": r["test"],
                          **{k: r[k] for k in STOPPING[:3] if k in r}} for s, r in seed_rows.items()],
            **{k: seed_rows[stopping_seed][k] for k in STOPPING if k in seed_rows[stopping_seed]},
            "stopping_seed": stopping_seed,
        }
        rows.append(row)
    names = [r["name"] for r in rows]
    counts = [report.statistics.load_counts(seed_dir(workdir, s), cfg.task, names) for s in seeds]
    seed_comparisons = [{**c, "seed": s} for s, res in per_seed.items() for c in res.get("comparisons") or []]
    return {
        "task": first["task"], "metric": first["metric"], "teacher": first["teacher"], "student": first["student"],
        "notes": [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), one whole run each in seed_<s>/: "
                  "dev and test are means over seeds, dev_std and test_std sample standard deviations"]
                 + list(first.get("notes") or []),
        "seeds": seeds, "rows": rows, "metric_scale": first.get("metric_scale", 1),
        **report.intervals(cfg.task, counts, cases.windows_in(map(cases.RowId.of_record, rows)), seeds=seeds),
        "seed_comparisons": seed_comparisons,
        "seconds": round(sum(float(res.get("seconds") or 0) for res in per_seed.values()), 1),
        "devices": first.get("devices"), "processes": first.get("processes"),
    }

