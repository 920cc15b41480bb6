"""Dropout whose masks cost a quarter of the random bits: four 16-bit draws per Threefry evaluation.

``nnx.Dropout`` draws a float32 uniform per element: one Threefry-2x32
evaluation per element, which returns 64 random bits of which jax keeps 32 and
the mask uses one comparison. In a MiniLM train step on the CPU those
evaluations were about a tenth of the step (``benchmarks/profile_steps.py``;
docs/speed.md). :class:`Dropout` takes the same decisions from 16 bits per
element instead: one evaluation gives four. The keep test is ``bits >= d`` with
``d = round(rate * 2**16)``, so the rate is ``rate`` rounded to a multiple of
2^-16 (0.1 -> 0.1000061), and kept values are scaled by ``1 / (1 - d / 2**16)``,
so the expected output is the input, as ``nnx.Dropout`` keeps it.

The counter of each group of four elements is its index in the whole array (row
major), as jax's own sharding-invariant ("partitionable") Threefry does: a row's
mask depends on the key and the row's place in the global batch, not on how
many devices or processes hold the batch.

Where this cannot apply (a last axis not a multiple of 4, ``broadcast_dims``,
a key that is not Threefry's, more than 2^32 groups) the draw is
``nnx.Dropout``'s own. ``Dropout`` is an ``nnx.Dropout``, so code that finds
dropout modules by type (the ONNX export removes them) finds these.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.extend.random import threefry2x32_p

_LEVELS = 1 << 16  # the resolution of one 16-bit draw
_DRAWS = 4  # 16-bit draws per Threefry-2x32 evaluation (two 32-bit words)


def drop_threshold(rate: float) -> int:
    """``d``: an element is dropped when its 16-bit draw is below ``d`` (probability ``d / 2**16``)."""
    return round(rate * _LEVELS)


def _element_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 array of ``shape``: each element's row-major index."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return index


def draws16(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 array of ``shape`` (last axis a multiple of 4) holding independent uniform 16-bit values.

    The last axis is cut into four quarters of ``n / 4``; position ``c`` of quarter ``j`` holds draw ``j`` of
    group ``(..., c)``, and a group is one Threefry-2x32 evaluation of the counter ``(0, its row-major index
    among the groups)``.
    """
    groups = shape[:-1] + (shape[-1] // _DRAWS,)
    k1, k2 = jax.random.key_data(key)
    high, low = threefry2x32_p.bind(k1, k2, jnp.zeros(groups, jnp.uint32), _element_index(groups))
    mask16 = jnp.uint32(_LEVELS - 1)
    return jnp.concatenate([high >> 16, high & mask16, low >> 16, low & mask16], axis=-1)


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` (same constructor, same call) with four 16-bit draws per Threefry evaluation."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        key = rngs
        if deterministic is None:  # as nnx.Dropout: the call's flag, else the constructor's
            deterministic = self.deterministic
        if (deterministic is not False or self.rate in (0.0, 1.0) or self.broadcast_dims
                or not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                or str(jax.random.key_impl(key)) != "threefry2x32"
                or not inputs.ndim or inputs.shape[-1] % _DRAWS
                or math.prod(inputs.shape) // _DRAWS >= 2 ** 32):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        threshold = drop_threshold(self.rate)
        keep = draws16(key, inputs.shape) >= jnp.uint32(threshold)
        return lax.select(keep, inputs / (1.0 - threshold / _LEVELS), jnp.zeros_like(inputs))
