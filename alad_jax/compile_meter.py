"""Seconds a process spends making executables: tracing, lowering, and XLA compilation (or its cache lookup).

JAX reports each of these as a duration event (:mod:`jax.monitoring`); one listener,
registered on first use, sums them. ``alad run`` reads the sum before and after every
stage and reports the difference as the stage's ``compile_seconds``, so a run says how
much of its wall time went to compilation (the cold-XLA-cache cost) rather than to steps.
"""

from __future__ import annotations

import threading

import jax

# The events JAX records around making an executable (jax/_src/dispatch.py).
EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)

_lock = threading.Lock()
_total = 0.0
_registered = False


def _listen(event: str, duration: float, **_) -> None:
    global _total
    if event in EVENTS:
        with _lock:
            _total += duration


def seconds() -> float:
    """Compile seconds this process has spent since the meter was first used (call once early to start it)."""
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listen)
            _registered = True
        return _total
