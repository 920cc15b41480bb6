"""``alad run``: every stage, baseline and ablation into one work directory.

Order: data -> stage 0 (teacher) -> student baselines -> per window K:
stage 1 (task-independent alignment), stage 2 (continual alignment), stage 3
(head / frozen / joint) and the no-alignment ablation -> results; of these,
what config key ``cases`` needs (:mod:`.plan`).

Each finished stage is recorded in ``progress.json`` with what it produced
(rows, histories) and its models on disk (``models/``, ``adapters/``), so a
re-run skips it; a stage cut short resumes from its orbax checkpoint under
``checkpoints/`` (removed once the stage has finished, unless ``keep_checkpoints``).
Same config + seed -> same numbers, interrupted or not.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from alad_jax import distributed
from alad_train import plan, report
from alad_train.context import RunContext, build_context
from alad_train.plan import Step
from alad_train.config import Config
from alad_train.stages import alignment, finetune, latency, results, teacher
from alad_train.workdir import drop_cache, prepare_workdir

# progress.json's alignment stage -> its key in results.json's "alignment" section
_ALIGNMENT_KEYS = {"align": "stage1", "continual": "stage2"}


def run(cfg: Config, workdir: str | Path, *, restart: bool = False) -> dict:
    """The whole pipeline for ``cfg`` in ``workdir`` (resumes what is there; ``restart``: deletes it first)."""
    started = time.perf_counter()
    workdir = prepare_workdir(Path(workdir), cfg, restart=restart)
    distributed.check_shared_workdir(workdir)
    return execute(build_context(cfg, workdir), started)


def execute(ctx: RunContext, started: float) -> dict:
    """Every step of ``ctx``'s plan not yet recorded, then results.json, the plots and the cleanup."""
    rows, aligned = {}, {}
    for step in ctx.steps[:-1]:  # the last step measures latency
        out = ctx.progress.record(step.name, functools.partial(_stage_of(ctx, step), ctx, step))
        if step.alignment:
            aligned.setdefault(f"w{step.window}", {})[_ALIGNMENT_KEYS[step.alignment]] = _without_history(out)
        else:  # a results row carries its identity as fields (results.json's readers never parse its name)
            rows[step.row_id] = {"name": out["name"], **step.row_id.record(), **out}
    timed = ctx.progress.record(plan.LATENCY, lambda: latency.latencies(ctx, [row.name for row in rows]))
    rows = {row: {**out, "latency_ms": timed["p50_ms"][row.name], "latency_p95_ms": timed["p95_ms"][row.name]}
            for row, out in rows.items()}
    out = results.results(ctx, rows, aligned, time.perf_counter() - started)
    if distributed.is_primary():
        report.write_results(ctx.workdir, out)
        histories = {name: rec["history"] for name, rec in ctx.progress.records.items() if "history" in rec}
        report.plot_curves(ctx.workdir, histories)
        report.plot_results(ctx.workdir, out)
        if not ctx.cfg.keep_cache:
            drop_cache(ctx.workdir)
    ctx.logger.close()
    return out


def _stage_of(ctx: RunContext, step: Step):
    """The stage function that produces ``step``'s record."""
    if step.alignment:
        return alignment.alignment
    return teacher.teacher if step.case is ctx.teacher else finetune.task_case


def _without_history(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "history"}
