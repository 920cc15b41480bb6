"""Latency is the time until a forward's result is ready, not the time to dispatch it.

JAX returns from a jitted call before the result is computed (asynchronous dispatch). A latency
that stops the clock at the return measures the dispatch alone (~0.001 ms) however slow the model.
Here each forward's result becomes ready 20 ms after the call returns, as a slow model's would:
no row can be timed at less than 20 ms.
"""

from __future__ import annotations

import time

import numpy as np
from flax import nnx

from alad_jax.models import task_model
from alad_train import measure

READY_AFTER_S = 0.020


class _Pending:
    """A forward's output that becomes ready ``READY_AFTER_S`` after the call returned (jax.block_until_ready waits)."""

    def __init__(self):
        self.ready_at = time.perf_counter() + READY_AFTER_S

    def block_until_ready(self):
        time.sleep(max(self.ready_at - time.perf_counter(), 0.0))
        return self


def test_a_forward_ready_after_20_ms_is_never_timed_below_20_ms(monkeypatch):
    calls = []

    def forward(graphdef, state, batch):  # returns at once, like an asynchronously dispatched jitted call
        calls.append(batch["input_ids"].shape)
        return _Pending()

    monkeypatch.setattr(task_model, "predict_tags", forward)
    models = {name: nnx.Linear(2, 2, rngs=nnx.Rngs(0)) for name in ("teacher", "alad_w3_frozen")}
    batch = {"input_ids": np.zeros((4, 8), np.int32), "attention_mask": np.ones((4, 8), np.int32)}
    out = measure.interleaved_latency(models, {name: batch for name in models}, runs=5, qa=False)
    assert len(calls) == 2 * (1 + 5)  # a warm-up and 5 timed forwards per row
    for name in models:
        assert out["p50_ms"][name] >= READY_AFTER_S * 1000, out
        assert out["p95_ms"][name] >= READY_AFTER_S * 1000, out
    assert out["runs"] == 5 and out["batch"] == [4, 8]
