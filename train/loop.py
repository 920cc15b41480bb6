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
from alad_jax.errors import AladError
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
    stopped: str  # "plateau" (patience ran out), "cap" (max epochs or steps) or "time" (max_minutes)
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


@dataclasses.dataclass
class LoopState:
    """Where a fit stands, besides its arrays: each checkpoint's metadata (plain JSON)."""

    step: int = 0  # optimizer steps done
    best_score: float | None = None
    best_epoch: int = 0  # the evaluation whose parameters are kept as the best
    evals_since_best: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # one record per evaluation
    seconds: float = 0.0  # training time over every session, up to the last save
    tokens: int = 0  # real (unmasked) tokens this process trained on
    positions: int = 0  # positions (rows x length) this process's steps computed on
    loss_sum: float = 0.0  # train losses fetched since the last evaluation
    loss_count: int = 0
    stopped: str = ""  # why the fit ended ("plateau", "cap" or "time"); "" while it runs
    stream: dict | None = None  # a streamed stage's position at the last save

    @property
    def done(self) -> bool:
        return bool(self.stopped)

    def to_meta(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict, where: Path) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(meta) != names:
            raise AladError(
                f"{where}: checkpoint metadata keys {sorted(meta)} are not this version's {sorted(names)}; "
                f"delete {where} (or re-run with --restart) to train that stage again")
        return cls(**meta)

    def count(self, batch: Batch) -> None:
        """One optimizer step done on ``batch``."""
        self.tokens += int(batch["attention_mask"].sum())
        self.positions += int(batch["attention_mask"].size)
        self.step += 1

    def add_losses(self, losses: list[jax.Array]) -> None:
        """Fetch the device losses of the steps since the last call (one sync for many steps)."""
        self.loss_sum += float(sum(float(x) for x in losses))
        self.loss_count += len(losses)
        losses.clear()

    def record_evaluation(self, epoch: int, score: float, metrics: dict, higher_is_better: bool,
                          min_delta: float) -> bool:
        """Append the evaluation after ``epoch`` (0-based) to the history; whether it is the new best."""
        improved = improves(score, self.best_score, higher_is_better, min_delta)
        if improved:
            self.best_score, self.best_epoch, self.evals_since_best = score, epoch + 1, 0
        else:
            self.evals_since_best += 1
        train_loss = self.loss_sum / self.loss_count if self.loss_count else float("nan")
        self.loss_sum, self.loss_count = 0.0, 0
        self.history.append({"epoch": epoch + 1, "dev": score, "step": self.step, "train_loss": train_loss, **metrics})
        return improved


