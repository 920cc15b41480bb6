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

import json
import time
from pathlib import Path
from typing import Callable

import jax
from flax import nnx

from alad_jax import compile_meter, distributed, sharding, xla_cpu
from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.cache import HiddenCache
from alad_train.config import Config
from alad_jax.data import batching, sources, splits, tagging, teacher_inputs
from alad_jax.errors import AladError
from alad_jax.inference.saved_model import load_aligned_model, load_info, save_aligned_model
from alad_jax.models import compress, hub
from alad_jax.models.task_model import TaskModel
from alad_jax.param_count import count_params
from alad_train import align, cases, measure, models, own_teacher, plan, predictions, report, tasks
from alad_train.cases import Case
from alad_train.loop import Objective, fit
from alad_train.preflight import preflight
from alad_train.files import atomic_write_text, jsonable
from alad_train.workdir import drop_cache, drop_finished_checkpoints, prepare_workdir


_seed = align.stage_seed


class Pipeline:
    def __init__(self, cfg: Config, workdir: Path):
        self.cfg = cfg
        self.workdir = workdir
        self.progress_path = workdir / "progress.json"
        self.progress = json.loads(self.progress_path.read_text()) if self.progress_path.is_file() else {}
        self.mesh = sharding.make_mesh(sharding.MeshConfig(cfg.mesh.data, cfg.mesh.fsdp))
        self.logger = report.ScalarLogger(workdir / "tensorboard", enabled=distributed.is_primary())
        self._task_caches: dict[str, HiddenCache] = {}
        for sub in ("models", "adapters", "checkpoints", "cache"):
            (workdir / sub).mkdir(exist_ok=True)

    # -- bookkeeping -----------------------------------------------------------------------------
    def stage(self, name: str, run: Callable[[], dict]) -> dict:
        """Run ``run`` once per work directory; its JSON result is remembered in progress.json."""
        if name in self.progress:
            return self.progress[name]
        started, compiled = time.perf_counter(), compile_meter.seconds()
        result = run()
        # Training + evaluation + saving, and the training an interrupted session did before this one.
        result["wall_seconds"] = round(time.perf_counter() - started + result.pop("resumed_seconds", 0.0), 2)
        # Of this session's part of it: tracing, lowering and compiling (or fetching from the XLA cache).
        result["compile_seconds"] = round(compile_meter.seconds() - compiled, 2)
        self.progress[name] = result
        if distributed.is_primary():
            atomic_write_text(self.progress_path, json.dumps(self.progress, indent=1))
            print(report.format_summary(name, result), flush=True)
            if not self.cfg.keep_checkpoints:
                drop_finished_checkpoints(self.workdir, self.progress)
        return result

    def _fit(self, name: str, objective: Objective, stage, batches_for_epoch, evaluate, higher_is_better,
             prepare=None):
        return fit(
            objective, name=name, stage=stage, optim=self.cfg.optim, batches_for_epoch=batches_for_epoch,
            evaluate=evaluate, higher_is_better=higher_is_better, checkpoint_dir=self.workdir / "checkpoints" / name,
            seed=_seed(self.cfg, name), mesh=self.mesh, checkpoint_every=self.cfg.checkpoint_every,
            prepare=prepare, log_scalars=self.logger.log, matmul_dtype=self.cfg.matmul_dtype,
        )

    # -- models ----------------------------------------------------------------------------------
    def load_teacher(self) -> tuple[nnx.Module, nnx.Module]:
        """The fine-tuned teacher's (encoder, head), saved by stage 0 as a saved aligned model."""
        model = load_aligned_model(self.teacher_dir).model
        return model.encoder, model.head

    @property
    def teacher_dir(self) -> Path:
        return self.workdir / "models" / self.teacher.row_name()

    def load_student(self) -> nnx.Module:
        return hub.load_encoder(self.student_dir, cache_dir=self.cfg.cache_dir or None)[0]

    def adapter_path(self, window: int, stage: str) -> Path:
        return self.workdir / "adapters" / f"w{window}_{stage}.safetensors"

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        cfg = self.cfg
        preflight(cfg)
        if not cfg.keep_checkpoints and distributed.is_primary():  # a run killed between record and removal
            drop_finished_checkpoints(self.workdir, self.progress)
        self.teacher = teacher = own_teacher.teacher_case(cfg)
        self.steps = plan.make_plan(cfg, teacher)
        cache_dir = cfg.cache_dir or None
        tokenizer = hub.load_tokenizer(cfg.teacher, cache_dir=cache_dir)
        self.student_dir = self._make_student()
        student_tok = hub.load_tokenizer(self.student_dir, cache_dir=cache_dir)
        self._plan_teacher_inputs(tokenizer, student_tok)
        rows, alignment = {}, {}
        for step in self.steps[:-1]:  # the last step measures latency
            if step.alignment:
                out = self.stage(step.name, lambda step=step: self._align(step.window, step.alignment))
                key = "stage1" if step.alignment == "align" else "stage2"
                alignment.setdefault(f"w{step.window}", {})[key] = _without_history(out)
            elif step.case is teacher:
                rows[step.name] = self.stage(step.name, lambda: self._teacher(teacher))
            else:
                rows[step.name] = self.stage(
                    step.name, lambda step=step: self._task_case(step.name, step.case, step.window))
        latency = self.stage(plan.LATENCY, lambda: self._latencies(list(rows)))
        rows = {name: {**row, "latency_ms": latency["p50_ms"][name], "latency_p95_ms": latency["p95_ms"][name]}
                for name, row in rows.items()}
        results = self._results(rows, alignment, time.perf_counter() - started)
        if distributed.is_primary():
            report.write_results(self.workdir, results)
            histories = {name: out["history"] for name, out in self.progress.items() if "history" in out}
            report.plot_curves(self.workdir, histories)
            report.plot_results(self.workdir, results)
            if not cfg.keep_cache:
                drop_cache(self.workdir)
        self.logger.close()
        return results

    def _make_student(self) -> str:
        cfg = self.cfg
        if cfg.student_layers <= 0:
            return cfg.student
        out = self.workdir / "models" / "student"
        with distributed.primary_writes("student") as writer:
            if writer and not (out / "config.json").is_file():
                compress.truncate(cfg.student, cfg.student_layers, out, cache_dir=cfg.cache_dir or None)
        return str(out)

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
        if not same and not cfg.stages.align.from_ and any(s.alignment == "align" and s.name not in self.progress
                                                           for s in self.steps):
            sentences += [s.words for s in sources.read_corpus(cfg.corpus)]
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

    def _teacher(self, case: Case) -> dict:
        cfg = self.cfg
        encoder, _ = hub.load_encoder(cfg.teacher, cache_dir=cfg.cache_dir or None)
        if case.head == cases.GIVEN:  # the checkpoint's own classifier, evaluated as it is
            task = self.teacher_task
            used = {t for split in task.sentences.values() for s in split for t in s.tags or ()}
            head, note = own_teacher.load_head(cfg, task.vocab.labels, used, encoder.config.hidden_size)
            best = TaskModel(encoder, head, train_encoder=False)
            row = jsonable({**own_teacher.score_as_is(case.row_name(), best, task), "note": note})
            self._save_model(case.row_name(), best, case, row, model_name=cfg.teacher, task=task)
            return row
        head = self.task.make_head(encoder.config.hidden_size, _seed(cfg, case.row_name() + "_head"))
        model = TaskModel(encoder, head, train_encoder=case.trains_encoder)
        row, best = self._train_and_score(case.row_name(), model, case, task=self.teacher_task)
        self._save_model(case.row_name(), best, case, row, model_name=cfg.teacher, task=self.teacher_task)
        return row

    def _task_case(self, name: str, case: Case, window: int | None = None) -> dict:
        cfg = self.cfg
        student = self.load_student()
        adapter = None
        if case.windowed:
            if case.adapter == cases.FRESH:
                adapter = AlignmentAdapter(student.config.hidden_size, self.teacher_width, window, cfg.adapter_hidden,
                                           impl=cfg.adapter_impl, rngs=nnx.Rngs(_seed(cfg, name)))
            else:
                adapter = import_reference(self.adapter_path(window, "continual"), impl=cfg.adapter_impl)
        width = adapter.teacher_dim if adapter is not None else student.config.hidden_size
        head = self.task.make_head(width, _seed(cfg, name + "_head"))
        model = TaskModel(student, head, adapter, train_encoder=case.trains_encoder)
        row, best = self._train_and_score(name, model, case)
        adapter_file = self.adapter_path(window, case.name) if adapter is not None else None
        self._save_model(name, best, case, row, model_name=cfg.student, adapter_file=adapter_file)
        return row

    def _save_model(self, name: str, best: TaskModel, case: Case, row: dict, *, model_name: str,
                    adapter_file: Path | None = None, task=None) -> None:
        """A row's best model as a saved aligned model (``models/<row>``), and its AlAd as ``adapter_file``:
        what later stages, the latency stage and ``alad predict`` read. Process 0 writes, the others
        wait at a barrier (several processes gather the model to each host first)."""
        cfg, task = self.cfg, task or self.task
        best = distributed.host_copy(best)
        with distributed.primary_writes(name) as writer:
            if not writer:
                return
            if adapter_file is not None:
                export_reference(best.adapter, adapter_file)
            save_aligned_model(
                self.workdir / "models" / name, encoder=best.encoder, adapter=best.adapter, head=best.head,
                labels=task.vocab.labels if cfg.task != "qa" else (), task=cfg.task,
                max_length=cfg.max_length, tokenizer=task.tokenizer, stride=cfg.stride,
                meta={"teacher": cfg.teacher, "student": cfg.student, "student_layers": cfg.student_layers,
                      "encoder": model_name, "case": case.name, "dev": row["dev"], "test": row["test"],
                      "null_threshold": row["test_metrics"].get("null_threshold"),
                      "max_query_length": cfg.max_query_length},
            )

    @property
    def teacher_width(self) -> int:
        return int(load_info(self.teacher_dir)["output_dim"])

    def task_cache(self, split: str) -> HiddenCache:
        """Frozen student and fine-tuned teacher hidden states of a task split (computed once)."""
        if split not in self._task_caches:
            teacher, _ = self.load_teacher()
            features = self.task.text_rows(split)
            self._task_caches[split] = HiddenCache.build(
                self.workdir / "cache", tasks.rows_of(features), self.load_student(), teacher,
                token_types=features.token_type_ids, buckets=batching.length_buckets(self.cfg.max_length),
                matmul_dtype=self.cfg.matmul_dtype, **self.teacher_rows(split).cache_kwargs())
        return self._task_caches[split]

    def _encoder_hidden(self, split: str):
        """A ``prepare`` that feeds the cached frozen-student output instead of running the student."""
        cache = self.task_cache(split)
        return lambda batch: {**batch, "encoder_hidden": cache.gather(batch)["student_hidden"]}

    def _train_and_score(self, name: str, model: TaskModel, case: Case, task=None) -> tuple[dict, TaskModel]:
        """Train ``case``'s parameters of ``model``; its row (dev/test, params, latency, cosine) and best model.

        Cases with a frozen student train and select on its cached output (a frozen
        encoder computes the same thing every epoch); the reported dev/test numbers
        come from the full model.
        """
        stage_cfg = getattr(self.cfg.stages, case.stage)
        task = task or self.task
        cached = self.cfg.cache_features and case.frozen_student
        train_prepare = self._encoder_hidden("train") if cached else None
        dev_prepare = self._encoder_hidden("dev") if cached else None
        result = self._fit(
            name, Objective(model, case.trainable, task.loss_fn), stage_cfg,
            lambda epoch: task.train_batches(stage_cfg, epoch, tasks.pack_gap(model)),
            lambda m: task.evaluate(m, "dev", dev_prepare),
            higher_is_better=True, prepare=train_prepare,
        )
        best = result.model
        (dev_score, dev_metrics), (test_score, test_metrics) = (
            self._predict_and_save(name, task, best, split) for split in ("dev", "test"))
        if self.cfg.task == "qa":  # both headline numbers, as SQuAD reports them
            dev_score = {"f1": dev_metrics["f1"], "exact": dev_metrics["exact"]}
            test_score = {"f1": test_metrics["f1"], "exact": test_metrics["exact"]}
        row = {
            "name": name, "dev": dev_score, "test": test_score,
            "params": {"total": count_params(best), "trainable": result.trainable_params,
                       "adapter": count_params(best.adapter)},
            "cosine": self._cosine(best, self._encoder_hidden("test") if cached else None)
            if best.adapter is not None else None,
            "dev_metrics": dev_metrics, "test_metrics": test_metrics,
            "train_seconds": round(result.seconds, 2), "steps": result.steps,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "resumed_seconds": result.resumed_seconds, **_stopping(result),
        }
        return jsonable(row), best

    def _predict_and_save(self, name: str, task, model: TaskModel, split: str) -> tuple[float, dict]:
        """(score, metrics) of ``model`` on ``split``, scored from the very records written to
        ``predictions/<row>.<split>.jsonl`` (:mod:`.predictions`): the file reproduces the row's numbers."""
        records, meta = task.predict(model, split)
        score, metrics = task.score(records, meta)
        if distributed.is_primary():
            predictions.write(self.workdir, name, split, task=self.cfg.task, records=records, score=score, meta=meta)
        return score, metrics

    # -- alignment stages 1 and 2 ----------------------------------------------------------------
    def _alignment_rows(self, stage: str):
        """(train, validation) student rows and the teacher's side of each."""
        cfg = self.cfg
        if stage == "continual":
            return (self.task.text_rows("train"), self.task.text_rows("dev"),
                    self.teacher_rows("train"), self.teacher_rows("dev"))
        val, rest = splits.hash_holdout(sources.read_corpus(cfg.corpus), cfg.corpus.val_sentences)
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
        dims = (student.config.hidden_size, teacher.config.hidden_size)
        if stage == "align" and cfg.stages.align.from_:  # stage 1 done once by `alad align`, reused here
            return align.reuse(cfg, window, *dims, self.adapter_path(window, stage))
        if stage == "align":
            adapter = AlignmentAdapter(*dims, window, cfg.adapter_hidden, impl=cfg.adapter_impl,
                                       rngs=nnx.Rngs(_seed(cfg, name)))
            streamed, why = align.streams(cfg, self.task.tokenizer, *dims)
            if streamed:
                return self._align_streamed(name, window, student, teacher, adapter, why)
        else:
            adapter = import_reference(self.adapter_path(window, "align"), impl=cfg.adapter_impl)
        train_rows, val_rows, train_teacher, val_teacher = self._alignment_rows(stage)
        stage_cfg = getattr(cfg.stages, stage)
        gap = window // 2 if tasks.packs_alignment(cfg, train_teacher.level) else None
        val_batches = tasks.alignment_eval_batches(val_rows, cfg, gap)
        if cfg.cache_features and stage == "continual":
            train_cache, val_cache = self.task_cache("train"), self.task_cache("dev")
        elif cfg.cache_features:
            cache_dir, buckets = self.workdir / "cache", batching.length_buckets(cfg.max_length)
            train_cache = HiddenCache.build(cache_dir, tasks.rows_of(train_rows), student, teacher, buckets=buckets,
                                            matmul_dtype=cfg.matmul_dtype, **train_teacher.cache_kwargs())
            val_cache = HiddenCache.build(cache_dir, tasks.rows_of(val_rows), student, teacher, buckets=buckets,
                                          matmul_dtype=cfg.matmul_dtype, **val_teacher.cache_kwargs())
        if cfg.cache_features:
            objective = Objective(adapter, nnx.Param, models.cached_align_loss)
            prepare, val_prepare = _then(train_teacher, train_cache.gather), _then(val_teacher, val_cache.gather)
        else:
            objective = Objective(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS,
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
                           lambda epoch: tasks.alignment_batches(train_rows, cfg, stage_cfg, epoch, gap),
                           evaluate, higher_is_better=False, prepare=prepare)
        best = distributed.host_copy(result.model if cfg.cache_features else result.model.adapter)
        with distributed.primary_writes(name) as writer:
            if writer:
                export_reference(best, self.adapter_path(window, stage))
        _, metrics = evaluate(result.model)
        return jsonable({
            "name": name, "mse": metrics["mse"], "cosine": metrics["cosine"],
            "train_seconds": round(result.seconds, 2), "steps": result.steps,
            "tokens_per_s": round(result.tokens_per_s, 1), "cached": cfg.cache_features,
            "train_rows": len(train_rows.input_ids), "val_rows": len(val_rows.input_ids),
            "resumed_seconds": result.resumed_seconds, **_stopping(result),
        })

    def _align_streamed(self, name: str, window: int, student, teacher, adapter, why: str) -> dict:
        """Stage 1 on the streamed corpus, the teacher online (:mod:`alad_train.align`)."""
        if self.teacher_inputs.level != "same":
            raise AladError(f"a streamed stage 1 ({why}) needs a student that shares the teacher's tokenizer; "
                            f"raise cache_budget_gb or lower corpus.max_sentences to cache it instead")
        record = align.train_streamed(self.cfg, name=name, student=student, teacher=teacher, adapter=adapter,
                                      tokenizer=self.task.tokenizer, workdir=self.workdir, seed=_seed(self.cfg, name),
                                      mesh=self.mesh, log_scalars=self.logger.log)
        best = distributed.host_copy(record.pop("best"))
        with distributed.primary_writes(name) as writer:
            if writer:
                export_reference(best, self.adapter_path(window, "align"))
        return jsonable({**record, "policy": why})

    # -- measurements ----------------------------------------------------------------------------
    def _latencies(self, names: list[str]) -> dict:
        """p50 / p95 ms of one jitted forward per row's saved model, timed interleaved (:mod:`.measure`).

        The teacher reads its own tokenization of the same test rows."""
        cfg, qa = self.cfg, self.cfg.task == "qa"
        shape = (cfg.eval_batch_size, cfg.max_length)
        first = {task_name: measure.latency_batch(tasks.alignment_eval_batches(task.text_rows("test"), cfg)[0],
                                                  shape, qa=qa)
                 for task_name, task in (("student", self.task), ("teacher", self.teacher_task))}
        batches = {name: first["teacher" if name == self.teacher.row_name() else "student"] for name in names}
        row_models = {name: load_aligned_model(self.workdir / "models" / name, impl=cfg.adapter_impl).model
                      for name in names}
        return measure.interleaved_latency(row_models, batches, runs=cfg.latency_batches, qa=qa)

    def _cosine(self, model: TaskModel, prepare=None) -> float:
        """Mean token cosine between the model's AlAd output and the fine-tuned teacher, on test.

        ``prepare`` may supply a frozen student's cached output (then only AlAd runs).
        """
        cache, level = self.task_cache("test"), self.teacher_rows("test").level
        gap = model.adapter.window // 2 if tasks.packs_alignment(self.cfg, level) else None
        batches = tasks.alignment_eval_batches(self.task.text_rows("test"), self.cfg, gap)
        # At word level: per word (the cache holds the teacher's word means at the student's tokens).
        words = lambda batch: self.teacher_rows("test").add_to_batch(batch, teacher_ids=False)
        return measure.token_cosine_to_teacher(model, batches, cache, prepare, with_words=words)

    def _scope_notes(self, rows: dict) -> list[str]:
        """What the run trained: the teacher's origin, and the rows config key ``cases`` left out."""
        teacher = rows[self.teacher.row_name()]
        notes = [teacher["note"]] if "note" in teacher else (
            [] if self.teacher is cases.TEACHER_FT else [f"teacher: {self.teacher.about}"])
        skipped = plan.not_trained(self.cfg)
        if skipped:
            notes.append(f"not trained (config key cases = {self.cfg.cases}): {', '.join(skipped)}")
        return notes

    def _results(self, rows: dict, alignment: dict, seconds: float) -> dict:
        cfg = self.cfg
        teacher_total = rows[self.teacher.row_name()]["params"]["total"]
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
            ] + self._scope_notes(rows) + ([f"packed batches: fine-tunes and their evaluation run on rows of {cfg.max_length} positions "
                  "holding several sentences (block-diagonal attention, positions restarting per sentence)"]
                 if cfg.packing and cfg.task != "qa" else []),
            "alignment": alignment,
            "cases": [c.name for c in cases.selected(cfg.cases)],
            "rows": out_rows,
            # paired bootstrap intervals from the rows' saved test predictions (docs/statistics.md)
            **(report.run_intervals(self.workdir, cfg.task, list(rows)) if distributed.is_primary() else {}),
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


