"""Stage 1 at scale: the streamed task-independent alignment, ``alad align``, and reusing its adapter.

- :func:`streams`: the cache policy. Stage 1 caches its corpus's hidden states (today's
  in-memory path, the embedded default) when they fit ``cache_budget_gb``; a larger corpus,
  the whole stream (``corpus.max_sentences = 0``) or a Hugging Face dataset is streamed
  instead, with the frozen teacher run online on each batch: memory does not grow with the corpus.
- :func:`train_streamed`: that streamed stage 1 (:mod:`alad_jax.data.stream`): each process
  reads and tokenizes only its shard; validation on the stream's first ``corpus.val_sentences``;
  budgets ``max_steps`` / ``max_minutes``, evaluation every ``eval_every`` steps; the stream's
  position is checkpointed, so a killed run resumes mid-stream.
- :func:`align_main`: ``alad align``, stage 1 alone into a work directory (``adapters/wK_align.safetensors``),
  aligned to the configured teacher as it is (no stage 0: the adapter is task-independent).
- :func:`reuse`: ``alad run stages.align.from=PATH`` starts stage 2 from such an adapter.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zlib
from pathlib import Path

import jax
from flax import nnx

from alad_jax import distributed, sharding
from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_train.config import Config
from alad_jax.data import stream, tagging, teacher_inputs
from alad_jax.errors import AladError
from alad_jax.models import compress, hub
from alad_train import cases, models
from alad_train.batches import packed
from alad_train.loop import Objective, fit
from alad_train.files import atomic_write_text, jsonable
from alad_train.workdir import prepare_workdir

BYTES_PER_VALUE = 2  # the cache stores bfloat16
SAMPLE_SENTENCES = 512  # sentences tokenized to estimate a corpus's tokens


def stage_seed(cfg: Config, name: str) -> int:
    """The seed of a stage or case ``name`` (``alad run`` and ``alad align`` draw the same)."""
    return (cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def cache_gb(tokens: int, student_dim: int, teacher_dim: int) -> float:
    """GB of a feature cache of ``tokens`` tokens: student and teacher states, bfloat16."""
    return tokens * (student_dim + teacher_dim) * BYTES_PER_VALUE / 1e9


def streams(cfg: Config, tokenizer, student_dim: int, teacher_dim: int) -> tuple[bool, str]:
    """Whether stage 1 streams its corpus (teacher online) rather than caching it, and why.

    The corpus's tokens are estimated from its first sentences (``SAMPLE_SENTENCES``) times
    ``max_sentences + val_sentences``; nothing else is read.
    """
    corpus = cfg.corpus
    if corpus.format == "hf":
        return True, "a Hugging Face dataset is streamed"
    if corpus.max_sentences == 0:
        return True, "corpus.max_sentences = 0: the whole stream"
    source = stream.source_of(corpus)
    sample = stream.read_sentences(source, 0, SAMPLE_SENTENCES)
    rows = tagging.encode_tagging(sample, tokenizer, None, max_length=cfg.max_length, stride=cfg.stride).input_ids
    per_sentence = sum(len(r) for r in rows) / len(sample)
    tokens = int(per_sentence * (corpus.max_sentences + corpus.val_sentences))
    size = cache_gb(tokens, student_dim, teacher_dim)
    if size > cfg.cache_budget_gb:
        return True, f"its states (~{size:.2f} GB for ~{tokens} tokens) exceed cache_budget_gb = {cfg.cache_budget_gb}"
    return False, f"its states (~{size:.2f} GB) fit cache_budget_gb = {cfg.cache_budget_gb}"


def _evaluate(batches):
    """Validation of an alignment model on fixed batches: (mse, {"mse", "cosine"}), as the pipeline's."""

    def evaluate(model):
        graphdef, state = nnx.split(model)
        sq = cos = count = 0.0
        for batch in batches:
            s, c, n = (float(x) for x in models.align_eval(graphdef, state, batch))
            sq, cos, count = sq + s, cos + c, count + n
        return sq / max(count, 1), {"mse": sq / max(count, 1), "cosine": cos / max(count, 1)}

    return evaluate


