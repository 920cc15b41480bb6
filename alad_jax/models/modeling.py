"""BERT, DistilBERT and MPNet encoders in Flax NNX (modules only; loading lives in params.py / hub.py).

The three families are the same post-LayerNorm transformer (Devlin et al. 2019;
Sanh et al. 2019; Song et al. 2020), so they share one module tree:

    x = LayerNorm(word[ids] + position[pos] (+ token_type[types]))          embeddings
    for each layer:
        x = LayerNorm(x + Dropout(SelfAttention(x, mask, bias)))          attention_norm
        x = LayerNorm(x + Dropout(W_out · act(W_in · x)))                 mlp_norm

BERT and DistilBERT use pos = 0..t-1 and no attention bias. DistilBERT has no
token-type table and no dropout on the attention output projection. MPNet has
no token types; it numbers positions like RoBERTa (real tokens 2, 3, ..., found
from `input_ids != 1`; padding 1), and adds to every head's attention scores a
learned relative position bias,

    scores[h, q, k] += relative_attention_bias[bucket(k - q), h]

where `bucket` is T5's bidirectional log-bucketing (32 buckets, exact up to a
distance of 8, logarithmic up to 128, clamped beyond), computed once per
forward and shared by all layers, exactly as transformers' MPNetModel does.
No family gets a pooler here: only token states are used.

Parameter paths (`nnx.state(encoder, nnx.Param)`; `i` is the layer index, an int
in the path tuple). Kernels are [in, out]; stable, so sharding rules may match them:

    embeddings.word_embeddings.embedding         [vocab, hidden]
    embeddings.position_embeddings.embedding     [max_positions, hidden]
    embeddings.token_type_embeddings.embedding   [type_vocab, hidden]     (BERT only)
    embeddings.norm.{scale,bias}                 [hidden]
    relative_attention_bias.embedding            [num_buckets, heads]     (MPNet only)
    layers.i.attention.{query,key,value}.kernel  [hidden, hidden]   (out = heads x head_dim)
    layers.i.attention.{query,key,value}.bias    [hidden]
    layers.i.attention.output.kernel             [hidden, hidden]   (in = heads x head_dim)
    layers.i.attention.output.bias               [hidden]
    layers.i.attention_norm.{scale,bias}         [hidden]
    layers.i.mlp.intermediate.{kernel,bias}      [hidden, intermediate], [intermediate]
    layers.i.mlp.output.{kernel,bias}            [intermediate, hidden], [hidden]
    layers.i.mlp_norm.{scale,bias}               [hidden]

Dropout never holds RNG state: with `deterministic=False` the caller passes one
PRNG key and it is split per dropout site, so a forward pass is a pure function
of (params, inputs, key) and jits through `nnx.split` / `nnx.merge`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.errors import AladError
from alad_jax.models.dropout import Dropout
from alad_jax.models.config import MPNET_PADDING_IDX, MPNET_POSITION_BUCKETS, EncoderConfig

_INIT = nnx.initializers.normal(stddev=0.02)  # transformers' initializer_range default

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


class EncoderOutput(NamedTuple):
    """last_hidden_state: [batch, seq, hidden] in the compute dtype.

    hidden_states: when requested, (embeddings output, layer 1 output, ..., layer N
    output): N + 1 arrays of [batch, seq, hidden], as transformers orders them.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple | None


def _split_key(key: jax.Array | None, num: int) -> list[jax.Array | None]:
    return [None] * num if key is None else list(jax.random.split(key, num))


def _linear(in_features: int, out_features: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=_INIT, bias_init=nnx.initializers.zeros, rngs=rngs,
    )


def _layer_norm(config: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs,
    )


def _embed(num: int, config: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        num, config.hidden_size, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=_INIT, rngs=rngs,
    )


