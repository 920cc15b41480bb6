"""The one train-state factory: split a model by what trains, place it on the mesh, jit its step.

``fit`` (every stage of ``alad run``), ``alad bench`` and the sharding tests
build their training state here, so the tests prove the code the runs use.
The step is pure, ``(trainable, frozen, opt_state, batch, key) -> (trainable,
opt_state, metrics)``, jitted with the trainable state's and the optimizer
state's shardings as outputs and both buffers donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import nnx

from alad_jax import sharding

LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """The pure step: loss and gradient of the trainable state, then one optimizer update."""

    def step(trainable, frozen, opt_state, batch, key):
        def compute(trainable):
            model = nnx.merge(graphdef, trainable, frozen)
            return loss_fn(model, batch, key)

        (loss, metrics), grads = jax.value_and_grad(compute, has_aux=True)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step


@dataclasses.dataclass
class TrainState:
    """A model split into trainable and frozen state on a mesh, its optimizer state, and its jitted step."""

    graphdef: Any
    trainable: nnx.State
    frozen: nnx.State
    opt_state: optax.OptState
    shardings: sharding.TrainShardings
    step_fn: Callable  # jitted (trainable, frozen, opt_state, batch, key) -> (trainable, opt_state, metrics)

    def step(self, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """One optimizer step on ``batch`` (device arrays or numpy); returns the step's metrics."""
        self.trainable, self.opt_state, metrics = self.step_fn(self.trainable, self.frozen, self.opt_state, batch, key)
        return metrics

    def model(self, trainable: nnx.State | None = None) -> nnx.Module:
        """The module with ``trainable`` (default: the current trainable state) merged back in."""
        return nnx.merge(self.graphdef, self.trainable if trainable is None else trainable, self.frozen)


def create_train_state(graphdef, trainable: nnx.State, frozen: nnx.State, loss_fn: LossFn,
                       optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
    """Places ``trainable`` / ``frozen`` on ``mesh`` by the sharding rules, creates the optimizer state
    already sharded, and jits the step (see the module docstring)."""
    trainable, opt_state, shardings = sharding.init_train_state(trainable, optimizer, mesh)
    frozen = sharding.put(frozen, sharding.state_shardings(frozen, mesh))
    step_fn = jax.jit(
        make_train_step(graphdef, loss_fn, optimizer),
        out_shardings=(shardings.params, shardings.opt_state, shardings.replicated),
        donate_argnums=(0, 2),
    )
    return TrainState(graphdef, trainable, frozen, opt_state, shardings, step_fn)


def train_state_of(model: nnx.Module, trainable_filter, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh) -> TrainState:
    """:func:`create_train_state` of ``model`` split by ``trainable_filter`` (everything else frozen)."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
    return create_train_state(graphdef, trainable, frozen, loss_fn, optimizer, mesh)
