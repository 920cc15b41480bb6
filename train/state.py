"""The one train-state factory: split a model by what trains, place it on the mesh, jit its step.

``fit`` (every stage of ``alad run``), ``alad bench`` and the sharding tests
build their training state here, so the tests prove the code the runs use.
The step is pure, ``(trainable, frozen, opt_state, batch, key) -> (trainable,
opt_state, metrics)``, jitted with the trainable state's and the optimizer
state's shardings as outputs and both buffers donated.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax
from flax import nnx

from alad_jax import sharding
from alad_jax.models import precision

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


class _FlatTree:
    """A train-state part held as a flat list of arrays (``obj._<name>``), read and written as a tree.

    Writing a tree of another structure than the first one written is an error: the
    jitted step was built for that structure.
    """

    def __set_name__(self, owner, name: str):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return jax.tree_util.tree_unflatten(obj.__dict__[f"_{self.name}_def"], obj.__dict__[f"_{self.name}"])

    def __set__(self, obj, tree) -> None:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if obj.__dict__.setdefault(f"_{self.name}_def", treedef) != treedef:
            raise ValueError(f"train state: a {self.name} tree of another structure than the step was built for")
        obj.__dict__[f"_{self.name}"] = leaves


class TrainState:
    """A model split into trainable and frozen state on a mesh, its optimizer state, and its jitted step.

    ``trainable``, ``frozen`` and ``opt_state`` read and write as trees, but are held as flat
    lists of arrays: :meth:`step` calls a jitted twin of ``step_fn`` that takes and returns
    those lists, so a step's dispatch does not flatten and rebuild hundreds of nnx/optax
    tree nodes in Python (a visible share of a small step; benchmarks/dispatch.py). Both
    trace the same function; ``tests/test_state.py`` holds the flat step to the tree step bit
    for bit. ``step_fn`` (the tree form) stays for ahead-of-time lowering of trees (profiles).
    """

    trainable = _FlatTree()
    frozen = _FlatTree()
    opt_state = _FlatTree()

    def __init__(self, graphdef, trainable: nnx.State, frozen: nnx.State, opt_state: optax.OptState,
                 shardings: sharding.TrainShardings, step_fn: Callable, flat_step_fn: Callable, step_graphdef=None):
        self.graphdef, self.shardings, self.step_fn, self._flat_step_fn = graphdef, shardings, step_fn, flat_step_fn
        # The graph the step runs (bfloat16 matmuls or not); ``graphdef`` is the model's own, float32.
        self.step_graphdef = graphdef if step_graphdef is None else step_graphdef
        self.trainable, self.frozen, self.opt_state = trainable, frozen, opt_state

    def step(self, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """One optimizer step on ``batch`` (device arrays or numpy); returns the step's metrics."""
        self._trainable, self._opt_state, metrics = self._flat_step_fn(
            self._trainable, self._frozen, self._opt_state, batch, key)
        return metrics

    def lower(self, batch: dict, key: jax.Array):
        """The step lowered for ``batch``'s shapes, ahead of time: ``.compile()`` it, run it with :meth:`run`."""
        return self._flat_step_fn.lower(self._trainable, self._frozen, self._opt_state, batch, key)

    def run(self, compiled, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        """:meth:`step` through an executable from :meth:`lower` (same shapes, same results)."""
        self._trainable, self._opt_state, metrics = compiled(self._trainable, self._frozen, self._opt_state, batch, key)
        return metrics

    def model(self, trainable: nnx.State | None = None) -> nnx.Module:
        """The module with ``trainable`` (default: the current trainable state) merged back in."""
        return nnx.merge(self.graphdef, self.trainable if trainable is None else trainable, self.frozen)


def create_train_state(graphdef, trainable: nnx.State, frozen: nnx.State, loss_fn: LossFn,
                       optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh, *,
                       matmul_dtype: str = "float32") -> TrainState:
    """Places ``trainable`` / ``frozen`` on ``mesh`` by the sharding rules, creates the optimizer state
    already sharded, and jits the step (see the module docstring). The step's matmuls run in
    ``matmul_dtype`` (:mod:`alad_jax.models.precision`); :meth:`TrainState.model` stays float32."""
    step_graphdef = precision.step_graphdef(graphdef, trainable, frozen, matmul_dtype=matmul_dtype,
                                            adapter_impl=precision.step_adapter_impl(matmul_dtype))
    trainable, opt_state, shardings = sharding.init_train_state(trainable, optimizer, mesh)
    frozen = sharding.put(frozen, sharding.state_shardings(frozen, mesh))
    step = make_train_step(step_graphdef, loss_fn, optimizer)
    out_shardings = (shardings.params, shardings.opt_state, shardings.replicated)
    step_fn = jax.jit(step, out_shardings=out_shardings, donate_argnums=(0, 2))
    treedefs = tuple(jax.tree_util.tree_structure(t) for t in (trainable, frozen, opt_state))
    unflatten = jax.tree_util.tree_unflatten

    def flat_step(trainable, frozen, opt_state, batch, key):
        trainable, opt_state, metrics = step(unflatten(treedefs[0], trainable), unflatten(treedefs[1], frozen),
                                             unflatten(treedefs[2], opt_state), batch, key)
        return jax.tree_util.tree_leaves(trainable), jax.tree_util.tree_leaves(opt_state), metrics

    flat_step_fn = jax.jit(
        flat_step,
        out_shardings=(treedefs[0].flatten_up_to(shardings.params), treedefs[2].flatten_up_to(shardings.opt_state),
                       shardings.replicated),
        donate_argnums=(0, 2),
    )
    return TrainState(graphdef, trainable, frozen, opt_state, shardings, step_fn, flat_step_fn, step_graphdef)


def train_state_of(model: nnx.Module, trainable_filter, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh, *, matmul_dtype: str = "float32") -> TrainState:
    """:func:`create_train_state` of ``model`` split by ``trainable_filter`` (everything else frozen)."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
    return create_train_state(graphdef, trainable, frozen, loss_fn, optimizer, mesh, matmul_dtype=matmul_dtype)
