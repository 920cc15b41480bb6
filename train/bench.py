"""``alad bench``: speed of inference and of the alignment stages, as one JSON document.

Every figure is measured in this process, on this machine, in this run:

- ``matmul_peak_gflops``: the best ``jnp.dot`` rate over a few square sizes in
  the train steps' matmul dtype (``matmul_dtype``: float32, or bfloat16 operands
  with float32 accumulation), measured before the benchmarks and again right
  after the adapter step (other processes' load moves it; the higher one is the
  peak); every MFU divides by it. ``matmul_peak_gflops_by_dtype`` has both;
- ``latency_ms``: p50/p95 of the jitted tagging forward (what ``alad predict``
  runs) at batch 1 and 32, seq 128, for the student (+ linear head), student
  + AlAd(K = 1, 3, 5) + head, and the teacher (+ head); the models run
  interleaved, run by run, so load from other processes hits all alike;
- ``align_tokens_per_s``: the pipeline's alignment train step over one epoch
  of the embedded default's stage-2 rows (the task text, token-budget
  batches): ``uncached`` runs teacher + student + AlAd step, ``cached`` the
  AlAd step on hidden states gathered from :class:`~alad_jax.cache.HiddenCache`;
- ``stage2_10epoch_speedup``: ``10 * uncached_epoch / (cache_build + 10 *
  cached_epoch)``, extrapolated from one timed epoch of each;
- ``adapter_step_mfu``: exact matmul FLOPs of the cached AlAd train step on a
  full 32 x 128 batch / its median time / the matmul peak;
- ``peak_rss_mb``: the process's peak resident memory;
- ``onnxruntime_latency_ms``: the student + AlAd(K=3) + head tagger exported to
  ONNX (``alad export``'s converter) and run by onnxruntime on CPU, next to the
  same model's jitted forward, interleaved run by run (b1, b32, seq 128, p50/p95);
  absent, with a note, when the onnx extra is not installed.
- ``finetune_tokens_per_s`` / ``finetune_mfu``: full train steps (forward
  with dropout, cross-entropy, backward, clip, AdamW) of the teacher,
  ``student_ft`` and ``joint`` cases on dense ``finetune_batch`` (32 x 64)
  batches, through the runs' own train state (:mod:`alad_train.bench_steps`).

Compilation is excluded from every timing (steps are compiled ahead of time
per batch shape). ``--vs-torch`` also times the authors' PyTorch recipe
(transformers ``BertModel`` teacher and student, ``nn.Linear`` adapter,
AdamW, no cache) on the same batches and reports ours / theirs, and runs
every train step above (fine-tune, uncached alignment and cached AlAd on dense
batches) side by side with its PyTorch twin, alternating rep by rep:
``ratios_vs_torch`` holds all five ratios (ours / theirs tokens/s), and
``gemm_gflops_vs_torch`` both frameworks' ``GEMM_N``-cubed matmul rates in
float32 and bfloat16 on this CPU. ``xla_cpu`` records the CPU's bfloat16 matrix
instructions and which XLA:CPU library ran a bfloat16 dot (:mod:`alad_jax.xla_cpu`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax import sharding, xla_cpu
from alad_jax.adapter import AlignmentAdapter
from alad_jax.cache import HiddenCache
from alad_train.config import Config, load_config
from alad_jax.errors import AladError
from alad_jax.inference.predictor import CompiledTagger
from alad_jax.models import compress, hub
from alad_jax.models.task_model import TaskModel
from alad_jax.models.heads import TaggingHead
from alad_train import bench_steps, cases, models, tasks
from alad_train.loop import make_optimizer
from alad_train.state import train_state_of

SEQ = 128
LATENCY_BATCHES = (1, 32)
WINDOWS = (1, 3, 5)
EPOCHS = 10  # stage 2 of the paper
MFU_BATCH = (32, 128)  # 4096 tokens: the stages' token budget
# Aspirations for the implementation's speed (reported as reached or not, never enforced).
TARGETS = {"stage2_10epoch_speedup": 5.0, "adapter_step_mfu": 0.5, "alad_w3_b32_latency_overhead": 1.3}


@dataclasses.dataclass(frozen=True)
class Effort:
    """Repetitions and data size: the real run, or ``--quick`` for smoke tests."""

    matmul_sizes: tuple[int, ...]
    matmul_reps: int
    latency_reps: dict  # batch rows -> timed runs per model
    mfu_reps: int
    max_rows: int  # stage-2 rows (0 = all the embedded default's train rows)
    torch_batches: int  # alignment batches timed for the PyTorch recipe (0 = the whole epoch)
    step_reps: int = 2  # interleaved reps of each side-by-side train step (bench_steps)


FULL = Effort(matmul_sizes=(512, 1024, 2048), matmul_reps=7, latency_reps={1: 40, 32: 12}, mfu_reps=10, max_rows=0,
              torch_batches=0, step_reps=10)
QUICK = Effort(matmul_sizes=(256,), matmul_reps=2, latency_reps={1: 3, 32: 3}, mfu_reps=2, max_rows=48, torch_batches=2)


# --------------------------------------------------------------------------- FLOP counts


def encoder_flops_per_token(config, seq: int) -> float:
    """Forward matmul FLOPs per token of a BERT-family encoder at sequence length ``seq``."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h  # projections + MLP, scores + context
    return float(config.num_layers * per_layer)


