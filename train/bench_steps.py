"""``alad bench``'s side-by-side train steps: fine-tune steps, and with ``--vs-torch`` every step vs PyTorch.

Fine-tune section: full train steps of the teacher, ``student_ft`` and ``joint`` cases.

Each case is the model and parameter filter a run trains (:mod:`alad_train.cases`),
stepped by the run's own train state (:func:`alad_train.state.train_state_of`):
forward with dropout, token cross-entropy, backward, global-norm clip, AdamW.
Batches are dense, ``FINETUNE_BATCH`` rows x tokens, every position real and
labelled, so tokens/s counts padded positions and equals real ones.

With ``--vs-torch`` the same steps run in PyTorch (``transformers.BertModel`` +
dropout + ``nn.Linear`` head, the AlAd in between for ``joint``) on the
identical batch; JAX and PyTorch steps alternate rep by rep so the load of
other processes falls on both alike, and the ratio of the medians is reported.
The alignment steps (uncached: student + teacher forwards and the AlAd step;
cached: the AlAd step on given hidden states) are compared the same way on a
dense ``ALIGN_BATCH``, so ``ratios_vs_torch`` holds every step's ratio from one
interleaved run. Then both frameworks' square matmuls (``GEMM_N``, float32 and
bfloat16) alternate the same way: ``gemm_gflops_vs_torch``, the peaks MFU is
measured against.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_train.config import Config
from alad_jax.models.heads import TaggingHead
from alad_jax.models.task_model import TaskModel
from alad_train import cases, models
from alad_train.loop import make_optimizer

FINETUNE_BATCH = (32, 64)
ALIGN_BATCH = (32, 128)  # the stages' 4096-token budget, every position real
FINETUNE_CASES = (cases.TEACHER_FT, cases.STUDENT_FT, cases.JOINT)
TORCH_AUTOCAST = "+bf16_autocast"  # a PyTorch step's name with this suffix runs its forward under CPU autocast
GEMM_N = 2048  # the square matmul both frameworks' GEMM rates are measured on (--vs-torch)
GEMM_DTYPES = ("float32", "bfloat16")


def dense_batch(rows: int, length: int, vocab: int, num_labels: int, seed: int = 0) -> dict:
    """A batch with no padding: random token ids (above the special tokens), every token labelled."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1000, vocab, (rows, length)).astype(np.int32),
        "attention_mask": np.ones((rows, length), np.int32),
        "labels": rng.integers(0, num_labels, (rows, length)).astype(np.int32),
    }


def finetune_flops_per_token(encoder_forward: float, head_in: int, num_labels: int, adapter_forward: float = 0.0) -> float:
    """Matmul FLOPs per token of one full fine-tune step: 3 x forward.

    Every weight trains and every activation needs its gradient (all layers
    train), so backward runs two matmuls per forward one (input and weight
    gradient); the embedding lookup is a gather, not a matmul.
    """
    return 3.0 * (encoder_forward + adapter_forward + 2 * head_in * num_labels)


def _copy(module: nnx.Module) -> nnx.Module:
    """``module`` with its own buffers: the step donates the trainable ones, and the encoders are shared."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


def jax_case_model(case: cases.Case, cfg: Config, teacher, student, num_labels: int) -> TaskModel:
    """The case's TaskModel, built as the pipeline builds it (a new AlAd stands in for the stage-2 one)."""
    encoder = _copy(teacher if case.encoder == cases.TEACHER else student)
    adapter = None
    if case.windowed:
        adapter = AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0],
                                   cfg.adapter_hidden, impl=cfg.adapter_impl, rngs=nnx.Rngs(cfg.seed))
    width = adapter.teacher_dim if adapter is not None else encoder.config.hidden_size
    head = TaggingHead(width, num_labels, cfg.head_dropout, rngs=nnx.Rngs(cfg.seed + 1))
    return TaskModel(encoder, head, adapter, train_encoder=case.trains_encoder)


