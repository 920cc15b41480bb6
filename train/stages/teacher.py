"""Stage 0: the teacher row (fine-tuned on the task, a new head on a fine-tuned teacher, or used as it is)."""

from __future__ import annotations

from alad_jax.models import hub
from alad_jax.models.task_model import TaskModel
from alad_train import align, batches, cases, own_teacher
from alad_train.context import RunContext
from alad_train.files import jsonable
from alad_train.plan import Step
from alad_train.stages.finetune import save_model, train_and_score


def teacher(ctx: RunContext, step: Step) -> dict:
    """The teacher's row; its best model is saved as ``models/teacher``, the alignment target of stages 1-3."""
    cfg, case, task = ctx.cfg, step.case, ctx.teacher_task
    encoder, _ = hub.load_encoder(cfg.teacher, cache_dir=cfg.cache_dir or None)
    if case.head == cases.GIVEN:  # the checkpoint's own classifier, evaluated as it is
        used = {t for split in task.sentences.values() for s in split for t in s.tags or ()}
        head, note = own_teacher.load_head(cfg, task.vocab.labels, used, encoder.config.hidden_size)
        best = TaskModel(encoder, head, train_encoder=False)
        row = jsonable({**own_teacher.score_as_is(case.row_name(), best, task, batches.for_finetune(cfg, None)),
                        "note": note})
        save_model(ctx, case.row_name(), best, case, row, model_name=cfg.teacher, task=task)
        return row
    head = ctx.task.make_head(encoder.config.hidden_size, align.stage_seed(cfg, case.row_name() + "_head"))
    model = TaskModel(encoder, head, train_encoder=case.trains_encoder)
    row, best = train_and_score(ctx, case.row_name(), model, case, None, task=task)
    save_model(ctx, case.row_name(), best, case, row, model_name=cfg.teacher, task=task)
    return row
