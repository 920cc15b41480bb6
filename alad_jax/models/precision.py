"""The train steps' matmul precision: float32, or bfloat16 operands with float32 accumulation.

With ``matmul_dtype = "bfloat16"`` every ``nnx.Linear`` of a model (the
encoder's projections and MLP, the AlAd's fc1/fc2, the heads) multiplies
bfloat16-rounded operands and accumulates and returns float32; so do the two
matmuls of its backward pass (activation and weight gradients, from the
bfloat16-rounded cotangent). Everything else stays float32: parameters and
optimizer state, the residual stream, LayerNorm, softmax and the attention
score/context products (2-3% of the FLOPs), losses and gradients as stored.
On a CPU with bfloat16 matrix instructions the step's matmuls and whole train
steps run faster that way, which is why it is the default (``alad bench``
reports ``ratios_bf16_vs_float32``; this project's figures are in
docs/speed_history.md).

jax's own transpose of a bfloat16 x bfloat16 -> float32 ``dot_general``
multiplies a float32 cotangent by a bfloat16 operand, which XLA:CPU runs in
float32, and it rounds the weight gradient to bfloat16. :func:`bf16_matmul`
has its own VJP instead: both backward matmuls take bfloat16 operands and
return float32.

Only the train step uses this (:func:`alad_train.state.create_train_state`
builds its step from :func:`step_graphdef`): evaluation, saved models and
serving keep float32, so a model's reported scores are its float32 scores.
The tolerance it is held to is in ``tests/test_precision.py`` and README.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from alad_jax.adapter.modeling import AlignmentAdapter
from alad_jax.errors import AladError

MATMUL_DTYPES = ("float32", "bfloat16")  # the train steps' matmul precisions


@jax.custom_vjp
def bf16_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x [..., in] @ kernel [in, out]`` from bfloat16-rounded operands, accumulated and returned in float32."""
    return jnp.matmul(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x, kernel):
    x16, kernel16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    # The bfloat16 operands are the residuals: half the memory of float32 ones.
    return jnp.matmul(x16, kernel16, preferred_element_type=jnp.float32), (x16, kernel16)


def _bf16_matmul_bwd(residuals, cotangent):
    x16, kernel16 = residuals
    g16 = cotangent.astype(jnp.bfloat16)
    # Contractions named by dimension numbers, not by transposing and reshaping first: XLA:CPU then
    # picks the layouts itself (faster than the .T / reshape form; docs/speed_history.md).
    dx = lax.dot_general(g16, kernel16, (((g16.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    rows = tuple(range(x16.ndim - 1))
    dkernel = lax.dot_general(x16, g16, ((rows, rows), ((), ())), preferred_element_type=jnp.float32)
    return dx, dkernel


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """``nnx.Linear``'s ``dot_general`` slot: its one contraction (lhs's last axis with a 2-D kernel's first)
    through :func:`bf16_matmul`. float32 in, float32 out, gradients float32."""
    del precision, preferred_element_type  # the point of this function is to fix both
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2 or out_sharding is not None:
        raise AladError(f"bf16_dot_general supports nnx.Linear's x[..., in] @ kernel[in, out] only, got dimension "
                        f"numbers {dimension_numbers} with a {rhs.ndim}-d kernel; use matmul_dtype='float32'")
    return bf16_matmul(lhs.astype(jnp.float32), rhs.astype(jnp.float32))


def check_matmul_dtype(dtype: str) -> str:
    if dtype not in MATMUL_DTYPES:
        raise AladError(f"matmul_dtype={dtype!r} is unknown: use one of {', '.join(MATMUL_DTYPES)}")
    return dtype


def step_adapter_impl(matmul_dtype: str) -> str | None:
    """The AlAd form a train step in ``matmul_dtype`` runs: ``"explicit"`` under bfloat16 (windows, then fc1 as a
    Linear: the fused form is a convolution, which has no bfloat16 path here), ``None`` under float32 (each AlAd
    keeps the form it was built with); explicit windows into a bfloat16 fc1 beat the float32 fused step
    (docs/speed_history.md). Pass it to :func:`step_graphdef`; ``alad bench`` times the same form."""
    return "explicit" if check_matmul_dtype(matmul_dtype) == "bfloat16" else None


def step_graphdef(graphdef: nnx.GraphDef, *states: nnx.State, matmul_dtype: str,
                  adapter_impl: str | None) -> nnx.GraphDef:
    """The graph a train step runs: for bfloat16, the module with every ``nnx.Linear`` on
    :func:`bf16_dot_general`; every AlAd in the form ``adapter_impl`` (``"fused"`` / ``"explicit"``; ``None``:
    as built), the caller's choice (:func:`step_adapter_impl` states the rule). float32 with ``adapter_impl=None``
    is ``graphdef`` itself. Merges with the same states (``nnx.split``'s graphdef does not depend on its
    filters); the module ``graphdef`` describes is left as it is.
    """
    bfloat16 = check_matmul_dtype(matmul_dtype) == "bfloat16"
    if bfloat16 and adapter_impl == "fused":
        raise AladError("adapter_impl='fused' cannot run under matmul_dtype='bfloat16' (a convolution, with no "
                        "bfloat16 path here); use 'explicit' (precision.step_adapter_impl)")
    if not bfloat16 and adapter_impl is None:
        return graphdef
    module = nnx.merge(graphdef, *states)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Linear) and bfloat16:
            node.dot_general = bf16_dot_general
        elif isinstance(node, AlignmentAdapter) and adapter_impl is not None:
            node.impl = adapter_impl
    return nnx.graphdef(module)