def adapter_flops_per_token(window: int, student_dim: int, hidden: int, teacher_dim: int, *, train: bool) -> float:
    """Matmul FLOPs per token of AlAd: forward, or forward + backward of a step on frozen inputs.

    Backward computes both weight gradients and the gradient into fc2's input;
    none flows into the (frozen, data) student states, so fc1 has no input gradient.
    """
    fc1, fc2 = window * student_dim * hidden, hidden * teacher_dim
    forward = 2 * (fc1 + fc2)
    return float(forward + (2 * fc1 + 4 * fc2 if train else 0))


# --------------------------------------------------------------------------- timing helpers


def _peak_gflops(effort: Effort, dtype: str = "float32") -> float:
    """The best matmul rate over ``effort.matmul_sizes`` (square ``jnp.dot`` of ``dtype`` operands, float32
    accumulation and result), GFLOP/s."""
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    best = 0.0
    for n in effort.matmul_sizes:
        a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(jax.random.key(n)))
        dot(a, b).block_until_ready()
        seconds = min(_seconds(lambda: dot(a, b).block_until_ready()) for _ in range(effort.matmul_reps))
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _percentiles(times_s: list[float]) -> dict:
    p50, p95 = np.percentile(np.asarray(times_s) * 1e3, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}


def _latencies(forwards: dict, reps: dict, vocab: int) -> dict:
    """{name: {"b1": {p50, p95}, "b32": ...}} in ms, the forwards interleaved run by run."""
    out = {name: {} for name in forwards}
    for rows in LATENCY_BATCHES:
        ids = np.random.default_rng(rows).integers(1000, vocab, (rows, SEQ)).astype(np.int32)
        mask = np.ones_like(ids)
        for forward in forwards.values():
            jax.block_until_ready(forward(ids, mask))  # compile
        times = {name: [] for name in forwards}
        for _ in range(reps[rows]):
            for name, forward in forwards.items():
                times[name].append(_seconds(lambda f=forward: jax.block_until_ready(f(ids, mask))))
        for name in forwards:
            out[name][f"b{rows}"] = _percentiles(times[name])
    return out


def _onnxruntime_latency(tagger: CompiledTagger, reps: dict, vocab: int) -> dict:
    """{"alad_w3_onnxruntime": {b1, b32}, "alad_w3_jit": {b1, b32}, ...}: one model, both runtimes, interleaved."""
    try:
        import jax2onnx  # noqa: F401  (the converter: without it there is nothing to time)
        import onnxruntime
    except ImportError:
        return {"note": "not measured: install the onnx extra (bash scripts/setup.sh onnx)"}
    from alad_jax.inference.onnx_export import OnnxForward, convert

    started = time.perf_counter()
    proto = convert(nnx.merge(tagger.graphdef, tagger.state), "pos")
    export_s = time.perf_counter() - started
    forward = OnnxForward(proto.SerializeToString())
    timed = _latencies({"alad_w3_onnxruntime": forward, "alad_w3_jit": tagger}, reps, vocab)
    return {**timed, "onnxruntime": onnxruntime.__version__, "export_s": export_s,
            "onnxruntime_threads": "default (one per core)"}


