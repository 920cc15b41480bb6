"""``alad run``: every stage, baseline and ablation into one work directory.

Order: data -> stage 0 (teacher) -> student baselines -> per window K:
stage 1 (task-independent alignment), stage 2 (continual alignment), stage 3
(head / frozen / joint) and the no-alignment ablation -> results.

Each finished stage is recorded in ``progress.json`` with what it produced
(rows, histories) and its models on disk (``models/``, ``adapters/``), so a
re-run skips it; a stage cut short resumes from its orbax checkpoint under
``checkpoints/``. Same config + seed -> same numbers, interrupted or not.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import load_file, save_file

from alad_jax import sharding
from alad_jax.adapter import AlignmentAdapter, adapter_param_report, export_reference, import_reference
from alad_jax.cache import HiddenCache
from alad_jax.config import Config, dump_toml
from alad_jax.data import splits, tagging, teacher_inputs
from alad_jax.errors import AladError
from alad_jax.inference.predictor import load_aligned_model, save_aligned_model
from alad_jax.models import compress, hub
from train import models, report, tasks
from train.loop import Objective, fit
from train.models import TRAINABLE, TaskModel
from train.preflight import preflight

# Cases whose encoder is the frozen student: they can read its cached output.
FROZEN_STUDENT_CASES = frozenset({"probe", "head", "frozen", "noalign_frozen"})
# Which StageConfig (config.stages.*) optimises each case.
STAGE_OF_CASE = {"teacher": "teacher", "teacher_head": "teacher", "probe": "probe", "student_ft": "student_ft",
                 "head": "head", "frozen": "frozen", "joint": "joint", "noalign_frozen": "frozen"}


def _seed(cfg: Config, name: str) -> int:
    return (cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _count(module: nnx.Module | None, *filters) -> int:
    if module is None:
        return 0
    state = nnx.state(module, *(filters or (nnx.Param,)))
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# What a run writes into its work directory; `--restart` removes these (cache/ is keyed by content: kept).
RUN_OUTPUTS = ("config.toml", "progress.json", "results.json", "results.md", "checkpoints", "models", "adapters",
               "plots", "tensorboard")


def _has_started(workdir: Path) -> bool:
    """Whether a stage has finished (progress.json) or written a checkpoint: work a new config would discard."""
    checkpoints = workdir / "checkpoints"
    return (workdir / "progress.json").is_file() or (
        checkpoints.is_dir() and any(p.is_file() for p in checkpoints.rglob("*")))


def clear_run(workdir: Path) -> None:
    """Delete a run's outputs (RUN_OUTPUTS only: nothing else in ``workdir`` is touched)."""
    for name in RUN_OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_workdir(workdir: Path, cfg: Config, *, restart: bool = False) -> Path:
    """Create ``workdir`` and pin its config.

    A different config in a run that has started (a finished stage or a
    checkpoint) is refused, naming the fixes; in one that never started (it
    failed at start-up) it is replaced. ``restart`` first deletes the run's
    outputs.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise AladError(f"--workdir {workdir} is a file; give a directory")
    if restart and sharding.is_primary():
        clear_run(workdir)
    if restart and jax.process_count() > 1:  # no host reads the old progress while the primary deletes it
        multihost_utils.sync_global_devices("alad-restart")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.toml"
    text = dump_toml(cfg)
    old = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    if old is not None and old != text:
        if _has_started(workdir):
            raise AladError(
                f"{config_path} holds a different config ({_first_difference(old, text)}); to resume, re-run with "
                f"the same config and overrides; to start over, add --restart (deletes this run's outputs); "
                f"or pick a new --workdir"
            )
        if sharding.is_primary():
            print(f"{workdir}: replacing the config of a run that never finished a stage", file=sys.stderr)
            # A student truncated for the old config would be reused as is: it goes with it.
            shutil.rmtree(workdir / "models" / "student", ignore_errors=True)
            _atomic_write(config_path, text)
    elif old is None and sharding.is_primary():
        _atomic_write(config_path, text)
    return workdir


def _first_difference(old: str, new: str) -> str:
    """``'seed = 0' there, 'seed = 5' now``: the first line of the resolved TOML that differs."""
    for line_old, line_new in zip(old.splitlines(), new.splitlines()):
        if line_old != line_new:
            return f"{line_old!r} there, {line_new!r} now"
    return "a different number of keys"


class Pipeline:
    def __init__(self, cfg: Config, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        self.progress_path = workdir / "progress.json"
        self.progress = json.loads(self.progress_path.read_text()) if self.progress_path.is_file() else {}
        self.mesh = sharding.make_mesh(sharding.MeshConfig(cfg.mesh.data, cfg.mesh.fsdp))
        self.logger = report.ScalarLogger(workdir / "tensorboard", enabled=sharding.is_primary())
        self._task_caches: dict[str, HiddenCache] = {}
        for sub in ("models", "adapters", "checkpoints", "cache"):
            (workdir / sub).mkdir(exist_ok=True)

    # -- bookkeeping -----------------------------------------------------------------------------
    def stage(self, name: str, run: Callable[[], dict]) -> dict:
        """Run ``run`` once per work directory; its JSON result is remembered in progress.json."""
        if name in self.progress:
            return self.progress[name]
        started = time.perf_counter()
        result = run()
        # Training + evaluation + saving, and the training an interrupted session did before this one.
        result["wall_seconds"] = round(time.perf_counter() - started + result.pop("resumed_seconds", 0.0), 2)
        self.progress[name] = result
        if sharding.is_primary():
            _atomic_write(self.progress_path, json.dumps(self.progress, indent=1))
        print(report.format_summary(name, result), flush=True)
        return result

    def _fit(self, name: str, objective: Objective, stage, batches_for_epoch, evaluate, higher_is_better,
             prepare=None):
        return fit(
            objective, name=name, stage=stage, optim=self.cfg.optim, batches_for_epoch=batches_for_epoch,
            evaluate=evaluate, higher_is_better=higher_is_better, checkpoint_dir=self.workdir / "checkpoints" / name,
            seed=_seed(self.cfg, name), mesh=self.mesh, checkpoint_every=self.cfg.checkpoint_every,
            prepare=prepare, log_scalars=self.logger.log,
        )

    # -- models ----------------------------------------------------------------------------------
    def load_teacher(self) -> tuple[nnx.Module, nnx.Module]:
        encoder, _ = hub.load_encoder(str(self.workdir / "models" / "teacher"))
        head = self.task.make_head(encoder.config.hidden_size, 0)
        _load_into(self.workdir / "models" / "teacher_head.safetensors", head)
        return encoder, head

    def load_student(self) -> nnx.Module:
        return hub.load_encoder(self.student_dir, cache_dir=self.cfg.cache_dir or None)[0]

    def adapter_path(self, window: int, stage: str) -> Path:
        return self.workdir / "adapters" / f"w{window}_{stage}.safetensors"

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        cfg = self.cfg
        preflight(cfg)
        cache_dir = cfg.cache_dir or None
        tokenizer = hub.load_tokenizer(cfg.teacher, cache_dir=cache_dir)
        self.student_dir = self._make_student()
        student_tok = hub.load_tokenizer(self.student_dir, cache_dir=cache_dir)
        self._plan_teacher_inputs(tokenizer, student_tok)
        rows = {"teacher": self.stage("teacher", self._teacher)}
        rows["student_probe"] = self.stage("student_probe", lambda: self._task_case("student_probe", "probe"))
        rows["student_ft"] = self.stage("student_ft", lambda: self._task_case("student_ft", "student_ft"))
        alignment = {}
        for k in cfg.windows:
            s1 = self.stage(f"align_w{k}", lambda k=k: self._align(k, "align"))
            s2 = self.stage(f"continual_w{k}", lambda k=k: self._align(k, "continual"))
            alignment[f"w{k}"] = {"stage1": _without_history(s1), "stage2": _without_history(s2)}
            for case in ("head", "frozen", "joint", "noalign_frozen"):
                name = f"alad_w{k}_{case}"
                rows[name] = self.stage(name, lambda k=k, case=case, name=name: self._task_case(name, case, k))
        latency = self.stage("latency", lambda: self._latencies(list(rows)))
        rows = {name: {**row, "latency_ms": latency["p50_ms"][name], "latency_p95_ms": latency["p95_ms"][name]}
                for name, row in rows.items()}
        results = self._results(rows, alignment, time.perf_counter() - started)
        if sharding.is_primary():
            report.write_results(self.workdir, results)
            histories = {name: out["history"] for name, out in self.progress.items() if "history" in out}
            report.plot_curves(self.workdir, histories)
            report.plot_results(self.workdir, results)
        self.logger.close()
        return results

    # -- a teacher with its own tokenizer (alad_jax.data.teacher_inputs) ---------------------------
    def _plan_teacher_inputs(self, tokenizer, student_tok) -> None:
        """``self.task`` (the student's rows), ``self.teacher_task`` (the teacher's) and how the teacher reads
        the student's rows; a tokenizer pair that cannot align at ``alignment.level`` is refused."""
        cfg = self.cfg
        task_cls = tasks.QATask if cfg.task == "qa" else tasks.TaggingTask
        same = teacher_inputs.same_vocabulary(tokenizer, student_tok)
        if cfg.task == "qa" and (not same or cfg.alignment.level != "token"):
            raise AladError(f"task qa needs a student that shares the teacher's tokenizer and alignment.level = "
                            f"\"token\"; {cfg.student} and {cfg.teacher} tokenize differently or level is word")
        self.task = task_cls.load(cfg, tokenizer if same else student_tok)
        self.teacher_task = self.task if same else task_cls.load(cfg, tokenizer)
        sentences = [] if same else [s.words for split in self.task.sentences.values() for s in split]
        if not same and any(stage not in self.progress for stage in (f"align_w{k}" for k in cfg.windows)):
            sentences += [s.words for s in tasks.read_corpus(cfg)]
        self.teacher_inputs = teacher_inputs.plan_teacher_inputs(
            tokenizer, student_tok, sentences, level=cfg.alignment.level, names=(cfg.teacher, cfg.student),
            max_length=min(4 * cfg.max_length, 512))
        self._teacher_rows: dict[str, teacher_inputs.TeacherRows] = {}

    def teacher_rows(self, split: str) -> teacher_inputs.TeacherRows:
        """The teacher's side of a task split's rows."""
        if split not in self._teacher_rows:
            sentences = self.task.sentences[split] if self.teacher_inputs.level == "word" else None
            self._teacher_rows[split] = self.teacher_inputs.rows(self.task.text_rows(split), sentences)
        return self._teacher_rows[split]

    def _make_student(self) -> str:
        cfg = self.cfg
        if cfg.student_layers <= 0:
            return cfg.student
        out = self.workdir / "models" / "student"
        if not (out / "config.json").is_file():
            compress.truncate(cfg.student, cfg.student_layers, out, cache_dir=cfg.cache_dir or None)
        return str(out)

    def _teacher(self) -> dict:
        cfg = self.cfg
        encoder, _ = hub.load_encoder(cfg.teacher, cache_dir=cfg.cache_dir or None)
        head = self.task.make_head(encoder.config.hidden_size, _seed(cfg, "teacher_head"))
        model = TaskModel(encoder, head, train_encoder=not cfg.teacher_finetuned)
        which = "teacher_head" if cfg.teacher_finetuned else "teacher"
        row, best = self._train_and_score("teacher", model, which, task=self.teacher_task)
        if sharding.is_primary():
            hub.save_encoder(best.encoder, self.workdir / "models" / "teacher")
            save_file(_flat_state(best.head), str(self.workdir / "models" / "teacher_head.safetensors"))
        return row

    def _task_case(self, name: str, case: str, window: int | None = None) -> dict:
        cfg = self.cfg
        student = self.load_student()
        adapter = None
        if window is not None:
            if case == "noalign_frozen":
                adapter = AlignmentAdapter(student.config.hidden_size, self.teacher_width, window, cfg.adapter_hidden,
                                           impl=cfg.adapter_impl, rngs=nnx.Rngs(_seed(cfg, name)))
            else:
                adapter = import_reference(self.adapter_path(window, "continual"), impl=cfg.adapter_impl)
        width = adapter.teacher_dim if adapter is not None else student.config.hidden_size
        head = self.task.make_head(width, _seed(cfg, name + "_head"))
        model = TaskModel(student, head, adapter, train_encoder=case in ("student_ft", "joint"))
        row, best = self._train_and_score(name, model, case)
        if sharding.is_primary():
            if adapter is not None:
                export_reference(best.adapter, self.adapter_path(window, case))
            save_aligned_model(
                self.workdir / "models" / name, encoder=best.encoder, adapter=best.adapter, head=best.head,
                labels=self.task.vocab.labels if cfg.task != "qa" else (), task=cfg.task,
                max_length=cfg.max_length, tokenizer=self.task.tokenizer, stride=cfg.stride,
                meta={"teacher": cfg.teacher, "student": cfg.student, "student_layers": cfg.student_layers,
                      "case": case, "dev": row["dev"], "test": row["test"],
                      "null_threshold": row["test_metrics"].get("null_threshold")},
            )
        return row

    @property
    def teacher_width(self) -> int:
        config = json.loads((self.workdir / "models" / "teacher" / "config.json").read_text())
        return int(config.get("hidden_size", config.get("dim", 0)))

    def task_cache(self, split: str) -> HiddenCache:
        """Frozen student and fine-tuned teacher hidden states of a task split (computed once)."""
        if split not in self._task_caches:
            teacher, _ = self.load_teacher()
            features = self.task.text_rows(split)
            self._task_caches[split] = HiddenCache.build(
                self.workdir / "cache", tasks.rows_of(features), self.load_student(), teacher,
                token_types=features.token_type_ids, buckets=tasks.buckets_for(self.cfg.max_length),
                **self.teacher_rows(split).cache_kwargs())
        return self._task_caches[split]

    def _encoder_hidden(self, split: str):
        """A ``prepare`` that feeds the cached frozen-student output instead of running the student."""
        cache = self.task_cache(split)
        return lambda batch: {**batch, "encoder_hidden": cache.gather(batch)["student_hidden"]}

    def _train_and_score(self, name: str, model: TaskModel, case: str, task=None) -> tuple[dict, TaskModel]:
        """Train ``case``'s parameters of ``model``; its row (dev/test, params, latency, cosine) and best model.

        Cases with a frozen student train and select on its cached output (a frozen
        encoder computes the same thing every epoch); the reported dev/test numbers
        come from the full model.
        """
        stage_cfg = getattr(self.cfg.stages, STAGE_OF_CASE[case])
        task = task or self.task
        cached = self.cfg.cache_features and case in FROZEN_STUDENT_CASES
        train_prepare = self._encoder_hidden("train") if cached else None
        dev_prepare = self._encoder_hidden("dev") if cached else None
        result = self._fit(
            name, Objective(model, TRAINABLE[case], task.loss_fn), stage_cfg,
            lambda epoch: task.train_batches(stage_cfg, epoch), lambda m: task.evaluate(m, "dev", dev_prepare),
            higher_is_better=True, prepare=train_prepare,
        )
        best = result.model
        dev_score, dev_metrics = task.evaluate(best, "dev")
        test_score, test_metrics = task.evaluate(best, "test")
        if self.cfg.task == "qa":  # both headline numbers, as SQuAD reports them
            dev_score = {"f1": dev_metrics["f1"], "exact": dev_metrics["exact"]}
            test_score = {"f1": test_metrics["f1"], "exact": test_metrics["exact"]}
        row = {
            "name": name, "dev": dev_score, "test": test_score,
            "params": {"total": _count(best), "trainable": result.trainable_params, "adapter": _count(best.adapter)},
            "cosine": self._cosine(best, self._encoder_hidden("test") if cached else None)
            if best.adapter is not None else None,
            "dev_metrics": dev_metrics, "test_metrics": test_metrics,
            "train_seconds": round(result.seconds, 2), "steps": result.steps,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "resumed_seconds": result.resumed_seconds, **_stopping(result),
        }
        return _jsonable(row), best

    # -- alignment stages 1 and 2 ----------------------------------------------------------------
    def _alignment_rows(self, stage: str):
        """(train, validation) student rows and the teacher's side of each."""
        cfg = self.cfg
        if stage == "continual":
            return (self.task.text_rows("train"), self.task.text_rows("dev"),
                    self.teacher_rows("train"), self.teacher_rows("dev"))
        val, rest = splits.hash_holdout(tasks.read_corpus(cfg), cfg.corpus.val_sentences)
        train = splits.subsample(rest, cfg.corpus.max_sentences or None, seed=cfg.seed)
        encode = lambda s: tagging.encode_tagging(s, self.task.tokenizer, None, max_length=cfg.max_length,
                                                  stride=cfg.stride)
        train_rows, val_rows = encode(train), encode(val)
        return (train_rows, val_rows, self.teacher_inputs.rows(train_rows, train),
                self.teacher_inputs.rows(val_rows, val))

    def _align(self, window: int, stage: str) -> dict:
        cfg = self.cfg
        name = f"{stage}_w{window}"
        teacher, _ = self.load_teacher()
        student = self.load_student()
        if stage == "align":
            adapter = AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, window,
                                       cfg.adapter_hidden, impl=cfg.adapter_impl, rngs=nnx.Rngs(_seed(cfg, name)))
        else:
            adapter = import_reference(self.adapter_path(window, "align"), impl=cfg.adapter_impl)
        train_rows, val_rows, train_teacher, val_teacher = self._alignment_rows(stage)
        stage_cfg = getattr(cfg.stages, stage)
        val_batches = tasks.alignment_eval_batches(val_rows, cfg)
        if cfg.cache_features and stage == "continual":
            train_cache, val_cache = self.task_cache("train"), self.task_cache("dev")
        elif cfg.cache_features:
            cache_dir, buckets = self.workdir / "cache", tasks.buckets_for(cfg.max_length)
            train_cache = HiddenCache.build(cache_dir, tasks.rows_of(train_rows), student, teacher, buckets=buckets,
                                            **train_teacher.cache_kwargs())
            val_cache = HiddenCache.build(cache_dir, tasks.rows_of(val_rows), student, teacher, buckets=buckets,
                                          **val_teacher.cache_kwargs())
        if cfg.cache_features:
            objective = Objective(adapter, nnx.Param, models.cached_align_loss)
            prepare, val_prepare = _then(train_teacher, train_cache.gather), _then(val_teacher, val_cache.gather)
        else:
            objective = Objective(models.AlignModel(student, teacher, adapter), TRAINABLE["frozen"],
                                  models.align_loss)
            prepare, val_prepare = _then(train_teacher), _then(val_teacher)

        def evaluate(model):
            graphdef, state = nnx.split(model)
            sq = cos = count = 0.0
            for batch in val_batches:
                b = val_prepare(batch) if val_prepare else batch
                s, c, n = (float(x) for x in models.align_eval(graphdef, state, b))
                sq, cos, count = sq + s, cos + c, count + n
            return sq / max(count, 1), {"mse": sq / max(count, 1), "cosine": cos / max(count, 1)}

        result = self._fit(name, objective, stage_cfg,
                           lambda epoch: tasks.alignment_batches(train_rows, cfg, stage_cfg, epoch),
                           evaluate, higher_is_better=False, prepare=prepare)
        best = result.model if cfg.cache_features else result.model.adapter
        if sharding.is_primary():
            export_reference(best, self.adapter_path(window, stage))
        _, metrics = evaluate(result.model)
        return _jsonable({
            "name": name, "mse": metrics["mse"], "cosine": metrics["cosine"],
            "train_seconds": round(result.seconds, 2), "steps": result.steps,
            "tokens_per_s": round(result.tokens_per_s, 1), "cached": cfg.cache_features,
            "train_rows": len(train_rows.input_ids), "val_rows": len(val_rows.input_ids),
            "resumed_seconds": result.resumed_seconds, **_stopping(result),
        })

    # -- measurements ----------------------------------------------------------------------------
    def _latencies(self, names: list[str]) -> dict:
        """p50 / p95 ms of one jitted forward per row, every row's saved model timed interleaved.

        One batch of ``eval_batch_size`` test rows padded to max_length; after a
        warm-up call each, the rows take turns ``latency_batches`` times, so a
        slow minute on a shared machine hits every row alike.
        """
        ids = np.zeros((self.cfg.eval_batch_size, self.cfg.max_length), np.int32)

        def first_batch(task):
            batch = tasks.alignment_eval_batches(task.text_rows("test"), self.cfg)[0]
            batch = {key: _pad_to(value, ids.shape) for key, value in batch.items() if value.ndim == 2}
            if self.cfg.task == "qa":
                batch["feature_index"] = np.arange(len(ids), dtype=np.int32)
            return batch

        # The teacher reads its own tokenization of the same test rows.
        batches = {"student": first_batch(self.task), "teacher": first_batch(self.teacher_task)}
        batch_of = {name: batches["teacher" if name == "teacher" else "student"] for name in names}
        predict = models.predict_spans if self.cfg.task == "qa" else models.predict_tags
        split = {}
        for name in names:
            split[name] = nnx.split(self._row_model(name))
            jax.block_until_ready(predict(*split[name], batch_of[name]))
        times = {name: [] for name in names}
        for _ in range(self.cfg.latency_batches):
            for name in names:
                t = time.perf_counter()
                jax.block_until_ready(predict(*split[name], batch_of[name]))
                times[name].append((time.perf_counter() - t) * 1000)
        return {"p50_ms": {n: round(float(np.percentile(t, 50)), 3) for n, t in times.items()},
                "p95_ms": {n: round(float(np.percentile(t, 95)), 3) for n, t in times.items()},
                "runs": self.cfg.latency_batches, "batch": list(ids.shape)}

    def _row_model(self, name: str) -> TaskModel:
        """A finished row's best model, read back from ``models/``."""
        if name == "teacher":
            encoder, head = self.load_teacher()
            return TaskModel(encoder, head)
        return load_aligned_model(self.workdir / "models" / name, impl=self.cfg.adapter_impl).model

    def _cosine(self, model: TaskModel, prepare=None) -> float:
        """Mean token cosine between the model's AlAd output and the fine-tuned teacher, on test.

        ``prepare`` may supply a frozen student's cached output (then only AlAd runs).
        """
        cache = self.task_cache("test")
        graphdef, state = nnx.split(model)
        total = count = 0.0
        for batch in tasks.alignment_eval_batches(self.task.text_rows("test"), self.cfg):
            pred = models.hidden_states(graphdef, state, prepare(batch) if prepare else batch)
            # At word level: per word (the cache holds the teacher's word means at the student's tokens).
            batch = self.teacher_rows("test").add_to_batch(batch, teacher_ids=False)
            target = cache.gather(batch)["teacher_hidden"].astype(np.float32)
            _, s, n = models.alignment_sums(pred, target, batch)
            total, count = total + float(s), count + float(n)
        return round(total / max(count, 1), 4)

    def _results(self, rows: dict, alignment: dict, seconds: float) -> dict:
        cfg = self.cfg
        teacher_total = rows["teacher"]["params"]["total"]
        student = f"{cfg.student} (first {cfg.student_layers} layers)" if cfg.student_layers else cfg.student
        out_rows = []
        for row in rows.values():
            row = _compact_history(row)
            if row["params"]["adapter"]:
                pct = round(100 * row["params"]["adapter"] / teacher_total, 3)
                row["params"] = {**row["params"], "adapter_pct_of_teacher": pct}
            out_rows.append(row)
        return {
            "task": cfg.task, "metric": self.task.metric, "teacher": cfg.teacher, "student": student,
            "notes": self.task.notes + [
                f"latency_ms: p50 (latency_p95_ms: p95) of {cfg.latency_batches} jitted forwards per row on one "
                f"batch of {cfg.eval_batch_size} test rows padded to max_length {cfg.max_length}, every row's saved "
                f"model timed in turn (interleaved)",
                f"alignment features cached: {cfg.cache_features}",
            ],
            "alignment": alignment,
            "rows": out_rows,
            "metric_scale": 100 if cfg.task == "qa" else 1,
            "seconds": round(seconds, 1),
            "devices": [str(d) for d in jax.devices()],
        }


