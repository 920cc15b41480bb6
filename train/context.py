"""The run's context: everything ``alad run``'s stages share, built once by :func:`build_context`.

A :class:`RunContext` is frozen: the config, the work directory and what was recorded in it, the mesh,
the plan, the task data in both tokenizations, how the teacher reads the student's rows, and the
per-split features (:class:`Features`) that are computed on first use and kept. The stages
(:mod:`alad_train.stages`) are functions of it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from flax import nnx
from jax.sharding import Mesh

from alad_jax import compile_meter, distributed, sharding
from alad_jax.cache import HiddenCache
from alad_jax.data import batching, sources, teacher_inputs
from alad_jax.errors import AladError
from alad_jax.inference.saved_model import load_aligned_model
from alad_jax.models import hub
from alad_train import align, own_teacher, plan, report, tasks
from alad_train.cases import Case
from alad_train.config import Config
from alad_train.files import atomic_write_text
from alad_train.preflight import preflight
from alad_train.workdir import drop_finished_checkpoints

Task = tasks.TaggingTask | tasks.QATask


class Progress:
    """progress.json: what each finished stage produced, so that a re-run skips it."""

    def __init__(self, workdir: Path, *, keep_checkpoints: bool):
        self.path = workdir / "progress.json"
        self._workdir, self._keep_checkpoints = workdir, keep_checkpoints
        self.records: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def record(self, name: str, run: Callable[[], dict]) -> dict:
        """Run ``run`` once per work directory; its JSON result is remembered in progress.json."""
        if name in self.records:
            return self.records[name]
        started, compiled = time.perf_counter(), compile_meter.seconds()
        result = run()
        # Training + evaluation + saving, and the training an interrupted session did before this one.
        result["wall_seconds"] = round(time.perf_counter() - started + result.pop("resumed_seconds", 0.0), 2)
        # Of this session's part of it: tracing, lowering and compiling (or fetching from the XLA cache).
        result["compile_seconds"] = round(compile_meter.seconds() - compiled, 2)
        self.records[name] = result
        if distributed.is_primary():
            atomic_write_text(self.path, json.dumps(self.records, indent=1))
            print(report.format_summary(name, result), flush=True)
            if not self._keep_checkpoints:
                drop_finished_checkpoints(self._workdir, self.records)
        return result


class Features:
    """Per task split, the teacher's side of its rows and the frozen student's and fine-tuned teacher's hidden
    states (a :class:`HiddenCache`), each computed on first use and kept for the run."""

    def __init__(self, cfg: Config, workdir: Path, task: Task, plan_: teacher_inputs.TeacherInputs,
                 student_dir: str, teacher_dir: Path):
        self._cfg, self._workdir, self._task, self._plan = cfg, workdir, task, plan_
        self._student_dir, self._teacher_dir = student_dir, teacher_dir
        self._teacher_rows: dict[str, teacher_inputs.TeacherRows] = {}
        self._caches: dict[str, HiddenCache] = {}

    def teacher_rows(self, split: str) -> teacher_inputs.TeacherRows:
        """The teacher's side of a task split's rows."""
        if split not in self._teacher_rows:
            sentences = self._task.sentences[split] if self._plan.level == "word" else None
            self._teacher_rows[split] = self._plan.rows(self._task.text_rows(split), sentences)
        return self._teacher_rows[split]

    def cache(self, split: str) -> HiddenCache:
        """Frozen student and fine-tuned teacher hidden states of a task split (computed once; needs stage 0)."""
        if split not in self._caches:
            teacher, _ = load_teacher(self._teacher_dir)
            features = self._task.text_rows(split)
            self._caches[split] = HiddenCache.build(
                self._workdir / "cache", tasks.rows_of(features), load_student(self._cfg, self._student_dir),
                teacher, token_types=features.token_type_ids, buckets=batching.length_buckets(self._cfg.max_length),
                matmul_dtype=self._cfg.matmul_dtype, **self.teacher_rows(split).cache_kwargs())
        return self._caches[split]

    def encoder_hidden(self, split: str):
        """A ``prepare`` that feeds the cached frozen-student output instead of running the student."""
        cache = self.cache(split)
        return lambda batch: {**batch, "encoder_hidden": cache.gather(batch)["student_hidden"]}


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every stage of one ``alad run`` reads.

    Attributes:
      cfg: the run's config.
      workdir: the work directory (``models/``, ``adapters/``, ``checkpoints/``, ``cache/``, progress.json).
      progress: progress.json (what each finished stage produced).
      mesh: the device mesh every train step shards over.
      logger: the TensorBoard scalar writer (a no-op on processes other than 0).
      teacher: the teacher row's case (:func:`own_teacher.teacher_case`).
      steps: the plan (:func:`plan.make_plan`), in run order; the last measures latency.
      student_dir: the student encoder (the configured one, or its first ``student_layers`` under ``models/``).
      task: the task data tokenized for the student.
      teacher_task: the same data tokenized for the teacher (``task`` itself when they share a vocabulary).
      teacher_inputs: how the teacher reads the student's rows (:mod:`alad_jax.data.teacher_inputs`).
      features: per-split teacher rows and hidden-state caches.
    """

    cfg: Config
    workdir: Path
    progress: Progress
    mesh: Mesh
    logger: report.ScalarLogger
    teacher: Case
    steps: tuple[plan.Step, ...]
    student_dir: str
    task: Task
    teacher_task: Task
    teacher_inputs: teacher_inputs.TeacherInputs
    features: Features

    @property
    def teacher_dir(self) -> Path:
        """The fine-tuned teacher's saved model (stage 0's output)."""
        return self.workdir / "models" / self.teacher.row_name()

    def adapter_path(self, window: int, stage: str) -> Path:
        """The AlAd a stage or case of window K exports, in the reference layout."""
        return self.workdir / "adapters" / f"w{window}_{stage}.safetensors"


