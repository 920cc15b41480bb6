"""Alignment losses and the token-cosine metric, over non-padding tokens.

All functions take ``pred`` and ``target`` of shape ``[batch, seq, dim]`` and a
``mask`` of shape ``[batch, seq]`` (nonzero = real token, special tokens
included; 0 = padding), compute in float32, and ignore whatever values sit at
padded positions (NaN included). With no real token they return 0, not NaN.

Scale of :func:`align_mse`: the reference's, a per-token squared distance
``sum_{b,t,d} mask (pred - target)^2 / sum_{b,t} mask``: the denominator
counts tokens, not tokens x dims, so it is ``dim`` times a per-element mean.
Learning rates in the configs are tuned for this scale.

Word level (:func:`word_align_mse`, :func:`word_cosine`), for a teacher whose
tokenizer cuts words into other pieces than the student's: the adapter still
runs per student token, then each word's adapter outputs are averaged over the
student's sub-words and compared with the teacher's states averaged over the
teacher's sub-words. Words are given per token as ``word_ids [batch, seq]``
(the index of the token's word in its sentence, -1 for special and padding
tokens), one array per side, each on its own sequence length. The scale is the
per-token one above with words in place of tokens: squared distance summed
over dims, divided by the number of words. When every word is one token on
both sides this is exactly :func:`align_mse` over the non-special tokens.
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


def align_sq_sum(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed per-token squared distance and the token count, to accumulate over batches.

    Args: pred, target ``[batch, seq, dim]``; mask ``[batch, seq]``.
    Returns: ``(sum_{b,t,d} mask (pred-target)^2, sum_{b,t} mask)``, float32 scalars; the
    reference's MSE over a data set is ``sum(sq_sum) / sum(n_tokens)``.
    """
    keep = _check(pred, target, mask)
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    # where, not a product with the mask: padded positions may hold NaN or inf.
    sq_dist = jnp.sum(jnp.where(keep[..., None], diff, 0.0) ** 2, axis=-1)  # [batch, seq]
    return jnp.sum(sq_dist), jnp.sum(keep, dtype=jnp.float32)


def align_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token squared distance averaged over real tokens (the reference's MSE).

    Args: pred, target ``[batch, seq, dim]``; mask ``[batch, seq]``.
    Returns: float32 scalar ``sum_{b,t,d} mask (pred-target)^2 / sum_{b,t} mask``.
    """
    sq_sum, n_tokens = align_sq_sum(pred, target, mask)
    return sq_sum / jnp.maximum(n_tokens, 1.0)


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


def pool_words(hidden: jax.Array, word_ids: jax.Array, num_words: int) -> tuple[jax.Array, jax.Array]:
    """Mean token state of each word.

    Args:
      hidden: ``[batch, seq, dim]``.
      word_ids: int ``[batch, seq]``, the token's word index in ``[0, num_words)``;
        -1 for tokens of no word (special tokens, padding), whose values are ignored.
      num_words: static; the number of word slots per row (words at or beyond it are left out).

    Returns:
      ``(means, counts)``: float32 ``[batch, num_words, dim]`` (0 for a word
      without tokens) and float32 ``[batch, num_words]`` tokens per word.
    """
    chex.assert_rank(hidden, 3)
    chex.assert_shape(word_ids, hidden.shape[:2])
    membership = (word_ids[..., None] == jnp.arange(num_words)).astype(jnp.float32)  # [batch, seq, words]
    # Zero what belongs to no word first: 0 * NaN would still be NaN in the sum.
    hidden = jnp.where((word_ids >= 0)[..., None], hidden.astype(jnp.float32), 0.0)
    # HIGHEST: a one-hot matmul must not round the states to bfloat16 on TPU.
    sums = jnp.einsum("bsw,bsd->bwd", membership, hidden, precision=jax.lax.Precision.HIGHEST)
    counts = jnp.sum(membership, axis=1)
    return sums / jnp.maximum(counts, 1.0)[..., None], counts


def _pool_pair(pred, target, pred_word_ids, target_word_ids, num_words):
    """Word means of both sides and the words both have (a word truncated away on one side is skipped)."""
    chex.assert_rank([pred, target], 3)
    chex.assert_equal(pred.shape[0], target.shape[0])
    chex.assert_equal(pred.shape[-1], target.shape[-1])
    pred_words, pred_counts = pool_words(pred, pred_word_ids, num_words)
    target_words, target_counts = pool_words(target, target_word_ids, num_words)
    return pred_words, target_words, (pred_counts > 0) & (target_counts > 0)


def word_align_mse(
    pred: jax.Array, target: jax.Array, pred_word_ids: jax.Array, target_word_ids: jax.Array, num_words: int
) -> jax.Array:
    """Per-word squared distance between word-mean adapter outputs and word-mean teacher states.

    Args:
      pred: ``[batch, seq_student, dim]``, the adapter's outputs on the student's tokens.
      target: ``[batch, seq_teacher, dim]``, the teacher's states on its own tokens.
      pred_word_ids: int ``[batch, seq_student]``; target_word_ids: int
        ``[batch, seq_teacher]``; word index per token, -1 for none (see :func:`pool_words`).
      num_words: static number of word slots per row.

    Returns:
      float32 scalar ``sum_{b,w} |mean_pred[b,w] - mean_target[b,w]|^2 / #words``
      over the words both sides have; 0 when there are none.
    """
    sq_sum, n_words = word_align_sq_sum(pred, target, pred_word_ids, target_word_ids, num_words)
    return sq_sum / jnp.maximum(n_words, 1.0)


def word_align_sq_sum(
    pred: jax.Array, target: jax.Array, pred_word_ids: jax.Array, target_word_ids: jax.Array, num_words: int
) -> tuple[jax.Array, jax.Array]:
    """Summed per-word squared distance and the word count (arguments as :func:`word_align_mse`)."""
    pred_words, target_words, both = _pool_pair(pred, target, pred_word_ids, target_word_ids, num_words)
    return align_sq_sum(pred_words, target_words, both)


def word_cosine_sum(
    pred: jax.Array, target: jax.Array, pred_word_ids: jax.Array, target_word_ids: jax.Array, num_words: int
) -> tuple[jax.Array, jax.Array]:
    """Sum of per-word cosines of the word means and the word count (arguments as :func:`word_align_mse`)."""
    pred_words, target_words, both = _pool_pair(pred, target, pred_word_ids, target_word_ids, num_words)
    return token_cosine_sum(pred_words, target_words, both)


def word_cosine(
    pred: jax.Array, target: jax.Array, pred_word_ids: jax.Array, target_word_ids: jax.Array, num_words: int
) -> jax.Array:
    """Mean cosine similarity of the word means over the words both sides have (float32 scalar, 0 if none)."""
    cosine_sum, n_words = word_cosine_sum(pred, target, pred_word_ids, target_word_ids, num_words)
    return cosine_sum / jnp.maximum(n_words, 1.0)
