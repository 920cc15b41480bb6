"""The one parameter count, for modules, states and pytrees alike (results rows, reports, the loop)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def count_params(tree: Any) -> int:
    """Number of scalars: in a module's ``nnx.Param`` variables, or in every leaf of a state or pytree.

    ``None`` (a missing adapter) counts 0.
    """
    if tree is None:
        return 0
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))
