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

from alad_jax import distributed, sharding
from alad_jax.config import OptimConfig, StageConfig
from alad_jax.errors import AladError

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
    history: list[dict]  # one record per evaluation: {"epoch", "dev", "step", "train_loss", ...}
    epochs_run: int
    best_epoch: int
    stopped: str  # "plateau" (patience ran out), "cap" (max epochs or steps) or "time" (max_seconds)
    steps: int
    seconds: float
    trainable_params: int
    tokens_per_s: float
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


def _key_name(key) -> str:
    """One path element of a pytree key path as plain text (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


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
    """Orbax checkpoints of named state ``{"trainable", "opt_state", "best"}`` plus JSON progress.

    Every array is stored under its pytree path (``trainable/encoder/layers/0/attention/query/kernel``),
    so a restore matches tensors by name: a change of tree order can never swap two
    same-shaped tensors, and a renamed or missing tensor is an error naming it.
    """

    PARTS = ("trainable", "opt_state", "best")

    def __init__(self, directory: Path):
        self.manager = ocp.CheckpointManager(
            directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    @classmethod
    def _named(cls, tree) -> dict[str, Any]:
        """``(trainable, opt_state, best)`` -> one flat dict keyed by each leaf's path."""
        out = {}
        for part, subtree in zip(cls.PARTS, tree):
            for path, leaf in jax.tree_util.tree_flatten_with_path(subtree)[0]:
                out["/".join([part, *(_key_name(k) for k in path)])] = leaf
        return out

    def save(self, step: int, tree, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(self._named(tree)), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, like) -> tuple[Any, dict] | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        named = self._named(like)
        abstract = {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                    for name, x in named.items()}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
            flat = [restored.state[name] for name in named]
        except (KeyError, ValueError) as e:
            raise AladError(
                f"checkpoint {self.manager.directory / str(step)} does not match this stage's state ({e}); "
                f"delete that directory to restart the stage"
            ) from None
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), flat), restored.meta

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
    returned. Training stops when ``stage.patience`` evaluations in a row
    fail to beat the best score by more than ``stage.min_delta`` (plateau) or
    at the cap (``stage.epochs`` / ``max_steps`` / ``max_seconds``). Resumes
    from ``checkpoint_dir``. ``on_step(step)`` is called after each optimizer
    step with the steps done so far (a resumed run starts counting at its
    checkpoint's step), before any checkpoint of that step.
    """
    graphdef, trainable, frozen = nnx.split(objective.model, objective.trainable, ...)
    steps_per_epoch = len(batches_for_epoch(0))
    total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
    if stage.max_steps:
        total_steps = min(total_steps, stage.max_steps)
    optimizer = make_optimizer(stage, optim, total_steps)

    trainable, opt_state, shardings = sharding.init_train_state(trainable, optimizer, mesh)
    frozen = sharding.put(frozen, sharding.state_shardings(frozen, mesh))
    step_fn = jax.jit(
        make_train_step(graphdef, objective.loss_fn, optimizer),
        out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
        donate_argnums=(0, 2),
    )
    best = jax.tree_util.tree_map(jnp.copy, trainable)

    meta = {"step": 0, "best_score": None, "best_epoch": 0, "evals_since_best": 0, "history": [], "seconds": 0.0,
            "tokens": 0, "done": False, "stopped": "", "loss_sum": 0.0, "loss_count": 0}
    checkpoints = _Checkpoints(checkpoint_dir)
    restored = checkpoints.restore((trainable, opt_state, best))
    if restored is not None:
        (trainable, opt_state, best), saved_meta = restored
        meta.update(saved_meta)
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
        if improves(float(score), meta["best_score"], higher_is_better, stage.min_delta):
            meta["best_score"], meta["best_epoch"], meta["evals_since_best"] = float(score), epoch + 1, 0
            best = jax.tree_util.tree_map(jnp.copy, trainable)
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
        elif step >= total_steps:
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
    return FitResult(
        model=nnx.merge(graphdef, best, frozen),
        best_score=float(meta["best_score"]) if meta["best_score"] is not None else float("nan"),
        history=list(meta["history"]),
        epochs_run=len(meta["history"]),
        best_epoch=int(meta["best_epoch"]),
        stopped=meta["stopped"],
        steps=step,
        seconds=float(seconds),
        trainable_params=count_params(trainable),
        # Each process counted the tokens of its own rows: their sum is the global batches'.
        tokens_per_s=distributed.sum_over_processes(meta["tokens"]) / max(seconds, 1e-9),
        resumed_seconds=float(resumed_seconds),
    )
