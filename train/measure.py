"""What a run measures besides its dev/test scores: latency of every row's model, and cosine to the teacher."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from alad_jax.cache import HiddenCache
from alad_jax.data import batching
from alad_jax.models import task_model
from alad_jax.models.task_model import TaskModel
from alad_train import models
from alad_train.timing import interleaved, percentiles


def latency_batch(batch: dict, shape: tuple[int, int], *, qa: bool) -> dict:
    """``batch``'s 2-d arrays zero-padded (or cut) to ``shape`` = (rows, max_length): one fixed input for every row."""
    out = {key: batching.pad_rows(value[: shape[0]], shape[1], num_rows=shape[0])
           for key, value in batch.items() if value.ndim == 2}
    if qa:
        out["feature_index"] = np.arange(shape[0], dtype=np.int32)
    return out


def blocking(fn, *args) -> Callable[[], None]:
    """A call of ``fn(*args)`` that waits for its device arrays and returns nothing (what
    :func:`alad_train.timing.interleaved` times)."""

    def call() -> None:
        jax.block_until_ready(fn(*args))

    return call


def interleaved_latency(models: dict[str, TaskModel], batches: dict[str, dict], *, runs: int, qa: bool) -> dict:
    """p50 / p95 ms of one jitted forward of each model on its batch (``batches[name]``, all of one shape).

    After a warm-up call each, the models take turns ``runs`` times, so a slow
    minute on a shared machine hits every row alike.
    """
    predict = task_model.predict_spans if qa else task_model.predict_tags
    split = {}
    for name, model in models.items():
        split[name] = nnx.split(model)
        jax.block_until_ready(predict(*split[name], batches[name]))
    times = interleaved({name: blocking(predict, *split[name], batches[name]) for name in models}, runs)
    ms = {name: percentiles(t) for name, t in times.items()}
    return {"p50_ms": {n: p["p50"] for n, p in ms.items()}, "p95_ms": {n: p["p95"] for n, p in ms.items()},
            "runs": runs, "batch": list(next(iter(batches.values()))["input_ids"].shape)}


def token_cosine_to_teacher(model: TaskModel, batches: list[dict], cache: HiddenCache, prepare=None,
                            with_words=None) -> float:
    """Mean cosine between ``model``'s AlAd output and the cached teacher states over ``batches``.

    ``prepare(batch)`` may add a frozen student's cached output (then only AlAd runs); ``with_words(batch)``
    adds word ids when the teacher tokenizes differently (then the cosine is per word).
    """
    graphdef, state = nnx.split(model)
    total = count = 0.0
    for batch in batches:
        pred = task_model.hidden_states(graphdef, state, prepare(batch) if prepare else batch)
        target = cache.gather(batch)["teacher_hidden"].astype(np.float32)
        _, s, n = models.alignment_sums(pred, target, with_words(batch) if with_words else batch)
        total, count = total + float(s), count + float(n)
    return round(total / max(count, 1), 4)
