"""Worker: train the tiny task model with the real loop (`alad_train.loop.fit`), optionally SIGKILLing itself.

    python tests/helpers/fit_worker.py CHECKPOINT_DIR CHECKPOINT_EVERY KILL_AT_STEP

With KILL_AT_STEP > 0 the process sends itself SIGKILL as soon as that step's
update is computed (before it could be checkpointed): no cleanup, no flush,
like a lost machine. The test imports :func:`run` to train the same model in
process, uninterrupted or resuming.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import tiny_task_model as tiny
from alad_jax import sharding
from alad_train.config import OptimConfig, StageConfig
from alad_train.loop import FitResult, Objective, fit

STEPS_PER_EPOCH, EPOCHS = 5, 3
# Linear decay: the step count inside the optimizer state sets every step's learning rate,
# so a resume that lost (or reset) the optimizer state ends with other parameters.
STAGE = StageConfig(epochs=EPOCHS, lr=3e-3, weight_decay=0.01, batch_size=tiny.ROWS, schedule="linear")
HELD_OUT = tiny.make_batch(10_000)


def batches_for_epoch(epoch: int) -> list[dict[str, np.ndarray]]:
    return [tiny.make_batch(epoch * STEPS_PER_EPOCH + i) for i in range(STEPS_PER_EPOCH)]


@functools.partial(jax.jit, static_argnums=0)
def _held_out_loss(graphdef, state):
    return tiny.loss_fn(nnx.merge(graphdef, state), HELD_OUT, jax.random.key(0))


def run(checkpoint_dir: Path, checkpoint_every: int, on_step=None) -> tuple[FitResult, dict[str, np.ndarray]]:
    """fit() on the tiny model; its result and the parameters the last evaluation saw (the final ones)."""
    graphdef, trainable, frozen, _ = tiny.init()
    last_evaluated: dict[str, np.ndarray] = {}

    def evaluate(model) -> tuple[float, dict]:
        """Loss on a batch no step trains on (lower is better); the key fixes the head's dropout mask."""
        last_evaluated.clear()
        last_evaluated.update(tiny.flat_numpy(nnx.state(model, tiny.TRAINABLE)))
        loss = float(_held_out_loss(*nnx.split(model)))
        return loss, {"held_out_loss": loss}

    result = fit(
        Objective(nnx.merge(graphdef, trainable, frozen), tiny.TRAINABLE,
                  lambda m, batch, key: (tiny.loss_fn(m, batch, key), {})),
        name="tiny", stage=STAGE, optim=OptimConfig(), batches_for_epoch=batches_for_epoch, evaluate=evaluate,
        higher_is_better=False, checkpoint_dir=Path(checkpoint_dir), seed=0,
        mesh=sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1]),
        checkpoint_every=checkpoint_every, on_step=on_step,
    )
    return result, last_evaluated


def main() -> None:
    directory, every, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run(Path(directory), every, on_step)


if __name__ == "__main__":
    main()