class Embeddings(nnx.Module):
    """Word + absolute position (+ token type) embeddings, LayerNorm, dropout."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.positions_from_ids = config.model_type == "mpnet"
        self.word_embeddings = _embed(config.vocab_size, config, dtype, rngs)
        self.position_embeddings = _embed(config.max_position_embeddings, config, dtype, rngs)
        self.token_type_embeddings = (
            _embed(config.type_vocab_size, config, dtype, rngs) if config.type_vocab_size else None
        )
        self.norm = _layer_norm(config, dtype, rngs)
        self.dropout = Dropout(config.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, offsets=None, *, deterministic: bool, rngs):
        """input_ids, token_type_ids: int [batch, seq] -> [batch, seq, hidden].

        ``offsets``: int [batch, seq], each token's place in its own sequence (packed
        rows restart it per sequence); None: the place in the row.
        """
        x = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids(input_ids, offsets))
        return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)

    def position_ids(self, input_ids, offsets=None):
        """int [batch, seq] (or [1, seq] when positions do not depend on the ids)."""
        if offsets is not None:  # packed rows: each sequence's positions as if it were alone
            if not self.positions_from_ids:
                return offsets
            real = (input_ids != MPNET_PADDING_IDX).astype(jnp.int32)
            return (offsets + 1) * real + MPNET_PADDING_IDX
        if not self.positions_from_ids:
            # 0, 1, ..., seq-1 counted from the ids' shape rather than jnp.arange(seq): the same
            # numbers, and it converts to ONNX with a dynamic sequence length (jax2onnx 0.17 cannot
            # broadcast an arange over a symbolic length against the ids).
            return jnp.cumsum(jnp.ones_like(input_ids[:1]), axis=1) - 1
        # MPNet, as transformers computes it: from the ids, not the attention mask, so a real token's
        # position never depends on the padding after it; padding itself sits at position 1.
        real = (input_ids != MPNET_PADDING_IDX).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + MPNET_PADDING_IDX


def _row_sum(x: jax.Array) -> jax.Array:
    """x [..., n] -> [..., 1]: the sum over the last axis as a fixed tree of elementwise adds of halves
    (an odd length carries its last element to the next level)."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        pairs = x[..., :half] + x[..., half:2 * half]
        x = jnp.concatenate([pairs, x[..., 2 * half:]], axis=-1) if x.shape[-1] % 2 else pairs
    return x


@jax.custom_vjp
def attention_softmax(scores: jax.Array) -> jax.Array:
    """``jax.nn.softmax`` over the keys (the last axis), with a backward whose per-row numbers do not depend
    on how many rows the program holds.

    The backward is ``probs * (g - sum_k(g * probs))``, as jax's own; its row sum is written as a fixed tree
    of elementwise adds rather than a reduction, because XLA:CPU fuses that reduction (with the dot that makes
    ``g``) into one YNNPACK fusion from 6 rows of 64 positions up and not below, and the two round
    differently: the same row's query/key gradients differed in the last float32 bit between a 10-row program
    (one device) and a 5-row one (each of two), and every layer's bfloat16 backward turned that into whole
    bfloat16 roundings, growing to 1e-3 of the lowest layers' gradients (issue 29, docs/multihost.md). Adds of
    slices are elementwise: no fusion can reorder them. Same cost as jax's form.
    """
    return jax.nn.softmax(scores, axis=-1)


def _attention_softmax_fwd(scores):
    probs = jax.nn.softmax(scores, axis=-1)
    return probs, probs


def _attention_softmax_bwd(probs, cotangent):
    return (probs * (cotangent - _row_sum(cotangent * probs)),)


attention_softmax.defvjp(_attention_softmax_fwd, _attention_softmax_bwd)


class SelfAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention with an output projection."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = _linear(hidden, hidden, dtype, rngs)
        self.key = _linear(hidden, hidden, dtype, rngs)
        self.value = _linear(hidden, hidden, dtype, rngs)
        self.output = _linear(hidden, hidden, dtype, rngs)
        self.dropout = Dropout(config.attention_dropout)

    def __call__(self, x, attention_bias, position_bias=None, *, deterministic: bool, rngs):
        """x: [batch, seq, hidden]; attention_bias: float32 [batch, 1 or seq, seq] added to the scores
        (of every query, or per query);
        position_bias: float32 [heads, seq, seq] added to every row's scores, or None."""
        batch, seq, _ = x.shape
        heads = lambda y: y.reshape(batch, seq, self.num_heads, self.head_dim)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.head_dim ** -0.5
        # Softmax in float32 even under bfloat16 compute: masked keys carry finfo.min.
        scores = scores.astype(jnp.float32)
        if position_bias is not None:
            scores = scores + position_bias[None]
        scores = scores + attention_bias[:, None, :, :]
        probs = attention_softmax(scores)
        probs = self.dropout(probs, deterministic=deterministic, rngs=rngs).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, -1)
        return self.output(context)


class FeedForward(nnx.Module):
    """Position-wise MLP: hidden -> intermediate -> activation -> hidden."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.intermediate = _linear(config.hidden_size, config.intermediate_size, dtype, rngs)
        self.output = _linear(config.intermediate_size, config.hidden_size, dtype, rngs)
        self.hidden_act = config.hidden_act

    def __call__(self, x):
        return self.output(_ACTIVATIONS[self.hidden_act](self.intermediate(x)))


class TransformerLayer(nnx.Module):
    """One post-LayerNorm block: attention and MLP, each with residual + LayerNorm."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, dtype=dtype, rngs=rngs)
        self.attention_norm = _layer_norm(config, dtype, rngs)
        self.mlp = FeedForward(config, dtype=dtype, rngs=rngs)
        self.mlp_norm = _layer_norm(config, dtype, rngs)
        # DistilBERT adds the attention projection to the residual without dropout.
        attention_output_rate = 0.0 if config.model_type == "distilbert" else config.hidden_dropout
        self.attention_output_dropout = Dropout(attention_output_rate)
        self.mlp_dropout = Dropout(config.hidden_dropout)

    def __call__(self, x, attention_bias, position_bias=None, *, deterministic: bool, rngs):
        """x: [batch, seq, hidden] -> [batch, seq, hidden]."""
        attention_key, attention_output_key, mlp_key = _split_key(rngs, 3)
        h = self.attention(x, attention_bias, position_bias, deterministic=deterministic, rngs=attention_key)
        h = self.attention_output_dropout(h, deterministic=deterministic, rngs=attention_output_key)
        x = self.attention_norm(x + h)
        h = self.mlp_dropout(self.mlp(x), deterministic=deterministic, rngs=mlp_key)
        return self.mlp_norm(x + h)


