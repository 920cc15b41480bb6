"""Square matmul rates: the peak every MFU divides by, and both frameworks' GEMM side by side."""

from __future__ import annotations

import functools
import statistics
from typing import Callable

import jax
import jax.numpy as jnp

from alad_train.bench.effort import GEMM_DTYPES, GEMM_N, Effort
from alad_train.timing import interleaved_medians, seconds


def blocking_gemm(n: int, dtype: str) -> Callable[[], None]:
    """A compiled, blocking ``[n, n] @ [n, n]`` of ``dtype`` operands with float32 accumulation and result (the
    train steps' bfloat16 form, :mod:`alad_jax.models.precision`); it returns nothing, so
    :func:`~alad_train.timing.interleaved_medians` times it (a number would be taken as its seconds)."""
    dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
    a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(jax.random.key(n)))
    dot(a, b).block_until_ready()

    def gemm() -> None:
        dot(a, b).block_until_ready()

    return gemm


def peak_gflops(effort: Effort, dtype: str = "float32") -> float:
    """The best matmul rate over ``effort.matmul_sizes`` (square, ``dtype`` operands), GFLOP/s."""
    best = 0.0
    for n in effort.matmul_sizes:
        gemm = blocking_gemm(n, dtype)
        best = max(best, 2 * n**3 / min(seconds(gemm) for _ in range(effort.matmul_reps)) / 1e9)
    return best


def gemm_vs_torch(worker, reps: int, n: int = GEMM_N) -> dict:
    """GFLOP/s of both frameworks' ``n``-cubed matmul per dtype, interleaved rep by rep (median)."""
    ours = {f"gemm_{dtype}": blocking_gemm(n, dtype) for dtype in GEMM_DTYPES}
    times = interleaved_medians({"alad_jax": ours, "torch": {name: functools.partial(worker.step, name)
                                                             for name in ours}}, reps)
    return {"n": n, "reps": reps,
            **{side: {name.removeprefix("gemm_"): 2 * n**3 / statistics.median(t) / 1e9 for name, t in by.items()}
               for side, by in times.items()},
            "note": "square matmuls; ours: jnp.dot of operands of the dtype, float32 accumulation and result; "
                    "PyTorch: torch.mm of operands of the dtype in its worker process (a bfloat16 result, as "
                    "under autocast)"}