# Over 60 lines with its 20-line signature and docstring; the body is the loop itself, read top to bottom
# (restore, steps, end of epoch, stop), each part a short helper above.
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
    at the cap (``stage.epochs`` / ``max_steps`` / ``max_minutes``). Resumes
    from ``checkpoint_dir``. ``on_step(step)`` is called after each optimizer
    step with the steps done so far (a resumed run starts counting at its
    checkpoint's step), before any checkpoint of that step. The train steps' matmuls run in
    ``matmul_dtype`` (:mod:`alad_jax.models.precision`); ``evaluate`` sees the float32 model.

    A streamed stage passes ``stream`` (an iterator of batches with ``get_state``/``set_state``,
    :class:`alad_jax.data.stream.AlignmentStream`) instead of ``batches_for_epoch``: it
    evaluates every ``stage.eval_every`` steps (an "epoch" of the history), saves the stream's
    position with each checkpoint, and stops at ``max_steps``, ``max_minutes``, the plateau or the
    stream's end ("cap").
    """
    graphdef, trainable, frozen = nnx.split(objective.model, objective.trainable, ...)
    steps_per_epoch, total_steps = _budget(stage, batches_for_epoch, stream)
    state = create_train_state(graphdef, trainable, frozen, objective.loss_fn,
                               make_optimizer(stage, optim, total_steps), mesh, matmul_dtype=matmul_dtype)
    saver = _Saver(Checkpoints(checkpoint_dir), checkpoint_dir, state, stream)
    loop, best = saver.restore()
    resumed_seconds = loop.seconds
    started = time.perf_counter() - resumed_seconds
    base_key = jax.random.key(seed)
    losses: list[jax.Array] = []  # device scalars, fetched only at evaluations and saves (no per-step sync)
    bar = tqdm(total=None if total_steps == STREAM_STEPS else total_steps, initial=loop.step, desc=name,
               unit="step", mininterval=2.0, dynamic_ncols=True, disable=not distributed.is_primary())
    scalars = _ScalarLog(name, log_scalars, loop.tokens)
    budget = stage.max_minutes * 60
    out_of_time = bool(budget) and loop.seconds >= budget

    while not loop.done and not out_of_time and loop.step < total_steps:
        epoch, offset = divmod(loop.step, steps_per_epoch)
        first_step = loop.step
        stream_ended = stream is not None  # unless the epoch below breaks off, the stream ran out
        for batch in batches_for_epoch(epoch)[offset:] if stream is None else stream:
            key = jax.random.fold_in(base_key, loop.step)
            metrics = state.step(sharding.shard_batch(prepare(batch) if prepare else batch, mesh), key)
            loop.count(batch)
            if on_step:
                on_step(loop.step)
            losses.append(metrics["loss"])
            bar.update(1)
            scalars.step(loop, metrics)
            # Process 0's clock decides for all: processes that stopped at different steps would hang a collective.
            out_of_time = bool(budget) and distributed.agreed(time.perf_counter() - started >= budget)
            if out_of_time or loop.step >= total_steps or loop.step % steps_per_epoch == 0:
                stream_ended = False
                break
            if loop.step - saver.last_saved >= checkpoint_every:
                saver.save(loop, best, losses, started)
        if stream_ended and loop.step == first_step:  # the stream ended at the last evaluation: nothing new
            loop.stopped = "cap"
            saver.save(loop, best, losses, started)
            break

        # End of an epoch (or of the budget): validate, keep the best, decide whether to go on.
        loop.add_losses(losses)
        score, eval_metrics = evaluate(state.model())
        if loop.record_evaluation(epoch, float(score), eval_metrics, higher_is_better, stage.min_delta):
            best = jax.tree_util.tree_map(jnp.copy, state.trainable)
        scalars.evaluation(loop.step, loop.history[-1])
        bar.set_postfix(loss=f"{loop.history[-1]['train_loss']:.4f}", dev=f"{score:.4f}")
        loop.stopped = _stop_reason(loop, stage, total_steps, stream_ended, out_of_time)
        # Checkpoints cost seconds each: write one per `checkpoint_every` steps and at the end.
        if loop.done or loop.step - saver.last_saved >= checkpoint_every:
            saver.save(loop, best, losses, started)
    bar.close()
    saver.checkpoints.close()
    return _result(state, best, loop, started, resumed_seconds)


def _budget(stage: StageConfig, batches_for_epoch, stream: Stream | None) -> tuple[int, int]:
    """(steps between evaluations, steps in all) of a stage."""
    if stream is None:
        steps_per_epoch = len(batches_for_epoch(0))
        total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
    else:
        steps_per_epoch, total_steps = stage.eval_every or STREAM_EVAL_EVERY, STREAM_STEPS
    if stage.max_steps:
        total_steps = min(total_steps, stage.max_steps)
    return steps_per_epoch, total_steps


def _stop_reason(loop: LoopState, stage: StageConfig, total_steps: int, stream_ended: bool,
                 out_of_time: bool) -> str:
    """Why the fit stops after this evaluation, or "" to go on."""
    if stage.patience and loop.evals_since_best >= stage.patience:
        return "plateau"
    if loop.step >= total_steps or stream_ended:
        return "cap"
    return "time" if out_of_time else ""


class _Saver:
    """A fit's checkpoints: the trainable state, its optimizer state, the best parameters and the loop state."""

    def __init__(self, checkpoints: Checkpoints, directory: Path, state, stream: Stream | None):
        self.checkpoints, self.directory, self.state, self.stream = checkpoints, directory, state, stream
        self.last_saved = 0  # the step of the newest checkpoint

    def _parts(self, best) -> dict:
        return {"trainable": self.state.trainable, "opt_state": self.state.opt_state, "best": best}

    def restore(self) -> tuple[LoopState, Any]:
        """(loop state, best parameters) of the newest checkpoint, restored into the train state; fresh ones if none."""
        best = jax.tree_util.tree_map(jnp.copy, self.state.trainable)
        restored = self.checkpoints.restore(self._parts(best))
        if restored is None:
            return LoopState(), best
        parts, meta = restored
        self.state.trainable, self.state.opt_state = parts["trainable"], parts["opt_state"]
        loop = LoopState.from_meta(meta, self.directory)
        if self.stream is not None:
            self.stream.set_state(loop.stream)
        self.last_saved = loop.step
        return loop, parts["best"]

    def save(self, loop: LoopState, best, losses: list[jax.Array], started: float) -> None:
        loop.add_losses(losses)
        loop.seconds = time.perf_counter() - started
        if self.stream is not None:
            loop.stream = self.stream.get_state()
        if loop.step in self.checkpoints.manager.all_steps():  # a stream that ended right after a checkpoint
            self.checkpoints.manager.delete(loop.step)
        self.checkpoints.save(loop.step, self._parts(best), loop.to_meta())
        self.last_saved = loop.step


class _ScalarLog:
    """Scalars for ``log_scalars``: a step's metrics every LOG_EVERY steps, with throughput since the last log
    and device memory, and every evaluation's record."""

    def __init__(self, name: str, log_scalars: Callable[[str, int, dict], None] | None, tokens: int):
        self.name, self.log_scalars = name, log_scalars
        self.window_start, self.window_tokens = time.perf_counter(), tokens

    def step(self, loop: LoopState, metrics: dict) -> None:
        if not self.log_scalars or loop.step % LOG_EVERY:
            return
        now = time.perf_counter()
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars.update(distributed.throughput_metrics(loop.tokens - self.window_tokens, now - self.window_start))
        scalars.update(distributed.device_memory_stats() or {})
        self.log_scalars(self.name, loop.step, scalars)
        self.window_start, self.window_tokens = now, loop.tokens

    def evaluation(self, step: int, record: dict) -> None:
        if self.log_scalars:
            scalars = {f"eval/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
            self.log_scalars(self.name, step, scalars)


def _result(state, best, loop: LoopState, started: float, resumed_seconds: float) -> FitResult:
    seconds = loop.seconds if loop.done else time.perf_counter() - started
    # Each process counted the tokens and positions of its own rows: their sums are the global batches'.
    tokens = distributed.sum_over_processes(loop.tokens)
    positions = int(distributed.sum_over_processes(loop.positions))
    return FitResult(
        model=state.model(best),
        best_score=float(loop.best_score) if loop.best_score is not None else float("nan"),
        history=list(loop.history),
        epochs_run=len(loop.history),
        best_epoch=int(loop.best_epoch),
        stopped=loop.stopped,
        steps=loop.step,
        seconds=float(seconds),
        trainable_params=count_params(state.trainable),
        tokens_per_s=tokens / max(seconds, 1e-9),
        padding=1.0 - tokens / positions if positions else None,
        positions=positions,
        resumed_seconds=float(resumed_seconds),
    )
