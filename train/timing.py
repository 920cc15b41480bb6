"""Timing helpers of ``alad run``'s latency row and ``alad bench`` (numpy only: the bench's PyTorch worker process
uses them too)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentiles(times_s: list[float]) -> dict:
    """{"p50", "p95"} of ``times_s`` in milliseconds."""
    p50, p95 = np.percentile(np.asarray(times_s) * 1e3, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}


def one_per_shape(batches: list[dict]) -> list[dict]:
    """The first batch of each ``input_ids`` shape: what compilation (or a warm-up) needs to see."""
    seen = {}
    for batch in batches:
        seen.setdefault(batch["input_ids"].shape, batch)
    return list(seen.values())


def interleaved(calls: dict, reps: int) -> dict:
    """{key: [seconds per rep]}: each rep calls every one of ``calls`` in turn, so a slow minute on a shared
    machine hits all alike. A call that returns a number returns its own seconds (timed in another process)."""
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            start = time.perf_counter()
            took = call()
            times[key].append(took if took is not None else time.perf_counter() - start)
    return times


def interleaved_medians(sides: dict[str, dict], reps: int) -> dict:
    """{side: {case: [seconds per rep]}}: each rep runs every side's step of a case back to back."""
    names = list(next(iter(sides.values())))
    times = interleaved({(side, name): sides[side][name] for name in names for side in sides}, reps)
    return {side: {name: times[side, name] for name in steps} for side, steps in sides.items()}


def summary(times: list[float], tokens: int) -> dict:
    """Median tokens/s and the spread (tokens/s at the slowest and fastest rep)."""
    return {"tokens_per_s": tokens / statistics.median(times), "min": tokens / max(times),
            "max": tokens / min(times), "reps": len(times)}


def rounded(value):
    """``value`` (JSON-able nest) with floats to 5 significant digits and numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.5g}")
    if isinstance(value, np.integer):
        return int(value)
    return value
