"""The one checkpoint format: named state pytrees through orbax, restorable onto any mesh.

A checkpoint holds named parts (``{"trainable": nnx.State, "opt_state": ..., "best": ...}``)
plus a JSON ``meta`` dict. Every array is stored under its pytree path
(``trainable/encoder/layers/0/attention/query/kernel``), so a restore matches
tensors by name: a change of tree order can never swap two same-shaped
tensors (query and key kernels), and a renamed or missing tensor is an error
naming it. A restore places each array on the sharding of the matching leaf
of ``like``, so a checkpoint written on one mesh reads onto another (or onto
one device). Every process calls :meth:`Checkpoints.save` and writes the
shards it holds (orbax's multi-process save).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alad_jax.errors import AladError

PyTree = Any


def _key_name(key) -> str:
    """One path element of a pytree key path as plain text (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def named(parts: Mapping[str, PyTree]) -> dict[str, Any]:
    """``{"trainable": tree, ...}`` -> one flat dict keyed by each leaf's ``part/path/to/leaf``."""
    out = {}
    for part, tree in parts.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out["/".join([part, *(_key_name(k) for k in path)])] = leaf
    return out


def abstract_on(tree: PyTree, shardings: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves of ``tree``'s shapes carrying ``shardings``: a restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


class Checkpoints:
    """Numbered checkpoints of named parts in ``directory`` (the newest ``max_to_keep`` are kept)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 1):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, parts: Mapping[str, PyTree], meta: dict | None = None) -> None:
        """Writes ``parts`` and ``meta`` as checkpoint ``step`` and waits until it is complete."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(named(parts)), meta=ocp.args.JsonSave(meta or {})),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, like: Mapping[str, PyTree], step: int | None = None) -> tuple[dict[str, PyTree], dict] | None:
        """(parts shaped and sharded like ``like``, meta) of ``step`` (default: the latest); None if none.

        ``like``'s leaves are arrays (their sharding is used) or ``jax.ShapeDtypeStruct`` with a sharding.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        flat_like = named(like)
        abstract = {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                    for name, x in flat_like.items()}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
            flat = {name: restored.state[name] for name in flat_like}
        except (KeyError, ValueError) as e:
            raise AladError(
                f"checkpoint {self.manager.directory / str(step)} does not match this state ({e}); "
                f"delete that directory to start over"
            ) from None
        parts = {}
        for part, tree in like.items():
            leaves = [flat[name] for name in named({part: tree})]
            parts[part] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)
        return parts, restored.meta

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
