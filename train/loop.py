"""The one training loop behind every stage and case.

A stage is an :class:`Objective`: a model, a parameter filter saying what
moves, and a loss. The loop splits the model into trainable and frozen state
(``nnx.split``), jits a pure step ``(trainable, frozen, opt_state, batch, key)
-> (trainable, opt_state, metrics)`` over the device mesh, evaluates after each
epoch, keeps the best parameters by the stage's validation score, and writes
resumable orbax checkpoints: a killed run restarts from its last checkpoint
and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from alad_jax import sharding
from alad_jax.config import OptimConfig, StageConfig

Batch = dict[str, np.ndarray]
LOG_EVERY = 10  # steps between scalar logs (loss, tokens/s, device memory)
LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass
class Objective:
    """What one stage trains.

    ``loss_fn(model, batch, dropout_key) -> (loss, metrics)`` must be pure;
    ``trainable`` is an nnx filter over the model's parameters (e.g.
    ``nnx.All(nnx.Param, nnx.PathContains("adapter"))``): everything else is
    frozen, gets no gradient and no optimiser state.
    """

    model: nnx.Module
    trainable: Any
    loss_fn: LossFn


@dataclasses.dataclass
class FitResult:
    model: nnx.Module  # the best parameters by validation score
    best_score: float
    history: list[dict]
    steps: int
    seconds: float
    trainable_params: int
    tokens_per_s: float


def make_optimizer(stage: StageConfig, optim: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a warmup + linear-decay (or constant) schedule."""
    warmup = int(stage.warmup_fraction * total_steps)
    if stage.schedule == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, stage.lr, max(warmup, 1)), optax.constant_schedule(stage.lr)], [warmup]
        ) if warmup else optax.constant_schedule(stage.lr)
    else:
        schedule = optax.warmup_linear_decay_schedule(0.0, stage.lr, warmup, max(total_steps, warmup + 1), 0.0) \
            if warmup else optax.linear_schedule(stage.lr, 0.0, max(total_steps, 1))
    return optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=stage.weight_decay),
    )


def count_params(state: nnx.State) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))


def make_train_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation):
    def step(trainable, frozen, opt_state, batch, key):
        def compute(trainable):
            model = nnx.merge(graphdef, trainable, frozen)
            return loss_fn(model, batch, key)

        (loss, metrics), grads = jax.value_and_grad(compute, has_aux=True)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step


class _Checkpoints:
    """Orbax checkpoints of (trainable, opt_state, best) plus JSON progress."""

    def __init__(self, directory: Path):
        self.manager = ocp.CheckpointManager(
            directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    @staticmethod
    def _as_dict(tree) -> dict[str, jax.Array]:
        return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}

    def save(self, step: int, tree, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(self._as_dict(tree)), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, like) -> tuple[Any, dict] | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree_util.tree_flatten(like)
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for i, x in enumerate(leaves)
        }
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        values = [restored.state[f"{i:05d}"] for i in range(len(leaves))]
        return jax.tree_util.tree_unflatten(treedef, values), restored.meta

    def close(self) -> None:
        self.manager.close()