def _then(teacher_rows: teacher_inputs.TeacherRows, gather=None):
    """A ``prepare`` adding the teacher's side of each batch: its ids (no cache) or word ids, then ``gather``.

    None when there is nothing to add (one tokenizer, no cache)."""
    if teacher_rows.level == "same":
        return gather
    if gather is None:
        return teacher_rows.add_to_batch
    return lambda batch: gather(teacher_rows.add_to_batch(batch, teacher_ids=False))


def _stopping(result) -> dict:
    """How a stage ended: epochs run, the best (restored) epoch, why it stopped, and every evaluation."""
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "history": result.history}


def _pad_to(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` [b, l] zero-padded (or cut) to ``shape``."""
    out = np.zeros(shape, array.dtype)
    rows, cols = min(shape[0], array.shape[0]), min(shape[1], array.shape[1])
    out[:rows, :cols] = array[:rows, :cols]
    return out


def _without_history(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "history"}


def _compact_history(row: dict) -> dict:
    """A results.json row keeps only the dev curve (and train loss) of its full history."""
    keep = ("epoch", "dev", "train_loss")
    return {**row, "history": [{k: h[k] for k in keep if k in h} for h in row.get("history", [])]}


def _jsonable(value):
    """Plain JSON types (metrics may come back as numpy scalars)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flat_state(module: nnx.Module) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(var.get_value()) for path, var in flat}


def _load_into(path: Path, module: nnx.Module) -> None:
    """Set ``module``'s parameters from a file written by :func:`_flat_state`."""
    tensors = load_file(str(path))
    state = nnx.state(module, nnx.Param)
    try:
        for p, var in nnx.to_flat_state(state):
            var.set_value(jax.numpy.asarray(tensors["/".join(map(str, p))]))
    except KeyError as e:
        raise AladError(f"{path} lacks tensor {e.args[0]}; the work directory is damaged, delete it to start over")
    nnx.update(module, state)


def run(cfg: Config, workdir: str | Path, *, restart: bool = False) -> dict:
    """The whole pipeline for ``cfg`` in ``workdir`` (resumes what is there; ``restart``: deletes it first)."""
    workdir = prepare_workdir(Path(workdir), cfg, restart=restart)
    return Pipeline(cfg, workdir).run()