def align_uncached_state(cfg: Config, teacher, student, mesh, seed: int = 0):
    """The stage-2 uncached alignment step's training state (student -> AlAd vs the frozen teacher), as fit builds it."""
    from alad_train.state import train_state_of

    adapter = AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0],
                               cfg.adapter_hidden, impl=cfg.adapter_impl, rngs=nnx.Rngs(seed))
    return train_state_of(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS, models.align_loss,
                          make_optimizer(cfg.stages.continual, cfg.optim, 1000), mesh, matmul_dtype=cfg.matmul_dtype)


def jax_steps(cfg: Config, teacher, student, batch: dict, num_labels: int, matmul_dtype: str | None = None) -> dict:
    """{case name: a blocking zero-argument train step} on ``batch`` (already on the device), compiled;
    matmuls in ``matmul_dtype`` (default: the config's)."""
    from alad_train.bench import _Trainer  # bench imports this module

    steps = {}
    device_batch = jax.device_put(batch)
    for case in FINETUNE_CASES:
        stage = getattr(cfg.stages, case.stage)
        trainer = _Trainer(jax_case_model(case, cfg, teacher, student, num_labels), case.trainable,
                           models.tagging_loss, make_optimizer(stage, cfg.optim, total_steps=1000),
                           matmul_dtype or cfg.matmul_dtype)
        trainer.compile(batch)
        keys = iter(jax.random.split(jax.random.key(cfg.seed), 100_000))

        def step(trainer=trainer, keys=keys):
            jax.block_until_ready(trainer.step(device_batch, next(keys)))

        step()  # first call: buffer allocation
        steps[case.name] = step
    return steps


def jax_gemm_steps(n: int = GEMM_N) -> dict:
    """{"gemm_<dtype>": a blocking ``[n, n] @ [n, n]``}: operands of the dtype, float32 accumulation and result
    (the train steps' bfloat16 form, :mod:`alad_jax.models.precision`)."""
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    steps = {}
    for dtype in GEMM_DTYPES:
        a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(jax.random.key(n)))
        dot(a, b).block_until_ready()

        def gemm(a=a, b=b) -> None:  # returns nothing: interleaved_medians times it (a number would be seconds)
            dot(a, b).block_until_ready()

        steps[f"gemm_{dtype}"] = gemm
    return steps


def gemm_vs_torch(worker, reps: int, n: int = GEMM_N) -> dict:
    """GFLOP/s of both frameworks' ``n``-cubed matmul per dtype, interleaved rep by rep (median)."""
    ours = jax_gemm_steps(n)
    times = interleaved_medians({"alad_jax": ours, "torch": {name: functools.partial(worker.step, name)
                                                             for name in ours}}, reps)
    return {"n": n, "reps": reps,
            **{side: {name.removeprefix("gemm_"): 2 * n**3 / statistics.median(t) / 1e9 for name, t in by.items()}
               for side, by in times.items()},
            "note": "square matmuls; ours: jnp.dot of operands of the dtype, float32 accumulation and result; "
                    "PyTorch: torch.mm of operands of the dtype in its worker process (a bfloat16 result, as "
                    "under autocast)"}


def interleaved_medians(sides: dict[str, dict], reps: int) -> dict:
    """{side: {case: [seconds per rep]}}: each rep runs every side's step of a case back to back."""
    times = {side: {name: [] for name in steps} for side, steps in sides.items()}
    for _ in range(reps):
        for name in next(iter(sides.values())):
            for side, steps in sides.items():
                start = time.perf_counter()
                seconds = steps[name]()  # a step timed in another process returns its own seconds
                times[side][name].append(seconds if seconds is not None else time.perf_counter() - start)
    return times


def summary(times: list[float], tokens: int) -> dict:
    """Median tokens/s and the spread (tokens/s at the slowest and fastest rep)."""
    return {"tokens_per_s": tokens / statistics.median(times), "min": tokens / max(times),
            "max": tokens / min(times), "reps": len(times)}


