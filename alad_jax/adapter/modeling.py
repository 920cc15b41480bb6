"""The Alignment Adapter (AlAd): a windowed two-layer MLP from student to teacher space.

    window_K(S)[t] = concat(S[t-r], ..., S[t], ..., S[t+r])          r = K // 2
    AlAd(S)[t]     = W2 . gelu_erf(W1 . window_K(S)[t] + b1) + b2      -> width Dt

Deliberate difference with the authors' PyTorch code: the reference zero-pads
only at the edges of the *batch* tensor, so a short sentence padded inside a
batch sees the hidden states at its PAD positions as neighbours, and its output
depends on what it was batched with. Here every neighbour whose attention mask
is 0 counts as zeros, exactly like a neighbour outside the sequence: a
sentence's output is the same alone or padded in any batch. On un-padded input
the two agree (tests/test_adapter_interop.py proves it).

Two equal forms of ``W1 . window_K(S)``:

- "explicit": materialise the windows ``[batch, seq, K*Ds]`` with a function
  vmapped over token positions, then one matmul (fc1 as written in the paper);
- "fused": fc1 as a 1-D convolution over the sequence (kernel K, "same" zero
  padding) on the masked hidden states; the windows never exist in memory.
"""

from __future__ import annotations

import functools
import numbers

import chex
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from alad_jax.errors import AladError

IMPLS = ("auto", "fused", "explicit")

# "auto" resolves to the fused (convolution) form: for K >= 3 it timed faster than the explicit
# windows, forward and forward+backward, in float32 (benchmarks/bench_adapter.py; the figures are in
# docs/speed_history.md). For K = 1 both forms are the same matmul.
_AUTO_IMPL = "fused"


def _check_window(window) -> int:
    """Returns ``window`` as an int after checking it is a positive odd integer."""
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise AladError(
            f"adapter window={window!r} is invalid: the window K must be a positive odd "
            "integer (1, 3, 5, ...) so that it is centred on the token; pass e.g. window=3"
        )
    return int(window)


def _mask_hidden(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Zeroes padded positions. ``where`` (not a product) so NaN/inf garbage cannot leak."""
    return jnp.where(attention_mask[..., None] != 0, hidden, jnp.zeros((), hidden.dtype))


@functools.partial(jax.jit, static_argnames="window")
def _extract_windows(hidden: jax.Array, attention_mask: jax.Array, window: int) -> jax.Array:
    batch, seq, dim = hidden.shape
    radius = window // 2
    padded = jnp.pad(_mask_hidden(hidden, attention_mask), ((0, 0), (radius, radius), (0, 0)))

    def window_at(t):
        # Position t in the original sequence is t + radius in `padded`, so the
        # window [t - r, t + r] starts at padded index t.
        return lax.dynamic_slice_in_dim(padded, t, window, axis=1).reshape(batch, window * dim)

    return jax.vmap(window_at, out_axes=1)(jnp.arange(seq))


def extract_windows(hidden: jax.Array, attention_mask: jax.Array, window: int) -> jax.Array:
    """Sliding windows of token states, padding-correct (the explicit form).

    Args:
      hidden: ``[batch, seq, Ds]`` token states.
      attention_mask: ``[batch, seq]``, nonzero for real tokens, 0 for padding.
      window: K, a positive odd int.

    Returns:
      ``[batch, seq, K*Ds]``: position t holds ``concat(S[t-r], ..., S[t+r])``,
      r = K // 2, oldest neighbour first; neighbours outside the sequence or
      with mask 0 are zeros.
    """
    window = _check_window(window)
    chex.assert_rank(hidden, 3)
    chex.assert_shape(attention_mask, hidden.shape[:2])
    return _extract_windows(hidden, attention_mask, window)


def _windowed_conv(hidden: jax.Array, attention_mask: jax.Array, kernel: jax.Array, window: int) -> jax.Array:
    """``windows @ kernel`` without the windows: a 1-D "same" convolution.

    Args:
      hidden: ``[batch, seq, Ds]``; attention_mask: ``[batch, seq]``.
      kernel: ``[K*Ds, H]``, fc1's kernel; rows k*Ds:(k+1)*Ds act on S[t-r+k].

    Returns:
      ``[batch, seq, H]``.
    """
    dim = hidden.shape[-1]
    # lax.conv is a cross-correlation: out[t] = sum_k in[t - r + k] @ w[k], the
    # window order of the explicit form, so the kernel needs no flip.
    return lax.conv_general_dilated(
        _mask_hidden(hidden, attention_mask),
        kernel.reshape(window, dim, kernel.shape[-1]),
        window_strides=(1,),
        padding="SAME",
        dimension_numbers=("NWC", "WIO", "NWC"),
    )


class AlignmentAdapter(nnx.Module):
    """AlAd: maps student token states ``[b, t, Ds]`` to teacher space ``[b, t, Dt]``.

    Parameters live in ``fc1`` (``K*Ds -> hidden_dim``) and ``fc2``
    (``hidden_dim -> Dt``), the names of the reference code, so parameter paths
    (``fc1/kernel``...) and the safetensors export line up one to one.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        window: int = 3,
        hidden_dim: int = 1280,
        *,
        impl: str = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.window = _check_window(window)
        if impl not in IMPLS:
            raise AladError(f"adapter impl={impl!r} is unknown: use one of {', '.join(IMPLS)}")
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise AladError(f"adapter {name}={value!r} is invalid: it must be a positive integer")
        self.student_dim = int(student_dim)
        self.teacher_dim = int(teacher_dim)
        self.hidden_dim = int(hidden_dim)
        self.impl = _AUTO_IMPL if impl == "auto" else impl
        linear = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(self.window * self.student_dim, self.hidden_dim)
        self.fc2 = linear(self.hidden_dim, self.teacher_dim)

    def __call__(self, student_hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Args: student_hidden ``[b, t, Ds]``, attention_mask ``[b, t]`` (0 = padding).

        Returns ``[b, t, Dt]``. Outputs at padded positions are finite but
        meaningless; losses and metrics mask them out.
        """
        chex.assert_rank(student_hidden, 3)
        chex.assert_axis_dimension(student_hidden, 2, self.student_dim)
        chex.assert_shape(attention_mask, student_hidden.shape[:2])
        if self.impl == "explicit":
            pre = self.fc1(_extract_windows(student_hidden, attention_mask, self.window))
        else:
            hidden, kernel, bias = self.fc1.promote_dtype(
                (student_hidden, self.fc1.kernel[...], self.fc1.bias[...]), dtype=self.fc1.dtype
            )
            pre = _windowed_conv(hidden, attention_mask, kernel, self.window) + bias
        return self.fc2(jax.nn.gelu(pre, approximate=False))
