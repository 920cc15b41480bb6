"""Task heads on token states of any width: token tagging and extractive QA.

Both are dropout + one linear layer, initialised like transformers' task heads
(normal(0.02) kernel, zero bias). Paths: `classifier.{kernel,bias}` for tagging,
`qa_outputs.{kernel,bias}` for QA (column 0 = start, 1 = end, as in
transformers' *ForQuestionAnswering).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from alad_jax.errors import AladError
from alad_jax.models.dropout import Dropout


def _head_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, kernel_init=nnx.initializers.normal(stddev=0.02),
        bias_init=nnx.initializers.zeros, param_dtype=jnp.float32, rngs=rngs,
    )


def _check(hidden, in_features: int, deterministic: bool, rngs) -> None:
    chex.assert_rank(hidden, 3)
    chex.assert_axis_dimension(hidden, 2, in_features)
    if not deterministic and rngs is None:
        raise AladError("head called with deterministic=False but no PRNG key; pass rngs=key")


class TaggingHead(nnx.Module):
    """Per-token label logits: dropout, then linear in_features -> num_labels."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.in_features = in_features
        self.dropout = Dropout(dropout)
        self.classifier = _head_linear(in_features, num_labels, rngs)

    def __call__(self, hidden, *, deterministic: bool = True, rngs: jax.Array | None = None) -> jax.Array:
        """hidden: [batch, seq, in_features] -> logits float [batch, seq, num_labels]."""
        _check(hidden, self.in_features, deterministic, rngs)
        return self.classifier(self.dropout(hidden, deterministic=deterministic, rngs=rngs))


class QAHead(nnx.Module):
    """Extractive QA span logits: dropout, then linear in_features -> (start, end)."""

    def __init__(self, in_features: int, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.in_features = in_features
        self.dropout = Dropout(dropout)
        self.qa_outputs = _head_linear(in_features, 2, rngs)

    def __call__(
        self, hidden, *, deterministic: bool = True, rngs: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """hidden: [batch, seq, in_features] -> (start_logits, end_logits), each [batch, seq]."""
        _check(hidden, self.in_features, deterministic, rngs)
        logits = self.qa_outputs(self.dropout(hidden, deterministic=deterministic, rngs=rngs))
        return logits[..., 0], logits[..., 1]