def jax_alignment_steps(cfg: Config, teacher, student, batch: dict, hidden: dict,
                        matmul_dtype: str | None = None) -> dict:
    """{"align_uncached", "adapter_cached"}: blocking alignment train steps on a dense batch (compiled)."""
    matmul_dtype = matmul_dtype or cfg.matmul_dtype
    from alad_train.bench import _Trainer

    stage = cfg.stages.continual

    def adapter():
        return AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0],
                                cfg.adapter_hidden, impl=cfg.adapter_impl, rngs=nnx.Rngs(cfg.seed))

    cached_batch = {**batch, **hidden}
    trainers = {
        "align_uncached": (_Trainer(models.AlignModel(student, teacher, adapter()), cases.ALIGNMENT_TRAINS,
                                    models.align_loss, make_optimizer(stage, cfg.optim, total_steps=1000),
                                    matmul_dtype), batch),
        "adapter_cached": (_Trainer(adapter(), nnx.Param, models.cached_align_loss,
                                    make_optimizer(stage, cfg.optim, total_steps=1000), matmul_dtype), cached_batch),
    }
    steps = {}
    for name, (trainer, host_batch) in trainers.items():
        trainer.compile(host_batch)
        device_batch = jax.device_put(host_batch)

        def step(trainer=trainer, device_batch=device_batch):
            jax.block_until_ready(trainer.step(device_batch, jax.random.key(0)))

        step()
        steps[name] = step
    return steps


def alignment_hidden(rows: int, length: int, ds: int, dt: int, seed: int = 0) -> dict:
    """Cached-style hidden states (bfloat16, as the cache stores them) for the cached AlAd step."""
    rng = np.random.default_rng(seed)
    return {"student_hidden": rng.normal(size=(rows, length, ds)).astype(jnp.bfloat16),
            "teacher_hidden": rng.normal(size=(rows, length, dt)).astype(jnp.bfloat16)}


