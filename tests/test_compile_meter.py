"""The compile meter counts the seconds JAX spends making executables, and only those."""

import jax
import jax.numpy as jnp
import numpy as np

from alad_jax import compile_meter


def test_counts_a_new_compilation_and_not_a_cached_call():
    compile_meter.seconds()  # start listening

    @jax.jit
    def f(x):
        return jnp.tanh(x @ x.T).sum()

    x = np.ones((37, 11), np.float32)
    before = compile_meter.seconds()
    f(x).block_until_ready()
    first = compile_meter.seconds()
    assert first > before  # traced, lowered, compiled (or fetched from the XLA cache)
    for _ in range(3):
        f(x).block_until_ready()
    assert compile_meter.seconds() == first  # a cached executable costs no compile time
    f(np.ones((5, 11), np.float32)).block_until_ready()  # a new shape is a new executable
    assert compile_meter.seconds() > first