class _Trainer:
    """The pipeline's training state and step (alad_train.state), compiled ahead of time once per batch shape."""

    def __init__(self, model: nnx.Module, trainable, loss_fn, optimizer, matmul_dtype: str = "float32"):
        self.state = train_state_of(model, trainable, loss_fn, optimizer, sharding.make_mesh(),
                                    matmul_dtype=matmul_dtype)
        self._compiled = {}

    @staticmethod
    def _shape(batch: dict) -> tuple:
        return tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))

    def compile(self, batch: dict) -> float:
        """Compiles for ``batch``'s shapes (if new); returns the seconds it took."""
        shape = self._shape(batch)
        if shape in self._compiled:
            return 0.0
        start = time.perf_counter()
        self._compiled[shape] = self.state.lower(batch, jax.random.key(0)).compile()
        return time.perf_counter() - start

    def step(self, batch: dict, key: jax.Array) -> dict:
        return self.state.run(self._compiled[self._shape(batch)], batch, key)

    def epoch(self, batches: list[dict], prepare=None) -> tuple[float, list[float], float]:
        """(seconds, per-step losses, compile seconds) of one pass; compilation first, untimed."""
        compile_s = sum(self.compile(prepare(b) if prepare else b) for b in _one_per_shape(batches))
        base = jax.random.key(0)
        losses = []
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            metrics = self.step(prepare(batch) if prepare else batch, jax.random.fold_in(base, i))
            losses.append(metrics["loss"])
        jax.block_until_ready(self.state.trainable)
        seconds = time.perf_counter() - start
        return seconds, [float(x) for x in losses], compile_s


def _one_per_shape(batches: list[dict]) -> list[dict]:
    seen = {}
    for batch in batches:
        seen.setdefault(batch["input_ids"].shape, batch)
    return list(seen.values())


# --------------------------------------------------------------------------- the measurements


def _load_models(cfg: Config, workdir: Path):
    """(teacher, student, tokenizer, teacher_dir, student_dir, student description)."""
    teacher_dir = hub.resolve_model_dir(cfg.teacher, cache_dir=cfg.cache_dir or None)
    student_dir = hub.resolve_model_dir(cfg.student, cache_dir=cfg.cache_dir or None)
    described = cfg.student
    if cfg.student_layers > 0:
        student_dir = compress.truncate(str(student_dir), cfg.student_layers, workdir / "student")
        described = f"{cfg.student} (first {cfg.student_layers} layers)"
    teacher, _ = hub.load_encoder(str(teacher_dir))
    student, _ = hub.load_encoder(str(student_dir))
    for name, encoder in (("teacher", teacher), ("student", student)):
        if encoder.config.max_position_embeddings < SEQ:
            raise AladError(f"bench: {name} has {encoder.config.max_position_embeddings} positions; "
                            f"the benchmark runs sequences of {SEQ}; pick a model with at least {SEQ}")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise AladError(f"bench: teacher vocabulary {teacher.config.vocab_size} != student {student.config.vocab_size}; "
                        "AlAd aligns token by token, so both must share the tokenizer")
    return teacher, student, hub.load_tokenizer(str(teacher_dir)), teacher_dir, student_dir, described


def _latency_models(cfg: Config, teacher, student, num_labels: int) -> dict[str, CompiledTagger]:
    rngs = nnx.Rngs(cfg.seed)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    forwards = {"student": CompiledTagger(TaskModel(student, TaggingHead(ds, num_labels, rngs=rngs)))}
    for k in WINDOWS:
        adapter = AlignmentAdapter(ds, dt, k, cfg.adapter_hidden, impl=cfg.adapter_impl, rngs=rngs)
        forwards[f"alad_w{k}"] = CompiledTagger(TaskModel(student, TaggingHead(dt, num_labels, rngs=rngs), adapter))
    forwards["teacher"] = CompiledTagger(TaskModel(teacher, TaggingHead(dt, num_labels, rngs=rngs)))
    return forwards