def train_streamed(cfg: Config, *, name: str, student: nnx.Module, teacher: nnx.Module, adapter: AlignmentAdapter,
                   tokenizer, workdir: Path, seed: int, mesh, log_scalars=None, on_step=None) -> dict:
    """Streamed stage 1 of ``adapter`` (student and teacher frozen, read online); writes nothing but its
    checkpoints. Returns the stage's record (with ``"best"``: the best adapter, to be saved by the caller)."""
    stage = cfg.stages.align
    if stage.token_budget <= 0:
        raise AladError("a streamed stage 1 packs rows of token_budget positions: set stages.align.token_budget")
    if not stage.max_steps and (stage.schedule != "constant" or stage.warmup_fraction):
        raise AladError("a streamed stage 1 has no known length: with stages.align.schedule = linear or a warmup "
                        "set stages.align.max_steps")
    source = stream.source_of(cfg.corpus)
    stream.check_hub(source)
    val = stream.read_sentences(source, 0, cfg.corpus.val_sentences, jax.process_count())
    if not val:
        raise AladError("the stage-1 stream gave no validation sentence; set corpus.val_sentences above 0")
    val_rows = tagging.encode_tagging(val, tokenizer, None, max_length=cfg.max_length, stride=cfg.stride)
    gap = adapter.window // 2
    val_batches = packed(cfg, adapter.window).eval(val_rows)  # the stream packs its rows with the same gap
    batches = stream.AlignmentStream(
        source, tokenizer, max_length=cfg.max_length, stride=cfg.stride, gap=gap,
        rows=stream.rows_per_process(stage.token_budget, cfg.max_length, jax.process_count(), jax.device_count()),
        skip=len(val), limit=cfg.corpus.max_sentences, passes=max(1, math.ceil(stage.epochs)), seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    evaluate = _evaluate(val_batches)
    result = fit(Objective(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS, models.align_loss),
                 name=name, stage=stage, optim=cfg.optim, batches_for_epoch=None, evaluate=evaluate,
                 higher_is_better=False, checkpoint_dir=workdir / "checkpoints" / name, seed=seed, mesh=mesh,
                 checkpoint_every=cfg.checkpoint_every, log_scalars=log_scalars, on_step=on_step,
                 matmul_dtype=cfg.matmul_dtype, stream=batches)
    _, metrics = evaluate(result.model)
    return {
        "name": name, "mse": metrics["mse"], "cosine": metrics["cosine"], "best": result.model.adapter,
        "train_seconds": round(result.seconds, 2), "steps": result.steps, "tokens_per_s": round(result.tokens_per_s, 1),
        "cached": False, "streamed": True, "val_rows": len(val_rows.input_ids),
        "resumed_seconds": result.resumed_seconds, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "stopped": result.stopped, "padding": None if result.padding is None else round(result.padding, 4),
        "positions": result.positions, "history": result.history,
    }


def resolve_from(path: str, window: int) -> Path:
    """``stages.align.from``: an adapter file, or an ``alad align`` work directory (its ``wK`` adapter)."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "adapters" / f"w{window}_align.safetensors"
    if not candidate.is_file():
        raise AladError(f"config key 'stages.align.from' = {path!r}: no stage-1 adapter for window {window} at "
                        f"{candidate}; give the adapter file or the work directory of `alad align`")
    return candidate


def reuse(cfg: Config, window: int, student_dim: int, teacher_dim: int, out: Path) -> dict:
    """Stage 1 taken from ``stages.align.from`` (copied to ``out``), checked against the run's models."""
    source = resolve_from(cfg.stages.align.from_, window)
    _checked(import_reference(source, impl=cfg.adapter_impl), window, student_dim, teacher_dim)
    with distributed.primary_writes(f"align_from_w{window}") as writer:
        if writer:
            shutil.copyfile(source, out)
    return {"name": f"align_w{window}", "from": str(source.resolve()), "steps": 0}


def _checked(adapter: AlignmentAdapter, window: int, student_dim: int, teacher_dim: int) -> AlignmentAdapter:
    got = (adapter.window, adapter.student_dim, adapter.teacher_dim)
    if got != (window, student_dim, teacher_dim):
        raise AladError(f"stages.align.from: an adapter of window {got[0]}, {got[1]} -> {got[2]} dims; this run needs "
                        f"window {window}, {student_dim} -> {teacher_dim} (the student and teacher widths `alad align` "
                        "used)")
    return adapter


def make_student(cfg: Config, workdir: Path) -> str:
    """The student's directory: ``cfg.student`` itself, or its first ``student_layers`` layers under
    ``workdir/models/student`` (made once, by process 0)."""
    if cfg.student_layers <= 0:
        return cfg.student
    out = workdir / "models" / "student"
    with distributed.primary_writes("student") as writer:
        if writer and not (out / "config.json").is_file():
            compress.truncate(cfg.student, cfg.student_layers, out, cache_dir=cfg.cache_dir or None)
    return str(out)


def align(cfg: Config, workdir: Path) -> dict:
    """``alad align``: streamed stage 1 for every window into ``workdir``; resumes what is there."""
    workdir = prepare_workdir(workdir, cfg)
    for sub in ("models", "adapters", "checkpoints"):
        (workdir / sub).mkdir(exist_ok=True)
    cache_dir = cfg.cache_dir or None
    stream.check_hub(stream.source_of(cfg.corpus))  # before loading anything: a bad source stops here
    teacher = hub.load_encoder(cfg.teacher, cache_dir=cache_dir)[0]
    student_dir = make_student(cfg, workdir)
    tokenizer = hub.load_tokenizer(student_dir, cache_dir=cache_dir)
    if not teacher_inputs.same_vocabulary(tokenizer, hub.load_tokenizer(cfg.teacher, cache_dir=cache_dir)):
        raise AladError(f"alad align streams token-aligned rows: {cfg.student} and {cfg.teacher} must share a "
                        "tokenizer (use `alad run` for a teacher with its own tokenizer)")
    mesh = sharding.make_mesh(sharding.MeshConfig(cfg.mesh.data, cfg.mesh.fsdp))
    progress_path = workdir / "align.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {}
    for window in cfg.windows:
        name = f"align_w{window}"
        if name in progress:
            continue
        started = time.perf_counter()
        student = hub.load_encoder(student_dir, cache_dir=cache_dir)[0]
        dims = (student.config.hidden_size, teacher.config.hidden_size)
        if cfg.stages.align.from_:  # the next segment of a stage 1 in segments: from the previous one's adapter
            adapter = _checked(import_reference(resolve_from(cfg.stages.align.from_, window), impl=cfg.adapter_impl),
                               window, *dims)
        else:
            adapter = models.new_adapter(cfg, *dims, window, nnx.Rngs(stage_seed(cfg, name)))
        record = train_streamed(cfg, name=name, student=student, teacher=teacher, adapter=adapter,
                                tokenizer=tokenizer, workdir=workdir, seed=stage_seed(cfg, name), mesh=mesh)
        best = distributed.host_copy(record.pop("best"))
        with distributed.primary_writes(name) as writer:
            if writer:
                export_reference(best, workdir / "adapters" / f"w{window}_align.safetensors")
        record["wall_seconds"] = round(time.perf_counter() - started + record.pop("resumed_seconds"), 2)
        record["teacher"], record["student"] = cfg.teacher, student_dir
        progress[name] = jsonable(record)
        if distributed.is_primary():
            atomic_write_text(progress_path, json.dumps(progress, indent=1))
            print(f"{name}: {record['steps']} steps ({record['stopped']}), validation mse {record['mse']:.4f} "
                  f"cosine {record['cosine']:.4f}, {record['tokens_per_s']:.0f} tokens/s", flush=True)
    return progress

