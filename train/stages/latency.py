"""The last step: the latency of every row's saved model, timed interleaved (:mod:`alad_train.measure`)."""

from __future__ import annotations

from alad_jax.inference.saved_model import load_aligned_model
from alad_train import batches, measure
from alad_train.context import RunContext


def latencies(ctx: RunContext, names: list[str]) -> dict:
    """p50 / p95 ms of one jitted forward per row's saved model. The teacher reads its own tokenization of the
    same test rows."""
    cfg, qa = ctx.cfg, ctx.cfg.task == "qa"
    shape = (cfg.eval_batch_size, cfg.max_length)
    bucketed = batches.bucketed(cfg)
    first = {task_name: measure.latency_batch(bucketed.eval(task.text_rows("test"))[0], shape, qa=qa)
             for task_name, task in (("student", ctx.task), ("teacher", ctx.teacher_task))}
    row_batches = {name: first["teacher" if name == ctx.teacher.row_name() else "student"] for name in names}
    row_models = {name: load_aligned_model(ctx.workdir / "models" / name, impl=cfg.adapter_impl).model
                  for name in names}
    return measure.interleaved_latency(row_models, row_batches, runs=cfg.latency_batches, qa=qa)
