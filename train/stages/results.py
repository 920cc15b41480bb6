"""results.json: the rows, the alignment stages' records, and what the run was."""

from __future__ import annotations

import jax

from alad_jax import compile_meter, distributed, xla_cpu
from alad_train import cases, plan, report
from alad_train.context import RunContext


def results(ctx: RunContext, rows: dict[cases.RowId, dict], alignment: dict, seconds: float) -> dict:
    """The content of results.json for ``rows`` (identity -> row) and ``alignment`` (``wK`` -> stage -> record)."""
    cfg = ctx.cfg
    teacher = rows[cases.RowId(ctx.teacher)]
    teacher_total = teacher["params"]["total"]
    student = f"{cfg.student} (first {cfg.student_layers} layers)" if cfg.student_layers else cfg.student
    out_rows = []
    for row in rows.values():
        row = _compact_history(row)
        if row["params"]["adapter"]:
            pct = round(100 * row["params"]["adapter"] / teacher_total, 3)
            row["params"] = {**row["params"], "adapter_pct_of_teacher": pct}
        out_rows.append(row)
    return {
        "task": cfg.task, "metric": ctx.task.metric, "teacher": cfg.teacher, "student": student,
        "notes": ctx.task.notes + [
            f"latency_ms: p50 (latency_p95_ms: p95) of {cfg.latency_batches} jitted forwards per row on one "
            f"batch of {cfg.eval_batch_size} test rows padded to max_length {cfg.max_length}, every row's saved "
            f"model timed in turn (interleaved)",
            f"alignment features cached: {cfg.cache_features}",
        ] + _scope_notes(ctx, teacher) + ([f"packed batches: fine-tunes and their evaluation run on rows of {cfg.max_length} positions "
              "holding several sentences (block-diagonal attention, positions restarting per sentence)"]
             if cfg.packing and cfg.task != "qa" else []),
        "alignment": alignment,
        "cases": [c.name for c in cases.selected(cfg.cases)],
        "rows": out_rows,
        # paired bootstrap intervals from the rows' saved test predictions (docs/statistics.md)
        **(report.run_intervals(ctx.workdir, cfg.task, list(rows)) if distributed.is_primary() else {}),
        "metric_scale": 100 if cfg.task == "qa" else 1,
        "seconds": round(seconds, 1),
        # of all positions every stage's train steps computed on, the share that was padding
        "padding": _padding([*rows.values(), *(s for w in alignment.values() for s in w.values())]),
        # of this session's seconds, those spent tracing and compiling (see each stage's compile_seconds)
        "compile_seconds": round(compile_meter.seconds(), 1),
        "devices": [str(d) for d in jax.devices()],
        "processes": jax.process_count(),
        "xla_cpu": xla_cpu.describe(cfg.matmul_dtype),  # which library ran the bfloat16 matmuls (issue 28)
    }


def _scope_notes(ctx: RunContext, teacher: dict) -> list[str]:
    """What the run trained: the teacher's origin (``teacher`` is its row), and the rows config key ``cases``
    left out."""
    notes = [teacher["note"]] if "note" in teacher else (
        [] if ctx.teacher is cases.TEACHER_FT else [f"teacher: {ctx.teacher.about}"])
    skipped = plan.not_trained(ctx.cfg)
    if skipped:
        notes.append(f"not trained (config key cases = {ctx.cfg.cases}): {', '.join(skipped)}")
    return notes


def _padding(stages: list[dict]) -> float | None:
    """Padding share of the positions ``stages`` trained on together (None before stages recorded positions)."""
    positions = sum(s.get("positions", 0) for s in stages)
    real = sum(s["positions"] * (1 - s["padding"]) for s in stages if s.get("positions"))
    return round(1 - real / positions, 4) if positions else None


def _compact_history(row: dict) -> dict:
    """A results.json row keeps only the dev curve (and train loss) of its full history."""
    keep = ("epoch", "dev", "train_loss")
    return {**row, "history": [{k: h[k] for k in keep if k in h} for h in row.get("history", [])]}
