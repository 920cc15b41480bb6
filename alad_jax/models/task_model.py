"""The model every task row is: encoder -> optional AlAd -> task head, and its jitted forwards.

The teacher and the student baselines have no adapter; the ``alad_*`` rows
have one. Training decides which parts move (a parameter filter); this module
fixes which parts apply dropout: a frozen encoder runs deterministically.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from alad_jax.adapter import AlignmentAdapter


class TaskModel(nnx.Module):
    """encoder -> optional AlAd -> task head (tagging logits or QA start/end logits)."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module, adapter: AlignmentAdapter | None = None, *,
                 train_encoder: bool = True):
        self.encoder = encoder
        self.adapter = adapter
        self.head = head
        self.train_encoder = train_encoder

    def hidden(self, batch: dict, *, deterministic: bool = True, key: jax.Array | None = None) -> jax.Array:
        """Token representations fed to the head: [batch, seq, Dt] (AlAd output) or the encoder's.

        A frozen encoder's output may come precomputed in ``batch["encoder_hidden"]``
        ([batch, seq, D], from the feature cache); it is then not run. Packed batches
        (``segment_ids``, ``position_ids``: :func:`alad_jax.data.batching.make_packed_batches`)
        compute every packed sequence as if it were alone; their gaps keep the AlAd's
        windows inside each sequence.
        """
        if "encoder_hidden" in batch and not self.train_encoder:
            out = batch["encoder_hidden"].astype(jnp.float32)
        else:
            enc_key = None if key is None else jax.random.fold_in(key, 0)
            out = self.encoder(
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                deterministic=deterministic or not self.train_encoder, rngs=enc_key,
                segment_ids=batch.get("segment_ids"), position_ids=batch.get("position_ids"),
            ).last_hidden_state
        if self.adapter is not None:
            out = self.adapter(out, batch["attention_mask"])
        return out

    def __call__(self, batch: dict, *, deterministic: bool = True, key: jax.Array | None = None):
        hidden = self.hidden(batch, deterministic=deterministic, key=key)
        head_key = None if key is None else jax.random.fold_in(key, 1)
        return self.head(hidden, deterministic=deterministic, rngs=head_key)


@functools.partial(jax.jit, static_argnums=0)
def predict_tags(graphdef, state, batch):
    """Arg-max label ids [batch, seq]."""
    return jnp.argmax(nnx.merge(graphdef, state)(batch), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def predict_spans(graphdef, state, batch):
    """QA (start_logits, end_logits), each [batch, seq], float32."""
    start, end = nnx.merge(graphdef, state)(batch)
    return start.astype(jnp.float32), end.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def hidden_states(graphdef, state, batch):
    """Representations a TaskModel feeds its head, [batch, seq, D]."""
    return nnx.merge(graphdef, state).hidden(batch)
