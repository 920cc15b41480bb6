"""Stage 3, the baselines and the ablation: a task model trained for one case, scored, and saved."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from alad_jax import distributed
from alad_jax.adapter import export_reference, import_reference
from alad_jax.inference.saved_model import load_info, save_aligned_model
from alad_jax.models.task_model import TaskModel
from alad_jax.param_count import count_params
from alad_train import align, batches, cases, measure, models, predictions
from alad_train.cases import Case
from alad_train.context import RunContext, load_student
from alad_train.files import jsonable
from alad_train.loop import Objective
from alad_train.plan import Step
from alad_train.stages.common import stopping, train


def task_case(ctx: RunContext, step: Step) -> dict:
    """The row of a student case (a baseline, or an AlAd case of window ``step.window``)."""
    cfg, case, name, window = ctx.cfg, step.case, step.name, step.window
    student = load_student(cfg, ctx.student_dir)
    adapter = None
    if case.windowed:
        if case.adapter == cases.FRESH:
            teacher_width = int(load_info(ctx.teacher_dir)["output_dim"])
            adapter = models.new_adapter(cfg, student.config.hidden_size, teacher_width, window,
                                         nnx.Rngs(align.stage_seed(cfg, name)))
        else:
            adapter = import_reference(ctx.adapter_path(window, "continual"), impl=cfg.adapter_impl)
    width = adapter.teacher_dim if adapter is not None else student.config.hidden_size
    head = ctx.task.make_head(width, align.stage_seed(cfg, name + "_head"))
    model = TaskModel(student, head, adapter, train_encoder=case.trains_encoder)
    row, best = train_and_score(ctx, name, model, case, window)
    adapter_file = ctx.adapter_path(window, case.name) if adapter is not None else None
    save_model(ctx, name, best, case, row, model_name=cfg.student, adapter_file=adapter_file)
    return row


def train_and_score(ctx: RunContext, name: str, model: TaskModel, case: Case, window: int | None,
                    task=None) -> tuple[dict, TaskModel]:
    """Train ``case``'s parameters of ``model`` (its AlAd of window K, or None); its row (dev/test, params, latency,
    cosine) and best model.

    Cases with a frozen student train and select on its cached output (a frozen
    encoder computes the same thing every epoch); the reported dev/test numbers
    come from the full model.
    """
    stage_cfg = getattr(ctx.cfg.stages, case.stage)
    task = task or ctx.task
    cached = ctx.cfg.cache_features and case.frozen_student
    train_prepare = ctx.features.encoder_hidden("train") if cached else None
    dev_prepare = ctx.features.encoder_hidden("dev") if cached else None
    strategy = batches.for_finetune(ctx.cfg, window)
    result = train(
        ctx, name, Objective(model, case.trainable, task.loss_fn), stage_cfg,
        lambda epoch: task.train_batches(stage_cfg, epoch, strategy),
        lambda m: task.evaluate(m, "dev", strategy, dev_prepare),
        higher_is_better=True, prepare=train_prepare,
    )
    best = result.model
    (dev_score, dev_metrics), (test_score, test_metrics) = (
        _predict_and_save(ctx, name, task, best, split, strategy) for split in ("dev", "test"))
    if ctx.cfg.task == "qa":  # both headline numbers, as SQuAD reports them
        dev_score = {"f1": dev_metrics["f1"], "exact": dev_metrics["exact"]}
        test_score = {"f1": test_metrics["f1"], "exact": test_metrics["exact"]}
    row = {
        "name": name, "dev": dev_score, "test": test_score,
        "params": {"total": count_params(best), "trainable": result.trainable_params,
                   "adapter": count_params(best.adapter)},
        "cosine": _cosine(ctx, best, window, ctx.features.encoder_hidden("test") if cached else None)
        if best.adapter is not None else None,
        "dev_metrics": dev_metrics, "test_metrics": test_metrics,
        "train_seconds": round(result.seconds, 2), "steps": result.steps,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "resumed_seconds": result.resumed_seconds, **stopping(result),
    }
    return jsonable(row), best


def save_model(ctx: RunContext, name: str, best: TaskModel, case: Case, row: dict, *, model_name: str,
               adapter_file: Path | None = None, task=None) -> None:
    """A row's best model as a saved aligned model (``models/<row>``), and its AlAd as ``adapter_file``:
    what later stages, the latency stage and ``alad predict`` read. Process 0 writes, the others
    wait at a barrier (several processes gather the model to each host first)."""
    cfg, task = ctx.cfg, task or ctx.task
    best = distributed.host_copy(best)
    with distributed.primary_writes(name) as writer:
        if not writer:
            return
        if adapter_file is not None:
            export_reference(best.adapter, adapter_file)
        save_aligned_model(
            ctx.workdir / "models" / name, encoder=best.encoder, adapter=best.adapter, head=best.head,
            labels=task.vocab.labels if cfg.task != "qa" else (), task=cfg.task,
            max_length=cfg.max_length, tokenizer=task.tokenizer, stride=cfg.stride,
            meta={"teacher": cfg.teacher, "student": cfg.student, "student_layers": cfg.student_layers,
                  "encoder": model_name, "case": case.name, "dev": row["dev"], "test": row["test"],
                  "null_threshold": row["test_metrics"].get("null_threshold"),
                  "max_query_length": cfg.max_query_length},
        )


def _predict_and_save(ctx: RunContext, name: str, task, model: TaskModel, split: str,
                      strategy: batches.Batching) -> tuple[float, dict]:
    """(score, metrics) of ``model`` on ``split``, scored from the very records written to
    ``predictions/<row>.<split>.jsonl`` (:mod:`alad_train.predictions`): the file reproduces the row's numbers."""
    records, meta = task.predict(model, split, strategy)
    score, metrics = task.score(records, meta)
    if distributed.is_primary():
        predictions.write(ctx.workdir, name, split, task=ctx.cfg.task, records=records, score=score, meta=meta)
    return score, metrics


def _cosine(ctx: RunContext, model: TaskModel, window: int, prepare=None) -> float:
    """Mean token cosine between the model's AlAd output (window K) and the fine-tuned teacher, on test.

    ``prepare`` may supply a frozen student's cached output (then only AlAd runs).
    """
    cache, teacher_rows = ctx.features.cache("test"), ctx.features.teacher_rows("test")
    test_batches = batches.for_alignment(ctx.cfg, window, teacher_rows.level).eval(ctx.task.text_rows("test"))
    # At word level: per word (the cache holds the teacher's word means at the student's tokens).
    words = lambda batch: teacher_rows.add_to_batch(batch, teacher_ids=False)
    return measure.token_cosine_to_teacher(model, test_batches, cache, prepare, with_words=words)
