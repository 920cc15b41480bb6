"""The one training loop behind every stage and case.

A stage is an :class:`Objective`: a model, a parameter filter saying what
moves, and a loss. The loop builds its training state with the one factory
(:func:`alad_train.state.create_train_state`: trainable and frozen state on the
device mesh, a pure jitted step), evaluates after each epoch, keeps the best
parameters by the stage's validation score, and writes resumable checkpoints
in the one named format (:mod:`alad_jax.checkpoints`): a killed run restarts
from its last checkpoint and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from alad_jax import distributed, sharding
from alad_jax.checkpoints import Checkpoints
from alad_jax.param_count import count_params
from alad_train.config import OptimConfig, StageConfig
from alad_train.state import LossFn, create_train_state

Batch = dict[str, np.ndarray]


class Stream(Protocol):
    """Batches read on (an iterator) whose position can be saved and restored (plain JSON)."""

    def __iter__(self) -> Iterator[Batch]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


LOG_EVERY = 10  # steps between scalar logs (loss, tokens/s, device memory)
STREAM_EVAL_EVERY = 1000  # a streamed stage's default steps between evaluations
STREAM_STEPS = 2**62  # a streamed stage without max_steps: the stream's end or the clock stops it


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
    history: list[dict]  # one record per evaluation: {"epoch", "dev", "step", "train_loss", ...}
    epochs_run: int
    best_epoch: int
    stopped: str  # "plateau" (patience ran out), "cap" (max epochs or steps) or "time" (max_seconds)
    steps: int
    seconds: float
    trainable_params: int
    tokens_per_s: float
    padding: float | None = None  # share of the positions the steps computed on that were padding (empty rows too)
    positions: int = 0  # the positions the steps computed on (rows x length, summed over steps); 0: not counted
    resumed_seconds: float = 0.0  # of ``seconds``, trained by an earlier, interrupted session


def make_optimizer(stage: StageConfig, optim: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a warmup + linear-decay (or constant) schedule."""
    warmup = int(stage.warmup_fraction * total_steps)
    if stage.schedule == "constant":
        after = optax.constant_schedule(stage.lr)
    else:  # linear decay to 0 at total_steps, as the HF Trainer default
        after = optax.linear_schedule(stage.lr, 0.0, max(total_steps - warmup, 1))
    schedule = optax.join_schedules([optax.linear_schedule(0.0, stage.lr, warmup), after], [warmup]) \
        if warmup else after
    return optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=stage.weight_decay),
    )