def _stage2(cfg: Config, teacher, student, rows, batches, workdir: Path) -> dict:
    """One timed epoch uncached, the cache build, one timed epoch cached; same rows, batches and init."""
    window = cfg.windows[0]
    stage = cfg.stages.continual
    optimizer = make_optimizer(stage, cfg.optim, total_steps=EPOCHS * len(batches))

    def adapter():
        return AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, window, cfg.adapter_hidden,
                                impl=cfg.adapter_impl, rngs=nnx.Rngs(cfg.seed))

    uncached = _Trainer(models.AlignModel(student, teacher, adapter()), cases.ALIGNMENT_TRAINS,
                        models.align_loss, optimizer, cfg.matmul_dtype)
    uncached_s, uncached_losses, uncached_compile = uncached.epoch(batches)
    build_s = _seconds(lambda: HiddenCache.build(workdir / "cache", rows, student, teacher))
    cache = HiddenCache.build(workdir / "cache", rows, student, teacher)  # the one just written, memory-mapped
    cached = _Trainer(adapter(), nnx.Param, models.cached_align_loss, optimizer, cfg.matmul_dtype)
    cached_s, cached_losses, cached_compile = cached.epoch(batches, cache.gather)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    padded = int(sum(b["attention_mask"].size for b in batches))
    return {
        "window": window,
        "rows": len(rows),
        "batches": len(batches),
        "tokens": tokens,
        "padded_tokens": padded,
        "uncached_epoch_s": uncached_s,
        "cache_build_s": build_s,
        "cached_epoch_s": cached_s,
        "compile_s": {"uncached": uncached_compile, "cached": cached_compile},
        "cache_bytes": int(cache.student.nbytes + cache.teacher.nbytes),
        # Same init, batches and order: the two paths must agree up to the bf16 rounding of the cache.
        "loss_max_rel_diff_cached_vs_uncached": float(
            np.max(np.abs(np.asarray(cached_losses) / np.asarray(uncached_losses) - 1))),
    }


def _adapter_step(cfg: Config, student_dim: int, teacher_dim: int, effort: Effort) -> dict:
    """Median time and exact matmul FLOPs of the cached AlAd train step on a full batch, per impl."""
    rows, length = MFU_BATCH
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": np.ones((rows, length), np.int32),
        "attention_mask": np.ones((rows, length), np.int32),
        "student_hidden": rng.normal(size=(rows, length, student_dim)).astype(jnp.bfloat16),
        "teacher_hidden": rng.normal(size=(rows, length, teacher_dim)).astype(jnp.bfloat16),
    }
    window = cfg.windows[0]
    flops = rows * length * adapter_flops_per_token(window, student_dim, cfg.adapter_hidden, teacher_dim, train=True)
    optimizer = make_optimizer(cfg.stages.continual, cfg.optim, total_steps=1000)

    def adapter(impl):
        return AlignmentAdapter(student_dim, teacher_dim, window, cfg.adapter_hidden, impl=impl, rngs=nnx.Rngs(0))

    chosen = adapter(cfg.adapter_impl).impl  # "auto" resolves to one of the two forms
    if cfg.matmul_dtype == "bfloat16":
        chosen = "explicit"  # the bfloat16 step runs the explicit form (alad_jax.models.precision)
    device_batch = jax.device_put(batch)
    by_impl = {}
    impls = (chosen, "explicit" if chosen == "fused" else "fused") if cfg.matmul_dtype == "float32" else (chosen,)
    for impl in impls:
        trainer = _Trainer(adapter(impl), nnx.Param, models.cached_align_loss, optimizer, cfg.matmul_dtype)
        trainer.compile(batch)
        trainer.step(device_batch, jax.random.key(0))
        times = [_seconds(lambda: jax.block_until_ready(trainer.step(device_batch, jax.random.key(0))))
                 for _ in range(effort.mfu_reps)]
        by_impl[impl] = statistics.median(times)
    return {"impl": chosen, "window": window, "batch": list(MFU_BATCH), "gflop": flops / 1e9,
            "ms": by_impl[chosen] * 1e3, "ms_by_impl": {k: v * 1e3 for k, v in by_impl.items()}}


# --------------------------------------------------------------------------- the document


