"""Running the whole pipeline as several processes: join, agree, write once, fail cleanly.

Every worker runs the same ``alad run`` command. :mod:`alad_jax.sharding`
holds the step-level pieces (mesh, batch sharding) and :mod:`alad_jax.checkpoints`
the checkpoints; this module holds what a multi-process *run* adds on top:

- :func:`initialize`: joins the processes (``ALAD_COORDINATOR`` /
  ``ALAD_NUM_PROCESSES`` / ``ALAD_PROCESS_ID``, or ``ALAD_DISTRIBUTED=auto``)
  and starts the :class:`Watchdog`.
- :func:`primary_writes`: a block whose files only process 0 writes, followed
  by a barrier, so no process reads a model, adapter or student before it is
  complete.
- :func:`check_shared_workdir`: orbax writes one checkpoint from the shards of
  all processes, so the work directory must be one file system that every
  worker sees; a worker that does not see it stops with one line saying so.
- :class:`Watchdog`: every process publishes a heartbeat in the coordination
  service's key-value store; when a peer's stops (it died) or it reports a
  failure, every other process prints one line naming it and exits within
  :data:`DEAD_AFTER_S` seconds, before JAX's own coordination service would
  end them with a C++ check-failure trace.
- :func:`supervise`: in a multi-process launch ``alad run`` works in a child
  process; when JAX aborts that child with a C++ trace (the coordinator, i.e.
  process 0, is gone), the parent prints one line naming process 0 last.
- :func:`fail`: the one exit path of a failing process in a multi-process
  run: it tells its peers why, prints one line and leaves at once (the normal
  interpreter exit would wait on a shutdown barrier that dead peers never
  reach).

On one process every function here is a no-op or a plain pass-through.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from flax import nnx

from alad_jax import sharding
from alad_jax.errors import AladError

BEAT_EVERY_S = 2.0  # a heartbeat per process this often
DEAD_AFTER_S = 30.0  # a peer whose heartbeat has not moved this long is dead
# JAX's own service declares a silent process dead after this; it must be later than the watchdog.
JAX_HEARTBEAT_TIMEOUT_S = 90
BARRIER_TIMEOUT_S = 24 * 3600  # a barrier waits for slow peers (long stages); dead ones the watchdog catches
RESUME_HINT = "run the same commands again to resume from the last checkpoints"

_barriers = itertools.count()
_watchdog: "Watchdog | None" = None


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
    *,
    heartbeat_timeout_seconds: int = 100,
) -> None:
    """Joins this process to the others of a multi-process run (before any other jax call).

    - Nothing set (arguments or environment): a single process, no-op.
    - ``ALAD_DISTRIBUTED=auto`` (set by ``tpu/tpu.py launch``): a TPU VM or
      pod slice; ``jax.distributed.initialize()`` finds the workers itself.
    - ``ALAD_COORDINATOR`` / ``ALAD_NUM_PROCESSES`` / ``ALAD_PROCESS_ID``
      (which override the arguments) or the arguments: explicit ``host:port``
      of process 0, process count and this process's index, e.g. several GPU
      hosts or CPU processes on one machine (CPU collectives use gloo).

    ``heartbeat_timeout_seconds``: after this long without a heartbeat JAX's
    coordination service declares a process dead (and aborts the others).
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
            jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
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
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def batch_layout() -> dict[str, int]:
    """This process's place in a global batch, as the batchers take it (``make_batches``,
    ``make_packed_batches``): its index, the process count, and the devices a batch's rows split over."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "row_multiple": jax.device_count()}


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



def _client():
    from jax._src import distributed as jax_distributed  # the coordination service client; no public handle

    client = jax_distributed.global_state.client
    if client is None:
        raise AladError("multi-process run: jax.distributed is not initialized; call distributed.initialize() first")
    return client


def initialize() -> None:
    """Join the processes of a multi-process run (see :func:`initialize_distributed`) and watch them."""
    initialize_distributed(heartbeat_timeout_seconds=JAX_HEARTBEAT_TIMEOUT_S)
    if jax.process_count() > 1:
        start_watchdog()


def is_multiprocess_launch() -> bool:
    """Whether the environment asks for a multi-process run (checked before jax starts)."""
    count = os.environ.get("ALAD_NUM_PROCESSES", "").strip()
    return os.environ.get("ALAD_DISTRIBUTED", "").lower() == "auto" or (count.isdigit() and int(count) > 1)


def supervise(command: list[str]) -> int | None:
    """In a multi-process launch, run ``command`` as a child process and report how it ended; else ``None``.

    JAX's coordination client ends a process with a C++ check-failure trace
    when the coordination service goes away (process 0 died) before any
    Python code can react. The parent sees the child die by a signal and
    prints one line after the trace, naming the process that stopped: the
    coordinator when its address no longer answers. The child inherits the
    terminal, so its output is unchanged; the parent ignores Ctrl-C (the
    child gets it and stops itself).
    """
    if not is_multiprocess_launch() or os.environ.get("ALAD_SUPERVISED") == "1":
        return None
    import signal
    import subprocess

    child = subprocess.Popen(command, env={**os.environ, "ALAD_SUPERVISED": "1"})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code >= 0:
        return code  # it exited by itself, after its own line when it failed
    me, count = os.environ.get("ALAD_PROCESS_ID", "?"), os.environ.get("ALAD_NUM_PROCESSES", "?")
    coordinator = os.environ.get("ALAD_COORDINATOR", "")
    if me != "0" and coordinator and not _answers(coordinator):
        message = f"process 0 of {count} (the coordinator, {coordinator}) stopped"
    else:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        if -code in (signal.SIGKILL, signal.SIGTERM):
            message = f"process {me} of {count} was killed ({name})"
        else:
            message = f"process {me} of {count} ended by {name} (a peer or the coordination service stopped it)"
    print(f"error: {message}; {RESUME_HINT}", file=sys.stderr, flush=True)
    return 128 - code


def _answers(address: str, timeout: float = 3.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op on one process)."""
    if jax.process_count() == 1:
        return
    _client().wait_at_barrier(f"alad/{next(_barriers)}/{name}", BARRIER_TIMEOUT_S * 1000)


