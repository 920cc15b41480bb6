"""Stages 1 and 2: the AlAd of window K aligned to the fine-tuned teacher, on the corpus, then on the task text."""

from __future__ import annotations

from flax import nnx

from alad_jax import distributed
from alad_jax.adapter import export_reference, import_reference
from alad_jax.cache import HiddenCache
from alad_jax.data import batching, sources, splits, tagging, teacher_inputs
from alad_jax.errors import AladError
from alad_train import align, batches, cases, models, tasks
from alad_train.context import RunContext, load_student, load_teacher
from alad_train.files import jsonable
from alad_train.loop import Objective
from alad_train.plan import Step
from alad_train.stages.common import stopping, train


def alignment(ctx: RunContext, step: Step) -> dict:
    """Stage 1 (``step.alignment == "align"``) or 2 (``"continual"``) of window ``step.window``; exports the
    best AlAd as ``adapters/wK_<stage>.safetensors``."""
    cfg, window, stage = ctx.cfg, step.window, step.alignment
    name = f"{stage}_w{window}"
    teacher, _ = load_teacher(ctx.teacher_dir)
    student = load_student(cfg, ctx.student_dir)
    dims = (student.config.hidden_size, teacher.config.hidden_size)
    if stage == "align" and cfg.stages.align.from_:  # stage 1 done once by `alad align`, reused here
        return align.reuse(cfg, window, *dims, ctx.adapter_path(window, stage))
    if stage == "align":
        adapter = models.new_adapter(cfg, *dims, window, nnx.Rngs(align.stage_seed(cfg, name)))
        streamed, why = align.streams(cfg, ctx.task.tokenizer, *dims)
        if streamed:
            return _align_streamed(ctx, name, window, student, teacher, adapter, why)
    else:
        adapter = import_reference(ctx.adapter_path(window, "align"), impl=cfg.adapter_impl)
    train_rows, val_rows, train_teacher, val_teacher = _alignment_rows(ctx, stage)
    stage_cfg = getattr(cfg.stages, stage)
    strategy = batches.for_alignment(cfg, window, train_teacher.level)
    val_batches = strategy.eval(val_rows)
    if cfg.cache_features:
        train_cache, val_cache = _caches(ctx, stage, train_rows, val_rows, train_teacher, val_teacher,
                                         student, teacher)
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

    result = train(ctx, name, objective, stage_cfg,
                   lambda epoch: strategy.train(train_rows, stage_cfg, epoch, by_tokens=True),
                   evaluate, higher_is_better=False, prepare=prepare)
    best = distributed.host_copy(result.model if cfg.cache_features else result.model.adapter)
    with distributed.primary_writes(name) as writer:
        if writer:
            export_reference(best, ctx.adapter_path(window, stage))
    _, metrics = evaluate(result.model)
    return jsonable({
        "name": name, "mse": metrics["mse"], "cosine": metrics["cosine"],
        "train_seconds": round(result.seconds, 2), "steps": result.steps,
        "tokens_per_s": round(result.tokens_per_s, 1), "cached": cfg.cache_features,
        "train_rows": len(train_rows.input_ids), "val_rows": len(val_rows.input_ids),
        "resumed_seconds": result.resumed_seconds, **stopping(result),
    })


def _alignment_rows(ctx: RunContext, stage: str):
    """(train, validation) student rows and the teacher's side of each."""
    cfg = ctx.cfg
    if stage == "continual":
        return (ctx.task.text_rows("train"), ctx.task.text_rows("dev"),
                ctx.features.teacher_rows("train"), ctx.features.teacher_rows("dev"))
    val, rest = splits.hash_holdout(sources.read_corpus(cfg.corpus), cfg.corpus.val_sentences)
    train_sentences = splits.subsample(rest, cfg.corpus.max_sentences or None, seed=cfg.seed)
    encode = lambda s: tagging.encode_tagging(s, ctx.task.tokenizer, None, max_length=cfg.max_length,
                                              stride=cfg.stride)
    train_rows, val_rows = encode(train_sentences), encode(val)
    return (train_rows, val_rows, ctx.teacher_inputs.rows(train_rows, train_sentences),
            ctx.teacher_inputs.rows(val_rows, val))


def _caches(ctx: RunContext, stage: str, train_rows, val_rows, train_teacher, val_teacher, student, teacher):
    """(train, validation) hidden-state caches: the task's own for stage 2, built from the corpus for stage 1."""
    if stage == "continual":
        return ctx.features.cache("train"), ctx.features.cache("dev")
    cfg = ctx.cfg
    cache_dir, buckets = ctx.workdir / "cache", batching.length_buckets(cfg.max_length)
    return tuple(HiddenCache.build(cache_dir, tasks.rows_of(rows), student, teacher, buckets=buckets,
                                   matmul_dtype=cfg.matmul_dtype, **side.cache_kwargs())
                 for rows, side in ((train_rows, train_teacher), (val_rows, val_teacher)))


def _align_streamed(ctx: RunContext, name: str, window: int, student, teacher, adapter, why: str) -> dict:
    """Stage 1 on the streamed corpus, the teacher online (:mod:`alad_train.align`)."""
    if ctx.teacher_inputs.level != "same":
        raise AladError(f"a streamed stage 1 ({why}) needs a student that shares the teacher's tokenizer; "
                        f"raise cache_budget_gb or lower corpus.max_sentences to cache it instead")
    record = align.train_streamed(ctx.cfg, name=name, student=student, teacher=teacher, adapter=adapter,
                                  tokenizer=ctx.task.tokenizer, workdir=ctx.workdir,
                                  seed=align.stage_seed(ctx.cfg, name), mesh=ctx.mesh, log_scalars=ctx.logger.log)
    best = distributed.host_copy(record.pop("best"))
    with distributed.primary_writes(name) as writer:
        if writer:
            export_reference(best, ctx.adapter_path(window, "align"))
    return jsonable({**record, "policy": why})


def _then(teacher_rows: teacher_inputs.TeacherRows, gather=None):
    """A ``prepare`` adding the teacher's side of each batch: its ids (no cache) or word ids, then ``gather``.

    None when there is nothing to add (one tokenizer, no cache)."""
    if teacher_rows.level == "same":
        return gather
    if gather is None:
        return teacher_rows.add_to_batch
    return lambda batch: gather(teacher_rows.add_to_batch(batch, teacher_ids=False))
