"""Alignment losses and the token-cosine metric, over non-padding tokens.

All functions take ``pred`` and ``target`` of shape ``[batch, seq, dim]`` and a
``mask`` of shape ``[batch, seq]`` (nonzero = real token, special tokens
included; 0 = padding), compute in float32, and ignore whatever values sit at
padded positions (NaN included). With no real token they return 0, not NaN.

Scale of :func:`align_mse`: the reference's, a per-token squared distance
``sum_{b,t,d} mask (pred - target)^2 / sum_{b,t} mask``: the denominator
counts tokens, not tokens x dims, so it is ``dim`` times a per-element mean.
Learning rates in the configs are tuned for this scale.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# The eps of torch.nn.functional.cosine_similarity: each norm is clamped to it.
_COSINE_EPS = 1e-8


def _check(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Checks shapes; returns the mask as bool ``[batch, seq]``."""
    chex.assert_rank(pred, 3)
    chex.assert_equal_shape((pred, target))
    chex.assert_shape(mask, pred.shape[:2])
    return mask != 0


def align_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token squared distance averaged over real tokens (the reference's MSE).

    Args: pred, target ``[batch, seq, dim]``; mask ``[batch, seq]``.
    Returns: float32 scalar ``sum_{b,t,d} mask (pred-target)^2 / sum_{b,t} mask``.
    """
    keep = _check(pred, target, mask)
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    sq_dist = jnp.sum(jnp.where(keep[..., None], diff, 0.0) ** 2, axis=-1)  # [batch, seq]
    n_tokens = jnp.sum(keep, dtype=jnp.float32)
    return jnp.sum(sq_dist) / jnp.maximum(n_tokens, 1.0)


def _per_token_cosine(pred: jax.Array, target: jax.Array, keep: jax.Array) -> jax.Array:
    """``[batch, seq]`` cosines, 0 at padded positions."""
    pred = jnp.where(keep[..., None], pred.astype(jnp.float32), 0.0)
    target = jnp.where(keep[..., None], target.astype(jnp.float32), 0.0)
    # max(|x|, eps) written as sqrt(max(|x|^2, eps^2)): same value, finite gradient at 0.
    pred_norm = jnp.sqrt(jnp.maximum(jnp.sum(pred * pred, axis=-1), _COSINE_EPS**2))
    target_norm = jnp.sqrt(jnp.maximum(jnp.sum(target * target, axis=-1), _COSINE_EPS**2))
    return jnp.sum(pred * target, axis=-1) / (pred_norm * target_norm)


def token_cosine_sum(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of per-token cosines and the token count, to accumulate over batches.

    Args: pred, target ``[batch, seq, dim]``; mask ``[batch, seq]``.
    Returns: ``(cosine_sum, n_tokens)``, float32 scalars; the mean over a data
    set is ``sum(cosine_sum) / sum(n_tokens)``.
    """
    keep = _check(pred, target, mask)
    return jnp.sum(_per_token_cosine(pred, target, keep)), jnp.sum(keep, dtype=jnp.float32)


def token_cosine(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean token cosine similarity over real tokens (float32 scalar, 0 if none)."""
    cosine_sum, n_tokens = token_cosine_sum(pred, target, mask)
    return cosine_sum / jnp.maximum(n_tokens, 1.0)


def cosine_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - token_cosine``: an alternative alignment loss, in [0, 2]."""
    return 1.0 - token_cosine(pred, target, mask)
