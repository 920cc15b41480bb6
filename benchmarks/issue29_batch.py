"""The real step issue 29 compares across layouts: the teacher fine-tune's first packed batch of the issue's
command (shared by benchmarks/layout_step.py and benchmarks/layout_grouped.py; docs/multihost.md)."""

from alad_jax.models import hub
from alad_train import batches, tasks
from alad_train.config import load_config

ISSUE_OVERRIDES = ["data.max_train=64", "data.max_dev=32", "data.max_test=32", "corpus.max_sentences=64",
                   "corpus.val_sentences=16"]


def teacher_batch(matmul_dtype: str, stage_name: str = "teacher"):
    """(config, task, the stage's config, its first training batch) under ``matmul_dtype``; ``stage_name``:
    ``teacher`` or ``student_ft`` (the student shares the teacher's tokenizer)."""
    cfg = load_config(None, [*ISSUE_OVERRIDES, f"matmul_dtype={matmul_dtype}"])
    task = tasks.TaggingTask.load(cfg, hub.load_tokenizer(cfg.teacher))
    stage = getattr(cfg.stages, stage_name)
    return cfg, task, stage, task.train_batches(stage, 0, batches.for_finetune(cfg, None))[0]
