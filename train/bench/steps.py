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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_train.config import Config
from alad_jax.models.heads import TaggingHead
from alad_jax.models.task_model import TaskModel
from alad_train import cases, models
from alad_train.bench.effort import ALIGN_BATCH, FINETUNE_BATCH, TORCH_AUTOCAST
from alad_train.bench.flops import adapter_flops_per_token, encoder_flops_per_token, finetune_flops_per_token
from alad_train.bench.gemm import gemm_vs_torch
from alad_train.timing import interleaved_medians, summary
from alad_train.bench.trainer import Trainer, first_window_adapter, own_copy
from alad_train.loop import make_optimizer
from alad_train.state import train_state_of

FINETUNE_CASES = (cases.TEACHER_FT, cases.STUDENT_FT, cases.JOINT)


def dense_batch(rows: int, length: int, vocab: int, num_labels: int, seed: int = 0) -> dict:
    """A batch with no padding: random token ids (above the special tokens), every token labelled."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1000, vocab, (rows, length)).astype(np.int32),
        "attention_mask": np.ones((rows, length), np.int32),
        "labels": rng.integers(0, num_labels, (rows, length)).astype(np.int32),
    }


def jax_case_model(case: cases.Case, cfg: Config, teacher, student, num_labels: int) -> TaskModel:
    """The case's TaskModel, built as the pipeline builds it (a new AlAd stands in for the stage-2 one)."""
    encoder = own_copy(teacher if case.encoder == cases.TEACHER else student)
    adapter = None
    if case.windowed:
        adapter = first_window_adapter(cfg, teacher, student, cfg.seed)
    width = adapter.teacher_dim if adapter is not None else encoder.config.hidden_size
    head = TaggingHead(width, num_labels, cfg.head_dropout, rngs=nnx.Rngs(cfg.seed + 1))
    return TaskModel(encoder, head, adapter, train_encoder=case.trains_encoder)


def align_uncached_state(cfg: Config, teacher, student, mesh, seed: int = 0):
    """The stage-2 uncached alignment step's training state (student -> AlAd vs the frozen teacher), as fit builds it."""
    adapter = first_window_adapter(cfg, teacher, student, seed)
    return train_state_of(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS, models.align_loss,
                          make_optimizer(cfg.stages.continual, cfg.optim, 1000), mesh, matmul_dtype=cfg.matmul_dtype)


def jax_steps(cfg: Config, teacher, student, batch: dict, num_labels: int, matmul_dtype: str | None = None) -> dict:
    """{case name: a blocking zero-argument train step} on ``batch`` (already on the device), compiled;
    matmuls in ``matmul_dtype`` (default: the config's)."""
    steps = {}
    device_batch = jax.device_put(batch)
    for case in FINETUNE_CASES:
        stage = getattr(cfg.stages, case.stage)
        trainer = Trainer(jax_case_model(case, cfg, teacher, student, num_labels), case.trainable,
                           models.tagging_loss, make_optimizer(stage, cfg.optim, total_steps=1000),
                           matmul_dtype or cfg.matmul_dtype)
        trainer.compile(batch)
        keys = iter(jax.random.split(jax.random.key(cfg.seed), 100_000))

        def step(trainer=trainer, keys=keys):
            jax.block_until_ready(trainer.step(device_batch, next(keys)))

        step()  # first call: buffer allocation
        steps[case.name] = step
    return steps


def jax_alignment_steps(cfg: Config, teacher, student, batch: dict, hidden: dict,
                        matmul_dtype: str | None = None) -> dict:
    """{"align_uncached", "adapter_cached"}: blocking alignment train steps on a dense batch (compiled)."""
    matmul_dtype = matmul_dtype or cfg.matmul_dtype
    stage = cfg.stages.continual

    def adapter():
        return first_window_adapter(cfg, teacher, student, cfg.seed)

    cached_batch = {**batch, **hidden}
    trainers = {
        "align_uncached": (Trainer(models.AlignModel(student, teacher, adapter()), cases.ALIGNMENT_TRAINS,
                                   models.align_loss, make_optimizer(stage, cfg.optim, total_steps=1000),
                                    matmul_dtype), batch),
        "adapter_cached": (Trainer(adapter(), nnx.Param, models.cached_align_loss,
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
    """The section's JSON: fine-tune tokens/s and MFU per case; with ``torch_worker`` every step vs PyTorch.

    ``torch_worker(batch, align_batch, hidden)`` starts the PyTorch twin of every step in a
    process of its own (:class:`alad_train.bench.pytorch.TorchWorker`, ``step(name)`` -> seconds);
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
        _vs_torch(out, times, ours, tokens, reps, worker, gemm, load_before)
    return out


def _vs_torch(out: dict, times: dict, ours: dict, tokens: dict, reps: int, worker, gemm, load_before: float) -> None:
    """Adds to ``out`` every step against PyTorch's (float32 and its bfloat16 autocast), rep by rep."""
    rows, length = FINETUNE_BATCH
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
        # on a loaded machine the ratios move in our favour (docs/speed_history.md): the load goes beside them.
        "load_avg_1min_before_after": [load_before, os.getloadavg()[0]],
        "torch_threads": worker.threads,
        "note": "steps of both sides alternate rep by rep on identical dense batches, PyTorch in a process "
                "of its own (in the JAX process it runs slower and more erratically); ratio = ours / theirs "
                "tokens/s (above 1: we are faster)",
    }
    # The recipe's PyTorch is float32: that is the peer. Autocast is reported beside it, so a
    # bfloat16 win over a float32 baseline is never the only number shown.
    out["ratios_vs_torch"] = {name: ours[name]["tokens_per_s"] / theirs[name]["tokens_per_s"] for name in ours}
    out["ratios_vs_torch_bf16_autocast"] = {name: ours[name]["tokens_per_s"] / autocast[name]["tokens_per_s"]
                                            for name in ours}
    out["gemm_gflops_vs_torch"] = gemm  # MFU's denominator, measured for both frameworks on this CPU