def _stopping(result) -> dict:
    """How a stage ended: epochs run, the best (restored) epoch, why it stopped, and every evaluation."""
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "padding": None if result.padding is None else round(result.padding, 4), "positions": result.positions,
            "history": result.history}


def _padding(stages: list[dict]) -> float | None:
    """Padding share of the positions ``stages`` trained on together (None before stages recorded positions)."""
    positions = sum(s.get("positions", 0) for s in stages)
    real = sum(s["positions"] * (1 - s["padding"]) for s in stages if s.get("positions"))
    return round(1 - real / positions, 4) if positions else None


def _then(teacher_rows: teacher_inputs.TeacherRows, gather=None):
    """A ``prepare`` adding the teacher's side of each batch: its ids (no cache) or word ids, then ``gather``.

    None when there is nothing to add (one tokenizer, no cache)."""
    if teacher_rows.level == "same":
        return gather
    if gather is None:
        return teacher_rows.add_to_batch
    return lambda batch: gather(teacher_rows.add_to_batch(batch, teacher_ids=False))


def _without_history(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "history"}


def _compact_history(row: dict) -> dict:
    """A results.json row keeps only the dev curve (and train loss) of its full history."""
    keep = ("epoch", "dev", "train_loss")
    return {**row, "history": [{k: h[k] for k in keep if k in h} for h in row.get("history", [])]}


def run(cfg: Config, workdir: str | Path, *, restart: bool = False) -> dict:
    """The whole pipeline for ``cfg`` in ``workdir`` (resumes what is there; ``restart``: deletes it first)."""
    workdir = prepare_workdir(Path(workdir), cfg, restart=restart)
    distributed.check_shared_workdir(workdir)
    return Pipeline(cfg, workdir).run()
