"""Processes and devices: joining a multi-process run, the one process that writes, and what devices report.

Every worker of a multi-process run (a TPU pod slice, several GPU hosts, or
several CPU processes on one machine) runs the same command;
:func:`initialize_distributed` joins them before any other jax call, and only
the primary process (:func:`is_primary`) writes shared files.
"""

from __future__ import annotations

import os

import jax

from alad_jax.errors import AladError


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise AladError(f"environment variable {name}={raw!r} is not an integer: set it to a whole number") from None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to the others of a multi-process run (before any other jax call).

    - Nothing set (arguments or environment): a single process, no-op.
    - ``ALAD_DISTRIBUTED=auto`` (set by ``tpu/tpu.py launch``): a TPU VM or
      pod slice; ``jax.distributed.initialize()`` finds the workers itself.
    - ``ALAD_COORDINATOR`` / ``ALAD_NUM_PROCESSES`` / ``ALAD_PROCESS_ID``
      (which override the arguments) or the arguments: explicit ``host:port``
      of process 0, process count and this process's index, e.g. several GPU
      hosts or CPU processes on one machine (CPU collectives use gloo).
    """
    coordinator_address = os.environ.get("ALAD_COORDINATOR") or coordinator_address
    num_processes = _env_int("ALAD_NUM_PROCESSES") or num_processes
    env_process_id = _env_int("ALAD_PROCESS_ID")
    process_id = process_id if env_process_id is None else env_process_id
    auto = os.environ.get("ALAD_DISTRIBUTED", "").lower()
    if auto not in ("", "auto"):
        raise AladError(f"ALAD_DISTRIBUTED={auto!r} is not understood: set it to 'auto' or leave it unset")
    if jax.distributed.is_initialized():
        return
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        if auto == "auto":
            jax.distributed.initialize()
        return
    if any(v is None for v in explicit):
        raise AladError(
            f"multi-process setup is incomplete (coordinator={coordinator_address}, num_processes="
            f"{num_processes}, process_id={process_id}): set all three of ALAD_COORDINATOR, "
            "ALAD_NUM_PROCESSES and ALAD_PROCESS_ID"
        )
    if not 0 <= process_id < num_processes:
        raise AladError(
            f"ALAD_PROCESS_ID={process_id} is outside 0..{num_processes - 1}: number the processes"
            f" 0 to ALAD_NUM_PROCESSES-1"
        )
    # Only the CPU client reads it; without it CPU processes cannot reduce across each other.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_primary() -> bool:
    """True on the one process that writes logs and files (process 0)."""
    return jax.process_index() == 0


def device_memory_stats() -> dict[str, int] | None:
    """Bytes in use and peak per local device, flat for logging; ``None`` where unreported (CPU).

    Keys: ``mem/device{id}/bytes_in_use``, ``mem/device{id}/peak_bytes_in_use``.
    """
    stats = {}
    for device in jax.local_devices():
        reported = device.memory_stats()
        if not reported:
            continue
        for key in ("bytes_in_use", "peak_bytes_in_use"):
            if key in reported:
                stats[f"mem/device{device.id}/{key}"] = int(reported[key])
    return stats or None


def throughput_metrics(num_tokens: int, seconds: float) -> dict[str, float]:
    """Tokens per second for a step, overall and per device (of all processes).

    ``num_tokens``: non-padding tokens of the global batch; ``seconds``: wall
    time of the step (after ``block_until_ready``).
    """
    if seconds <= 0:
        return {"tokens_per_s": float("nan"), "tokens_per_s_per_device": float("nan")}
    rate = num_tokens / seconds
    return {"tokens_per_s": rate, "tokens_per_s_per_device": rate / jax.device_count()}