class TransformerEncoder(nnx.Module):
    """Embeddings followed by `num_layers` transformer layers; shared by BERT, DistilBERT and MPNet."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = config
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [TransformerLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: jax.Array | None = None,
        output_hidden_states: bool = False,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> EncoderOutput:
        """Token states of a padded batch.

        Args:
          input_ids: int [batch, seq].
          attention_mask: int [batch, seq], 1 for real tokens, 0 for padding.
          token_type_ids: int [batch, seq] or None (zeros). DistilBERT and MPNet
            have no token types and ignore them, so one batch feeds any family.
          deterministic: False applies dropout, drawn from `rngs`.
          rngs: a PRNG key, required when `deterministic` is False.
          output_hidden_states: also return the embeddings and every layer's output.
          segment_ids: int [batch, seq] or None. Packed rows (:mod:`alad_jax.data.batching`):
            tokens attend only to tokens of their own segment (>= 1); 0 marks padding.
          position_ids: int [batch, seq] or None: each token's place in its own sequence, for
            packed rows whose sequences each start at 0; None: the place in the row.

        Returns:
          EncoderOutput with last_hidden_state [batch, seq, hidden].
        """
        chex.assert_rank([input_ids, attention_mask], 2)
        chex.assert_equal_shape([input_ids, attention_mask])
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        chex.assert_equal_shape([input_ids, token_type_ids])
        if not deterministic and rngs is None:
            raise AladError("encoder called with deterministic=False but no PRNG key; pass rngs=key")
        if input_ids.shape[1] > self.config.max_length:
            raise AladError(
                f"sequence length {input_ids.shape[1]} exceeds the {self.config.max_length} positions of this "
                f"{self.config.model_type} encoder (max_position_embeddings {self.config.max_position_embeddings}); "
                "truncate inputs to that length"
            )

        embedding_key, *layer_keys = _split_key(rngs, len(self.layers) + 1)
        # Additive mask: 0 where attended, the most negative float32 where padded; [batch, 1, seq]
        # (the same keys for every query) or, packed, [batch, seq, seq] (a query's own segment).
        attended = (attention_mask > 0)[:, None, :]
        if segment_ids is not None:
            chex.assert_equal_shape([input_ids, segment_ids])
            attended = attended & (segment_ids[:, :, None] == segment_ids[:, None, :])
        attention_bias = jnp.where(attended, 0.0, jnp.finfo(jnp.float32).min)
        position_bias = self.position_bias(input_ids.shape[1])
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic=deterministic,
                            rngs=embedding_key)
        hidden_states = [x]
        for layer, key in zip(self.layers, layer_keys):
            x = layer(x, attention_bias, position_bias, deterministic=deterministic, rngs=key)
            hidden_states.append(x)
        return EncoderOutput(x, tuple(hidden_states) if output_hidden_states else None)

    def position_bias(self, seq: int) -> jax.Array | None:
        """float32 [heads, seq, seq] added to every layer's attention scores; None: absolute positions only."""
        return None


class BertEncoder(TransformerEncoder):
    """BERT: absolute positions and token-type embeddings; no pooler."""


class DistilBertEncoder(TransformerEncoder):
    """DistilBERT: like BERT without token types or attention-output dropout."""


def relative_position_bucket(
    relative_position: np.ndarray, num_buckets: int = MPNET_POSITION_BUCKETS, max_distance: int = 128
) -> np.ndarray:
    """T5's bidirectional bucket of each relative position (key - query), as transformers' MPNet computes it.

    Half the buckets hold keys before the query, half keys at or after it; in
    each half, distances below num_buckets // 4 get a bucket each and longer ones
    share logarithmically wider buckets up to `max_distance`, beyond which all
    fall in the last. Computed in float32 with torch's order of operations, so
    distances at a bucket boundary round as they do there.

    Args: relative_position: int array of any shape.
    Returns: int32 array of the same shape, values in [0, num_buckets).
    """
    n = -np.asarray(relative_position, np.int64)
    half = num_buckets // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    # n >= 1 in the log: distances below max_exact take the exact branch and must not hit log(0).
    scaled = (
        np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (bucket + np.where(n < max_exact, n, large)).astype(np.int32)


class MPNetEncoder(TransformerEncoder):
    """MPNet: RoBERTa-style positions, no token types, a relative position bias shared by all layers."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        super().__init__(config, rngs=rngs, dtype=dtype)
        self.relative_attention_bias = nnx.Embed(
            config.relative_attention_num_buckets, config.num_heads, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=_INIT, rngs=rngs,
        )

    def position_bias(self, seq: int) -> jax.Array:
        # Buckets depend only on the static length: a constant of the compiled program, the same on every backend.
        positions = np.arange(seq)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None])  # [query, key]
        bias = self.relative_attention_bias(jnp.asarray(buckets))  # [query, key, heads]
        return jnp.transpose(bias, (2, 0, 1)).astype(jnp.float32)


_ENCODERS = {"bert": BertEncoder, "distilbert": DistilBertEncoder, "mpnet": MPNetEncoder}


def build_encoder(
    config: EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32
) -> BertEncoder | DistilBertEncoder | MPNetEncoder:
    """A randomly initialised encoder for `config`; params float32, `dtype` = compute dtype."""
    return _ENCODERS[config.model_type](config, rngs=rngs, dtype=dtype)
