"""The alignment stages' speed: one stage-2 epoch uncached vs cached, and the cached AlAd step's MFU."""

from __future__ import annotations

import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.cache import HiddenCache
from alad_jax.models import precision
from alad_train import cases, models
from alad_train.bench.effort import EPOCHS, MFU_BATCH, Effort
from alad_train.bench.flops import adapter_flops_per_token
from alad_train.timing import seconds
from alad_train.bench.trainer import Trainer, first_window_adapter
from alad_train.loop import make_optimizer


def stage2(cfg, teacher, student, rows, batches, workdir: Path) -> dict:
    """One timed epoch uncached, the cache build, one timed epoch cached; same rows, batches and init."""
    window = cfg.windows[0]
    optimizer = make_optimizer(cfg.stages.continual, cfg.optim, total_steps=EPOCHS * len(batches))

    def adapter():
        return first_window_adapter(cfg, teacher, student, cfg.seed)

    uncached = Trainer(models.AlignModel(student, teacher, adapter()), cases.ALIGNMENT_TRAINS,
                       models.align_loss, optimizer, cfg.matmul_dtype)
    uncached_s, uncached_losses, uncached_compile = uncached.epoch(batches)
    build_s = seconds(lambda: HiddenCache.build(workdir / "cache", rows, student, teacher))
    cache = HiddenCache.build(workdir / "cache", rows, student, teacher)  # the one just written, memory-mapped
    cached = Trainer(adapter(), nnx.Param, models.cached_align_loss, optimizer, cfg.matmul_dtype)
    cached_s, cached_losses, cached_compile = cached.epoch(batches, cache.gather)
    return {
        "window": window,
        "rows": len(rows),
        "batches": len(batches),
        "tokens": int(sum(b["attention_mask"].sum() for b in batches)),
        "padded_tokens": int(sum(b["attention_mask"].size for b in batches)),
        "uncached_epoch_s": uncached_s,
        "cache_build_s": build_s,
        "cached_epoch_s": cached_s,
        "compile_s": {"uncached": uncached_compile, "cached": cached_compile},
        "cache_bytes": int(cache.student.nbytes + cache.teacher.nbytes),
        # Same init, batches and order: the two paths must agree up to the bf16 rounding of the cache.
        "loss_max_rel_diff_cached_vs_uncached": float(
            np.max(np.abs(np.asarray(cached_losses) / np.asarray(uncached_losses) - 1))),
    }


def adapter_step(cfg, student_dim: int, teacher_dim: int, effort: Effort) -> dict:
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

    def adapter(impl=None):
        return models.new_adapter(cfg, student_dim, teacher_dim, window, nnx.Rngs(0), impl=impl)

    # The form the run's train step runs ("auto" resolves to one of the two; the rule is precision's).
    chosen = precision.step_adapter_impl(cfg.matmul_dtype) or adapter().impl
    device_batch = jax.device_put(batch)
    by_impl = {}
    impls = (chosen, "explicit" if chosen == "fused" else "fused") if cfg.matmul_dtype == "float32" else (chosen,)
    for impl in impls:
        trainer = Trainer(adapter(impl), nnx.Param, models.cached_align_loss, optimizer, cfg.matmul_dtype)
        trainer.compile(batch)
        trainer.step(device_batch, jax.random.key(0))
        times = [seconds(lambda: jax.block_until_ready(trainer.step(device_batch, jax.random.key(0))))
                 for _ in range(effort.mfu_reps)]
        by_impl[impl] = statistics.median(times)
    return {"impl": chosen, "window": window, "batch": list(MFU_BATCH), "gflop": flops / 1e9,
            "ms": by_impl[chosen] * 1e3, "ms_by_impl": {k: v * 1e3 for k, v in by_impl.items()}}