def load_teacher(teacher_dir: Path) -> tuple[nnx.Module, nnx.Module]:
    """The fine-tuned teacher's (encoder, head), saved by stage 0 as a saved aligned model."""
    model = load_aligned_model(teacher_dir).model
    return model.encoder, model.head


def load_student(cfg: Config, student_dir: str) -> nnx.Module:
    """A fresh copy of the student encoder."""
    return hub.load_encoder(student_dir, cache_dir=cfg.cache_dir or None)[0]


def build_context(cfg: Config, workdir: Path) -> RunContext:
    """The context of ``cfg``'s run in the prepared ``workdir``: checks the inputs (:func:`preflight`), makes the
    student, loads and tokenizes the task data and plans the teacher's inputs."""
    progress = Progress(workdir, keep_checkpoints=cfg.keep_checkpoints)
    mesh = sharding.make_mesh(sharding.MeshConfig(cfg.mesh.data, cfg.mesh.fsdp))
    logger = report.ScalarLogger(workdir / "tensorboard", enabled=distributed.is_primary())
    for sub in ("models", "adapters", "checkpoints", "cache"):
        (workdir / sub).mkdir(exist_ok=True)
    preflight(cfg)
    if not cfg.keep_checkpoints and distributed.is_primary():  # a run killed between record and removal
        drop_finished_checkpoints(workdir, progress.records)
    teacher = own_teacher.teacher_case(cfg)
    steps = tuple(plan.make_plan(cfg, teacher))
    tokenizer = hub.load_tokenizer(cfg.teacher, cache_dir=cfg.cache_dir or None)
    student_dir = align.make_student(cfg, workdir)
    student_tok = hub.load_tokenizer(student_dir, cache_dir=cfg.cache_dir or None)
    task, teacher_task, inputs = _load_tasks(cfg, tokenizer, student_tok, steps, progress.records)
    features = Features(cfg, workdir, task, inputs, student_dir, workdir / "models" / teacher.row_name())
    return RunContext(cfg, workdir, progress, mesh, logger, teacher, steps, student_dir, task, teacher_task, inputs,
                      features)


def _load_tasks(cfg: Config, tokenizer, student_tok, steps, progress: dict):
    """(the student's task, the teacher's task, how the teacher reads the student's rows); a tokenizer pair that
    cannot align at ``alignment.level`` is refused."""
    task_cls = tasks.QATask if cfg.task == "qa" else tasks.TaggingTask
    same = teacher_inputs.same_vocabulary(tokenizer, student_tok)
    if cfg.task == "qa" and (not same or cfg.alignment.level != "token"):
        raise AladError(f"task qa needs a student that shares the teacher's tokenizer and alignment.level = "
                        f"\"token\"; {cfg.student} and {cfg.teacher} tokenize differently or level is word")
    task = task_cls.load(cfg, tokenizer if same else student_tok)
    teacher_task = task if same else task_cls.load(cfg, tokenizer)
    sentences = [] if same else [s.words for split in task.sentences.values() for s in split]
    if not same and not cfg.stages.align.from_ and any(s.alignment == "align" and s.name not in progress
                                                       for s in steps):
        sentences += [s.words for s in sources.read_corpus(cfg.corpus)]
    inputs = teacher_inputs.plan_teacher_inputs(
        tokenizer, student_tok, sentences, level=cfg.alignment.level, names=(cfg.teacher, cfg.student),
        max_length=min(4 * cfg.max_length, 512))
    return task, teacher_task, inputs