def run_bench(cfg: Config, *, quick: bool = False, vs_torch: bool = False) -> dict:
    """Every measurement, as the JSON-able dict ``alad bench`` prints."""
    if vs_torch:
        from alad_train import bench_torch  # torch is an optional extra: imported only when asked for

        bench_torch.require_torch()
    effort = QUICK if quick else FULL
    cfg = copy.deepcopy(cfg)  # --quick shrinks the data section
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="alad-bench-") as tmp:
        workdir = Path(tmp)
        teacher, student, tokenizer, teacher_dir, student_dir, student_name = _load_models(cfg, workdir)
        if effort.max_rows:
            cfg.data.max_train, cfg.data.max_dev, cfg.data.max_test = effort.max_rows, 8, 8
        task = tasks.TaggingTask.load(cfg, tokenizer)
        rows = task.text_rows("train")
        batches = tasks.alignment_batches(rows, cfg, cfg.stages.continual, epoch=0)
        num_labels = len(task.vocab)

        peak_before = _peak_gflops(effort, cfg.matmul_dtype)
        latency_models = _latency_models(cfg, teacher, student, num_labels)
        latency = _latencies(latency_models, effort.latency_reps, teacher.config.vocab_size)
        onnx_latency = _onnxruntime_latency(latency_models["alad_w3"], effort.latency_reps, teacher.config.vocab_size)
        stage2 = _stage2(cfg, teacher, student, tasks.rows_of(rows), batches, workdir)
        step = _adapter_step(cfg, student.config.hidden_size, teacher.config.hidden_size, effort)
        peak_after = _peak_gflops(effort, cfg.matmul_dtype)
        other = "float32" if cfg.matmul_dtype == "bfloat16" else "bfloat16"
        peaks = {cfg.matmul_dtype: max(peak_before, peak_after), other: _peak_gflops(effort, other)}
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        def torch_worker(batch, align_batch, hidden):  # the PyTorch twins, in a process of their own
            return bench_torch.TorchWorker(cfg, teacher_dir, student_dir, num_labels, batch, align_batch, hidden,
                                           workdir / "torch_worker")

        steps = bench_steps.run(cfg, teacher, student, num_labels, effort.step_reps, max(peak_before, peak_after),
                                torch_worker if vs_torch else None)
        torch_result = (bench_torch.torch_recipe(cfg, teacher_dir, student_dir, batches, num_labels, effort)
                        if vs_torch else None)

    ds, dt, hidden = student.config.hidden_size, teacher.config.hidden_size, cfg.adapter_hidden
    peak = max(peak_before, peak_after)
    uncached_10 = EPOCHS * stage2["uncached_epoch_s"]
    cached_10 = stage2["cache_build_s"] + EPOCHS * stage2["cached_epoch_s"]
    mfu = step["gflop"] / (step["ms"] / 1e3) / peak
    overhead = {f"alad_w{k}": {b: latency[f"alad_w{k}"][b]["p50"] / latency["student"][b]["p50"]
                               for b in latency["student"]} for k in WINDOWS}
    # What the targets would be if every part ran at the same FLOP rate: the share of the work
    # the model sizes impose (measured rates differ: encoders also spend time outside matmuls).
    f_student = encoder_flops_per_token(student.config, SEQ)
    f_teacher = encoder_flops_per_token(teacher.config, SEQ)
    f_train = adapter_flops_per_token(cfg.windows[0], ds, hidden, dt, train=True)
    analytic = {
        "student_forward_mflop_per_token": f_student / 1e6,
        "teacher_forward_mflop_per_token": f_teacher / 1e6,
        "adapter_forward_mflop_per_token": {f"w{k}": adapter_flops_per_token(k, ds, hidden, dt, train=False) / 1e6
                                            for k in WINDOWS},
        "adapter_train_step_mflop_per_token": f_train / 1e6,
        "stage2_10epoch_speedup_at_equal_flop_rate": EPOCHS * (f_student + f_teacher + f_train)
        / (f_student + f_teacher + EPOCHS * f_train),
        "alad_w3_latency_overhead_at_equal_flop_rate": 1 + adapter_flops_per_token(3, ds, hidden, dt, train=False) / f_student,
    }
    result = {
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "quick": quick,
        "teacher": cfg.teacher,
        "student": student_name,
        "seq_len": SEQ,
        "matmul_dtype": cfg.matmul_dtype,
        "xla_cpu": xla_cpu.describe(cfg.matmul_dtype),
        "matmul_peak_gflops": peak,
        "matmul_gflops_before_after": [peak_before, peak_after],
        "matmul_peak_gflops_by_dtype": peaks,
        "latency_ms": latency,
        "latency_overhead_vs_student": overhead,
        "onnxruntime_latency_ms": onnx_latency,
        "align_tokens_per_s": {"uncached": stage2["tokens"] / stage2["uncached_epoch_s"],
                               "cached": stage2["tokens"] / stage2["cached_epoch_s"]},
        "stage2": stage2,
        "stage2_10epoch_speedup": uncached_10 / cached_10,
        "stage2_10epoch_speedup_cache_reused": stage2["uncached_epoch_s"] / stage2["cached_epoch_s"],
        "adapter_step": step,
        "adapter_step_mfu": mfu,
        "adapter_step_mfu_by_impl": {k: step["gflop"] / (ms / 1e3) / peak for k, ms in step["ms_by_impl"].items()},
        # The whole cached epoch (gather from the memory-mapped cache and padding rows included).
        "stage2_cached_epoch_mfu": stage2["padded_tokens"] * f_train / stage2["cached_epoch_s"] / 1e9 / peak,
        "peak_rss_mb": peak_rss_mb,
        **steps,
        "analytic": analytic,
        "targets": {
            "meaning": "aspirations this project set for its speed, not checks: false = not reached on this "
                       "machine (nothing fails)",
            "reached": {
                "stage2_10epoch_speedup>=5": uncached_10 / cached_10 >= TARGETS["stage2_10epoch_speedup"],
                "adapter_step_mfu>=0.5": mfu >= TARGETS["adapter_step_mfu"],
                "alad_w3_b32_latency_overhead<=1.3":
                    overhead["alad_w3"]["b32"] <= TARGETS["alad_w3_b32_latency_overhead"],
            },
        },
        "notes": [
            f"stage 2: one timed epoch of each path over the embedded default's {stage2['rows']} task-text rows "
            f"(token budget {cfg.stages.continual.token_budget}, K={cfg.windows[0]}); 10-epoch figures are "
            "10 x that epoch (+ the cache build, timed once, writing to disk included)",
            "compilation is excluded from every timing (ahead-of-time per batch shape; stage2.compile_s)",
            "align_tokens_per_s counts real (non-padding) tokens; adapter_step_mfu counts the executed matmul "
            f"FLOPs of one cached AlAd train step on a full {MFU_BATCH[0]}x{MFU_BATCH[1]} batch",
            "latency: full-length rows (seq 128), tagging head included, argmax included",
        ],
    }
    if torch_result is not None:
        ours_tokens = stage2["tokens"] / stage2["uncached_epoch_s"]
        theirs_tokens = torch_result["tokens"] / torch_result["seconds"]
        result["vs_torch"] = {
            "torch": torch_result["version"],
            "torch_threads": torch_result["threads"],
            "batches": torch_result["batches"],
            "align_tokens_per_s_uncached": {"alad_jax": ours_tokens, "torch": theirs_tokens,
                                            "ratio": ours_tokens / theirs_tokens},
            "latency_ms_alad_w3_p50": {
                b: {"alad_jax": latency["alad_w3"][b]["p50"], "torch": torch_result["latency"][b]["p50"],
                    "ratio": latency["alad_w3"][b]["p50"] / torch_result["latency"][b]["p50"]}
                for b in torch_result["latency"]},
            "align_tokens_per_s_cached_vs_torch_uncached": result["align_tokens_per_s"]["cached"] / theirs_tokens,
            "note": "ratio = ours / theirs: above 1 is faster for tokens/s, below 1 is faster for latency; "
                    "these run PyTorch in the JAX process, one epoch after the other (PyTorch runs slower "
                    "there): quote ratios_vs_torch (its own process, interleaved, dense batches) instead",
        }
        result["peak_rss_mb_with_torch"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - started
    return _rounded(result)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.5g}")
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(args) -> int:
    """``alad bench [--quick] [--vs-torch] [teacher=... student=... student_layers=N ...]``."""
    cfg = load_config(None, args.overrides)
    print(json.dumps(run_bench(cfg, quick=args.quick, vs_torch=args.vs_torch), indent=1))
    return 0