@contextlib.contextmanager
def primary_writes(name: str) -> Iterator[bool]:
    """``with primary_writes("teacher") as writer: if writer: save(...)``; all processes pass a barrier after.

    Files that several processes later read are written by process 0 alone;
    the barrier keeps every process from reading them half written. The
    barrier is skipped when the block raises: the failure path stops the run.
    """
    yield is_primary()
    barrier(name)


def host_copy(module: nnx.Module) -> nnx.Module:
    """``module`` with every array as a full numpy copy, on every process (a collective: all must call it).

    Arrays split over the devices of several processes (FSDP) cannot be read
    by one process alone; a copy taken by all of them can then be saved by one.
    """
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, sharding.gather_to_host(state))


def sum_over_processes(value: float) -> float:
    """The sum of ``value`` over all processes (each passes its own; a collective)."""
    if jax.process_count() == 1:
        return float(value)
    from jax.experimental import multihost_utils

    return float(np.sum(multihost_utils.process_allgather(np.asarray(value, np.float64))))


def agreed(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (a collective: every process calls it at the same point).

    A decision taken from something each process measures for itself (its clock) must be one decision:
    processes that stop at different steps leave the others waiting in a collective forever."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def check_shared_workdir(workdir: Path) -> None:
    """Refuse a work directory that the processes do not all see as one file system.

    Process 0 writes a marker with a fresh name; every process reports through
    the coordination service whether it sees the marker, so all of them stop
    with the same line when one does not.
    """
    if jax.process_count() == 1:
        return
    client = _client()
    marker = Path(workdir) / f".alad-shared-{uuid.uuid4().hex if is_primary() else ''}"
    key = "alad/shared_workdir"
    if is_primary():
        marker.write_text("written by process 0 to check that every process sees this directory\n")
        client.key_value_set(key, marker.name)
    name = client.blocking_key_value_get(key, 600_000)
    seen = (Path(workdir) / name).is_file()
    me = jax.process_index()
    client.key_value_set(f"alad/shared_workdir_seen/{me}", "1" if seen else "0")
    blind = [i for i in range(jax.process_count())
             if client.blocking_key_value_get(f"alad/shared_workdir_seen/{i}", 600_000) != "1"]
    barrier("shared-workdir")
    if is_primary():
        marker.unlink(missing_ok=True)
    if blind:
        raise AladError(
            f"--workdir {workdir} is not shared: process(es) {', '.join(map(str, blind))} do not see what process 0 "
            f"writes there; a multi-process run writes its checkpoints jointly into one directory, so give every "
            f"worker the same shared directory (NFS, Filestore, a gcsfuse-mounted bucket: see README, 'Scaling out')"
        )


class Watchdog:
    """Heartbeats in the coordination service; ends this process with one line when a peer dies or fails.

    Each process sets ``alad/beat/<i>`` to a rising counter every
    :data:`BEAT_EVERY_S`; a peer whose counter has not moved for
    :data:`DEAD_AFTER_S` is dead (killed, out of memory, machine gone). A peer
    that failed with an error first sets ``alad/failed/<i>`` to its message,
    which ends the others at once. When the coordinator itself (process 0)
    is gone, the key-value store cannot be reached: that names process 0.
    ``alad/done/<i>`` marks a process that finished normally (its heartbeat
    then stops without alarm).
    """

    def __init__(self, client, process_index: int, process_count: int, coordinator: str):
        self.client = client
        self.me = process_index
        self.count = process_count
        self.coordinator = coordinator
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="alad-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.thread.start()
        return self

    def stop(self) -> None:
        """This process finished: peers no longer expect its heartbeat."""
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"alad/done/{self.me}", "1", allow_overwrite=True)

    def _try_get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:  # NOT_FOUND is how the store says "no such key"
            if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                return None
            raise

    def _run(self) -> None:
        peers = [i for i in range(self.count) if i != self.me]
        last = {i: (None, time.monotonic()) for i in peers}
        beat = 0
        unreachable_since = None
        while not self.stopped.is_set():
            try:
                beat += 1
                self.client.key_value_set(f"alad/beat/{self.me}", str(beat), allow_overwrite=True)
                now = time.monotonic()
                for peer in peers:
                    failed = self._try_get(f"alad/failed/{peer}")
                    if failed is not None:
                        die(f"process {peer} of {self.count} stopped: {failed}")
                    if self._try_get(f"alad/done/{peer}") is not None:
                        last[peer] = (None, now)
                        continue
                    value = self._try_get(f"alad/beat/{peer}")
                    if value != last[peer][0]:
                        last[peer] = (value, now)
                    elif now - last[peer][1] > DEAD_AFTER_S:
                        die(f"process {peer} of {self.count} stopped (no heartbeat for {DEAD_AFTER_S:.0f} s:"
                            f" killed, out of memory or its machine is gone)")
                unreachable_since = None
            except Exception as e:  # the store lives in process 0: unreachable means process 0 is gone
                if self.stopped.is_set():
                    return
                unreachable_since = unreachable_since or time.monotonic()
                if self.me != 0 and time.monotonic() - unreachable_since > 2 * BEAT_EVERY_S:
                    die(f"process 0 of {self.count} stopped (its coordination service at {self.coordinator} cannot"
                        f" be reached: {str(e).splitlines()[0][:160]})")
            self.stopped.wait(BEAT_EVERY_S)