def fit(
    objective: Objective,
    *,
    name: str,
    stage: StageConfig,
    optim: OptimConfig,
    batches_for_epoch: Callable[[int], Sequence[Batch]],
    evaluate: Callable[[nnx.Module], tuple[float, dict]],
    higher_is_better: bool,
    checkpoint_dir: Path,
    seed: int,
    mesh: jax.sharding.Mesh,
    checkpoint_every: int = 200,
    prepare: Callable[[Batch], Batch] | None = None,
    log_scalars: Callable[[str, int, dict], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``objective`` for ``stage.epochs`` (or its step / wall-clock budget).

    ``batches_for_epoch(epoch)`` must be deterministic (the same list for the
    same epoch) so a resumed run sees the same data in the same order.
    ``prepare(batch)`` may add arrays to a batch just before the step (e.g.
    cached hidden states gathered by row). ``evaluate(model) -> (score,
    metrics)`` runs after every epoch; the best score's parameters are
    returned. Resumes from ``checkpoint_dir``. ``on_step(step)`` is called
    after each optimizer step with the steps done so far (a resumed run starts
    counting at its checkpoint's step), before any checkpoint of that step.
    """
    graphdef, trainable, frozen = nnx.split(objective.model, objective.trainable, ...)
    steps_per_epoch = len(batches_for_epoch(0))
    total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
    if stage.max_steps:
        total_steps = min(total_steps, stage.max_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = make_optimizer(stage, optim, total_steps)

    trainable, opt_state, shardings = sharding.init_train_state(trainable, optimizer, mesh)
    frozen = sharding.put(frozen, sharding.state_shardings(frozen, mesh))
    step_fn = jax.jit(
        make_train_step(graphdef, objective.loss_fn, optimizer),
        out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
        donate_argnums=(0, 2),
    )
    best = jax.tree_util.tree_map(jnp.copy, trainable)

    meta = {"step": 0, "best_score": None, "history": [], "seconds": 0.0, "tokens": 0, "done": False,
            "loss_sum": 0.0, "loss_count": 0}
    checkpoints = _Checkpoints(checkpoint_dir)
    restored = checkpoints.restore((trainable, opt_state, best))
    if restored is not None:
        (trainable, opt_state, best), meta = restored
    base_key = jax.random.key(seed)
    step = last_saved = meta["step"]
    started = time.perf_counter() - meta["seconds"]
    pending_losses: list[jax.Array] = []  # device scalars, fetched only when needed (no per-step sync)

    def flush_losses() -> None:
        meta["loss_sum"] += float(sum(float(x) for x in pending_losses))
        meta["loss_count"] += len(pending_losses)
        pending_losses.clear()

    def save() -> None:
        nonlocal last_saved
        flush_losses()
        meta.update(step=step, seconds=time.perf_counter() - started)
        checkpoints.save(step, (trainable, opt_state, best), meta)
        last_saved = step

    bar = tqdm(total=total_steps, initial=step, desc=name, unit="step", mininterval=2.0, dynamic_ncols=True,
               disable=not sharding.is_primary())
    out_of_time = stage.max_seconds and meta["seconds"] >= stage.max_seconds
    window_start, window_tokens = time.perf_counter(), meta["tokens"]
    while not meta["done"] and not out_of_time and step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        for batch in batches_for_epoch(epoch)[offset:]:
            key = jax.random.fold_in(base_key, step)
            device_batch = sharding.shard_batch(prepare(batch) if prepare else batch, mesh)
            trainable, opt_state, metrics = step_fn(trainable, frozen, opt_state, device_batch, key)
            meta["tokens"] += int(batch["attention_mask"].sum())
            step += 1
            if on_step:
                on_step(step)
            pending_losses.append(metrics["loss"])
            bar.update(1)
            if log_scalars and step % LOG_EVERY == 0:
                now = time.perf_counter()
                scalars = {k: float(v) for k, v in metrics.items()}
                scalars.update(sharding.throughput_metrics(meta["tokens"] - window_tokens, now - window_start))
                scalars.update(sharding.device_memory_stats() or {})
                log_scalars(name, step, scalars)
                window_start, window_tokens = now, meta["tokens"]
            out_of_time = bool(stage.max_seconds) and time.perf_counter() - started >= stage.max_seconds
            if out_of_time or step >= total_steps or step % steps_per_epoch == 0:
                break
            if step - last_saved >= checkpoint_every:
                save()
        # End of an epoch (or of the budget): validate, keep the best.
        flush_losses()
        score, eval_metrics = evaluate(nnx.merge(graphdef, trainable, frozen))
        prev = meta["best_score"]
        if prev is None or (score > prev if higher_is_better else score < prev):
            meta["best_score"] = float(score)
            best = jax.tree_util.tree_map(jnp.copy, trainable)
        train_loss = meta["loss_sum"] / meta["loss_count"] if meta["loss_count"] else float("nan")
        meta["loss_sum"], meta["loss_count"] = 0.0, 0
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "score": float(score), **eval_metrics}
        meta["history"].append(record)
        if log_scalars:
            log_scalars(name, step, {f"eval/{k}": v for k, v in record.items() if isinstance(v, (int, float))})
        bar.set_postfix(loss=f"{train_loss:.4f}", score=f"{score:.4f}")
        meta["done"] = out_of_time or step >= total_steps
        # Checkpoints cost seconds each: write one per `checkpoint_every` steps and at the end.
        if meta["done"] or step - last_saved >= checkpoint_every:
            save()
    bar.close()
    checkpoints.close()
    seconds = meta["seconds"] if meta["done"] else time.perf_counter() - started
    return FitResult(
        model=nnx.merge(graphdef, best, frozen),
        best_score=float(meta["best_score"]) if meta["best_score"] is not None else float("nan"),
        history=list(meta["history"]),
        steps=step,
        seconds=float(seconds),
        trainable_params=count_params(trainable),
        tokens_per_s=meta["tokens"] / max(seconds, 1e-9),
    )