def improves(score: float, best: float | None, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    """Whether ``score`` beats ``best`` by more than ``min_delta`` (the first score always does)."""
    if best is None:
        return True
    return score - best > min_delta if higher_is_better else best - score > min_delta


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
    matmul_dtype: str = "float32",
    stream: Stream | None = None,
) -> FitResult:
    """Train ``objective`` for ``stage.epochs`` (or its step / wall-clock budget).

    ``batches_for_epoch(epoch)`` must be deterministic (the same list for the
    same epoch) so a resumed run sees the same data in the same order.
    ``prepare(batch)`` may add arrays to a batch just before the step (e.g.
    cached hidden states gathered by row). ``evaluate(model) -> (score,
    metrics)`` runs after every epoch; the best score's parameters are
    returned. Training stops when ``stage.patience`` evaluations in a row
    fail to beat the best score by more than ``stage.min_delta`` (plateau) or
    at the cap (``stage.epochs`` / ``max_steps`` / ``max_seconds``). Resumes
    from ``checkpoint_dir``. ``on_step(step)`` is called after each optimizer
    step with the steps done so far (a resumed run starts counting at its
    checkpoint's step), before any checkpoint of that step. The train steps' matmuls run in
    ``matmul_dtype`` (:mod:`alad_jax.models.precision`); ``evaluate`` sees the float32 model.

    A streamed stage passes ``stream`` (an iterator of batches with ``get_state``/``set_state``,
    :class:`alad_jax.data.stream.AlignmentStream`) instead of ``batches_for_epoch``: it
    evaluates every ``stage.eval_every`` steps (an "epoch" of the history), saves the stream's
    position with each checkpoint, and stops at ``max_steps``, ``max_seconds``, the plateau or the
    stream's end ("cap").
    """
    graphdef, trainable, frozen = nnx.split(objective.model, objective.trainable, ...)
    if stream is None:
        steps_per_epoch = len(batches_for_epoch(0))
        total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
    else:
        steps_per_epoch, total_steps = stage.eval_every or STREAM_EVAL_EVERY, STREAM_STEPS
    if stage.max_steps:
        total_steps = min(total_steps, stage.max_steps)
    optimizer = make_optimizer(stage, optim, total_steps)

    state = create_train_state(graphdef, trainable, frozen, objective.loss_fn, optimizer, mesh,
                               matmul_dtype=matmul_dtype)
    best = jax.tree_util.tree_map(jnp.copy, state.trainable)

    meta = {"step": 0, "best_score": None, "best_epoch": 0, "evals_since_best": 0, "history": [], "seconds": 0.0,
            "tokens": 0, "positions": 0, "done": False, "stopped": "", "loss_sum": 0.0, "loss_count": 0}
    checkpoints = Checkpoints(checkpoint_dir)
    restored = checkpoints.restore({"trainable": state.trainable, "opt_state": state.opt_state, "best": best})
    if restored is not None:
        parts, saved_meta = restored
        state.trainable, state.opt_state, best = parts["trainable"], parts["opt_state"], parts["best"]
        meta.update(saved_meta)
        if "positions" not in saved_meta:  # a checkpoint from before positions were counted: padding unknown
            meta["positions"] = None
        if stream is not None:
            stream.set_state(saved_meta["stream"])
    base_key = jax.random.key(seed)
    step = last_saved = meta["step"]
    resumed_seconds = meta["seconds"]
    started = time.perf_counter() - resumed_seconds
    pending_losses: list[jax.Array] = []  # device scalars, fetched only when needed (no per-step sync)

    def flush_losses() -> None:
        meta["loss_sum"] += float(sum(float(x) for x in pending_losses))
        meta["loss_count"] += len(pending_losses)
        pending_losses.clear()

    def save() -> None:
        nonlocal last_saved
        flush_losses()
        meta.update(step=step, seconds=time.perf_counter() - started)
        if stream is not None:
            meta["stream"] = stream.get_state()
        if step in checkpoints.manager.all_steps():  # a stream that ended right after a checkpoint: its final one
            checkpoints.manager.delete(step)
        checkpoints.save(step, {"trainable": state.trainable, "opt_state": state.opt_state, "best": best}, meta)
        last_saved = step

    bar = tqdm(total=None if total_steps == STREAM_STEPS else total_steps, initial=step, desc=name, unit="step",
               mininterval=2.0, dynamic_ncols=True, disable=not distributed.is_primary())
    out_of_time = stage.max_seconds and meta["seconds"] >= stage.max_seconds
    window_start, window_tokens = time.perf_counter(), meta["tokens"]
    while not meta["done"] and not out_of_time and step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        ended, round_start = stream is not None, step  # a streamed stage: unless the loop breaks, the stream ended
        for batch in batches_for_epoch(epoch)[offset:] if stream is None else stream:
            key = jax.random.fold_in(base_key, step)
            device_batch = sharding.shard_batch(prepare(batch) if prepare else batch, mesh)
            metrics = state.step(device_batch, key)
            meta["tokens"] += int(batch["attention_mask"].sum())
            if meta["positions"] is not None:
                meta["positions"] += int(batch["attention_mask"].size)
            step += 1
            if on_step:
                on_step(step)
            pending_losses.append(metrics["loss"])
            bar.update(1)
            if log_scalars and step % LOG_EVERY == 0:
                now = time.perf_counter()
                scalars = {k: float(v) for k, v in metrics.items()}
                scalars.update(distributed.throughput_metrics(meta["tokens"] - window_tokens, now - window_start))
                scalars.update(distributed.device_memory_stats() or {})
                log_scalars(name, step, scalars)
                window_start, window_tokens = now, meta["tokens"]
            out_of_time = bool(stage.max_seconds) and time.perf_counter() - started >= stage.max_seconds
            if out_of_time or step >= total_steps or step % steps_per_epoch == 0:
                ended = False
                break
            if step - last_saved >= checkpoint_every:
                save()
        if ended and step == round_start:  # the stream ended at the last evaluation: nothing new to evaluate
            meta["stopped"], meta["done"] = "cap", True
            save()
            break
        # End of an epoch (or of the budget): validate, keep the best.
        flush_losses()
        score, eval_metrics = evaluate(state.model())
        if improves(float(score), meta["best_score"], higher_is_better, stage.min_delta):
            meta["best_score"], meta["best_epoch"], meta["evals_since_best"] = float(score), epoch + 1, 0
            best = jax.tree_util.tree_map(jnp.copy, state.trainable)
        else:
            meta["evals_since_best"] += 1
        train_loss = meta["loss_sum"] / meta["loss_count"] if meta["loss_count"] else float("nan")
        meta["loss_sum"], meta["loss_count"] = 0.0, 0
        record = {"epoch": epoch + 1, "dev": float(score), "step": step, "train_loss": train_loss, **eval_metrics}
        meta["history"].append(record)
        if log_scalars:
            log_scalars(name, step, {f"eval/{k}": v for k, v in record.items() if isinstance(v, (int, float))})
        bar.set_postfix(loss=f"{train_loss:.4f}", dev=f"{score:.4f}")
        if stage.patience and meta["evals_since_best"] >= stage.patience:
            meta["stopped"] = "plateau"
        elif step >= total_steps or ended:
            meta["stopped"] = "cap"
        elif out_of_time:
            meta["stopped"] = "time"
        meta["done"] = bool(meta["stopped"])
        # Checkpoints cost seconds each: write one per `checkpoint_every` steps and at the end.
        if meta["done"] or step - last_saved >= checkpoint_every:
            save()
    bar.close()
    checkpoints.close()
    seconds = meta["seconds"] if meta["done"] else time.perf_counter() - started
    # Each process counted the tokens and positions of its own rows: their sums are the global batches'.
    tokens = distributed.sum_over_processes(meta["tokens"])
    positions = int(distributed.sum_over_processes(meta["positions"] or 0))
    return FitResult(
        model=state.model(best),
        best_score=float(meta["best_score"]) if meta["best_score"] is not None else float("nan"),
        history=list(meta["history"]),
        epochs_run=len(meta["history"]),
        best_epoch=int(meta["best_epoch"]),
        stopped=meta["stopped"],
        steps=step,
        seconds=float(seconds),
        trainable_params=count_params(state.trainable),
        tokens_per_s=tokens / max(seconds, 1e-9),
        padding=1.0 - tokens / positions if positions else None,
        positions=positions,
        resumed_seconds=float(resumed_seconds),
    )