def run(cfg: Config, teacher, student, num_labels: int, reps: int, peak: float, torch_worker=None) -> dict:
    """The section's JSON: fine-tune tokens/s and MFU per case; with ``torch_builders`` every step vs PyTorch.

    ``torch_worker(batch, align_batch, hidden)`` starts the PyTorch twin of every step in a
    process of its own (:class:`alad_train.bench_torch.TorchWorker`, ``step(name)`` -> seconds);
    ``peak`` is the matmul peak (GFLOP/s) MFU divides by.
    """
    rows, length = FINETUNE_BATCH
    vocab, ds, dt = teacher.config.vocab_size, student.config.hidden_size, teacher.config.hidden_size
    batch = dense_batch(rows, length, vocab, num_labels, cfg.seed)
    tokens = {name: rows * length for name in (c.name for c in FINETUNE_CASES)}
    sides = {"alad_jax": jax_steps(cfg, teacher, student, batch, num_labels)}
    # With bfloat16 matmuls, our float32 steps run beside them: the gain, measured in the same run.
    bf16 = cfg.matmul_dtype == "bfloat16"
    if bf16:
        sides["alad_jax_float32"] = jax_steps(cfg, teacher, student, batch, num_labels, "float32")
    worker = None
    if torch_worker is not None:
        align_batch = dense_batch(*ALIGN_BATCH, vocab, num_labels, cfg.seed + 1)
        del align_batch["labels"]
        hidden = alignment_hidden(*ALIGN_BATCH, ds, dt, cfg.seed)
        sides["alad_jax"].update(jax_alignment_steps(cfg, teacher, student, align_batch, hidden))
        if bf16:
            sides["alad_jax_float32"].update(jax_alignment_steps(cfg, teacher, student, align_batch, hidden, "float32"))
        worker = torch_worker(batch, align_batch, hidden)  # builds and warms its steps up
        sides["torch"] = {name: functools.partial(worker.step, name) for name in sides["alad_jax"]}
        # PyTorch's own mixed precision (CPU autocast to bfloat16): the peer of our bfloat16 steps.
        sides["torch_bf16_autocast"] = {name: functools.partial(worker.step, name + TORCH_AUTOCAST)
                                        for name in sides["alad_jax"]}
        tokens.update({name: ALIGN_BATCH[0] * ALIGN_BATCH[1] for name in ("align_uncached", "adapter_cached")})
    load_before = os.getloadavg()[0]
    try:
        times = interleaved_medians(sides, reps)
        gemm = gemm_vs_torch(worker, reps) if worker is not None else None
    finally:
        if worker is not None:
            worker.close()
    ours = {name: summary(t, tokens[name]) for name, t in times["alad_jax"].items()}

    from alad_train.bench import adapter_flops_per_token, encoder_flops_per_token

    flops = {
        cases.TEACHER_FT.name: finetune_flops_per_token(encoder_flops_per_token(teacher.config, length), dt, num_labels),
        cases.STUDENT_FT.name: finetune_flops_per_token(encoder_flops_per_token(student.config, length), ds, num_labels),
        cases.JOINT.name: finetune_flops_per_token(
            encoder_flops_per_token(student.config, length), dt, num_labels,
            adapter_flops_per_token(cfg.windows[0], ds, cfg.adapter_hidden, dt, train=False)),
    }
    names = [c.name for c in FINETUNE_CASES]
    out = {
        "finetune_batch": [rows, length],
        "finetune_tokens_per_s": {name: ours[name]["tokens_per_s"] for name in names},
        "finetune_mfu": {name: ours[name]["tokens_per_s"] * flops[name] / 1e9 / peak for name in names},
        "finetune": {"tokens_per_s_spread": {name: {"min": ours[name]["min"], "max": ours[name]["max"]}
                                             for name in names},
                     "reps": reps, "matmul_dtype": cfg.matmul_dtype,
                     "gflop_per_step": {name: f * rows * length / 1e9 for name, f in flops.items()},
                     "matmul_peak_gflops": peak,
                     "note": "a step = forward with dropout, token cross-entropy, backward, global-norm clip, "
                             "AdamW update; dense batches, so tokens are padded positions (all real); MFU counts "
                             "3 x forward matmul FLOPs"},
    }
    if bf16:
        ours32 = {name: summary(t, tokens[name]) for name, t in times["alad_jax_float32"].items()}
        out["finetune"]["tokens_per_s_float32"] = {name: ours32[name]["tokens_per_s"] for name in names}
        out["ratios_bf16_vs_float32"] = {name: ours[name]["tokens_per_s"] / ours32[name]["tokens_per_s"]
                                         for name in ours}
    if worker is not None:
        theirs = {name: summary(t, tokens[name]) for name, t in times["torch"].items()}
        autocast = {name: summary(t, tokens[name]) for name, t in times["torch_bf16_autocast"].items()}
        # Each rep ran the two sides' steps back to back: the per-rep ratio and its spread.
        per_rep = {name: sorted(b / a for a, b in zip(times["alad_jax"][name], times["torch"][name]))
                   for name in ours}
        out["steps_vs_torch"] = {
            "batches": {"finetune": [rows, length], "alignment": list(ALIGN_BATCH)},
            "reps": reps,
            "tokens_per_s": {name: {"alad_jax": ours[name]["tokens_per_s"], "torch": theirs[name]["tokens_per_s"],
                                    "torch_bf16_autocast": autocast[name]["tokens_per_s"],
                                    "alad_jax_min_max": [ours[name]["min"], ours[name]["max"]],
                                    "torch_min_max": [theirs[name]["min"], theirs[name]["max"]]}
                             for name in ours},
            "ratio_per_rep": {name: {"median": statistics.median(r), "min": r[0], "max": r[-1]}
                              for name, r in per_rep.items()},
            "torch": worker.version,
            # PyTorch's fork-join OpenMP threads stall when other processes take a core, XLA's task pool less:
            # on a loaded machine the ratios move in our favour (2.3x where a quiet machine measured 0.66x).
            "load_avg_1min_before_after": [load_before, os.getloadavg()[0]],
            "torch_threads": worker.threads,
            "note": "steps of both sides alternate rep by rep on identical dense batches, PyTorch in a process "
                    "of its own (in the JAX process it ran up to 2-3x slower); ratio = ours / theirs tokens/s "
                    "(above 1: we are faster)",
        }
        # The recipe's PyTorch is float32: that is the peer. Autocast is reported beside it, so a
        # bfloat16 win over a float32 baseline is never the only number shown.
        out["ratios_vs_torch"] = {name: ours[name]["tokens_per_s"] / theirs[name]["tokens_per_s"] for name in ours}
        out["ratios_vs_torch_bf16_autocast"] = {name: ours[name]["tokens_per_s"] / autocast[name]["tokens_per_s"]
                                                for name in ours}
        out["gemm_gflops_vs_torch"] = gemm  # MFU's denominator, measured for both frameworks on this CPU
    return out
