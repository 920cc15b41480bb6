"""The runs' own training state and step (:mod:`alad_train.state`), compiled ahead of time for timing."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from alad_jax import sharding
from alad_train import models
from alad_train.timing import one_per_shape
from alad_train.state import train_state_of


class Trainer:
    """The pipeline's training state and step, compiled ahead of time once per batch shape (compilation is
    never inside a timing)."""

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
        compile_s = sum(self.compile(prepare(b) if prepare else b) for b in one_per_shape(batches))
        base = jax.random.key(0)
        losses = []
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            metrics = self.step(prepare(batch) if prepare else batch, jax.random.fold_in(base, i))
            losses.append(metrics["loss"])
        jax.block_until_ready(self.state.trainable)
        seconds = time.perf_counter() - start
        return seconds, [float(x) for x in losses], compile_s


def own_copy(module: nnx.Module) -> nnx.Module:
    """``module`` with its own buffers: the step donates the trainable ones, and the encoders are shared."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


def first_window_adapter(cfg, teacher, student, seed: int) -> nnx.Module:
    """A new AlAd between ``student`` and ``teacher`` of the config's first window: the one every timed
    alignment step trains (it stands in for the stage-2 adapter)."""
    return models.new_adapter(cfg, student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0],
                              nnx.Rngs(seed))