def start_watchdog() -> Watchdog:
    global _watchdog
    if _watchdog is None:
        coordinator = os.environ.get("ALAD_COORDINATOR") or "the coordinator"
        _watchdog = Watchdog(_client(), jax.process_index(), jax.process_count(), coordinator).start()
    return _watchdog


def finished() -> None:
    """This process ended its run normally: stop the watchdog, wait for the others, then exit normally."""
    if jax.process_count() == 1:
        return
    barrier("finished")
    if _watchdog is not None:
        _watchdog.stop()


def die(message: str, code: int = 3) -> None:
    """Print ``error: <message>; <resume hint>`` and leave now, without waiting on dead peers."""
    # On a line of its own: a progress bar may hold the cursor mid-line.
    print(f"\nerror: {message}; {RESUME_HINT}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def fail(error: BaseException) -> None:
    """The exit of a multi-process run that raised ``error`` (no-op on one process: the caller reports it).

    Tells the peers (their watchdogs stop them with a line naming this
    process), prints one line here and exits. An error raised inside a
    collective because a peer vanished gives the watchdog a moment to name
    that peer first.
    """
    if jax.process_count() == 1:
        return
    me, count = jax.process_index(), jax.process_count()
    if isinstance(error, AladError):
        summary, code = str(error), 2
    elif isinstance(error, KeyboardInterrupt):
        summary, code = "interrupted", 130
    else:
        summary, code = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}", 1
        if _broken_by_peer(error):  # the watchdog names the peer that left, within DEAD_AFTER_S
            time.sleep(DEAD_AFTER_S + 3 * BEAT_EVERY_S)
        elif not isinstance(error, OSError):
            traceback.print_exception(error, file=sys.stderr)  # a bug: its trace, then the one line
    with contextlib.suppress(Exception):
        _client().key_value_set(f"alad/failed/{me}", summary, allow_overwrite=True)
    die(f"process {me} of {count}: {summary}", code)


# How a collective or the coordination service reports a peer that went away (gloo, NCCL, gRPC).
_PEER_GONE = ("connection closed by peer", "connection reset", "gloo", "nccl", "unavailable", "deadline_exceeded",
              "socket closed", "broken pipe", "coordination service")


def _broken_by_peer(error: BaseException) -> bool:
    text = f"{type(error).__module__} {error}".lower()
    return "jaxlib" in text or any(marker in text for marker in _PEER_GONE)
