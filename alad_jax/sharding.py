"""Sharding: one mesh, one table of partition rules, one way to feed batches.

Every training step of every stage runs as ``jax.jit`` over a two-axis device
mesh (what ``pjit`` became):

- ``data``: pure data parallelism; parameters are replicated along it.
- ``fsdp``: data parallelism whose members also split the parameters and the
  optimizer state between them (ZeRO-3 / FSDP); XLA gathers a weight just
  before it is used.

A batch is split over both axes together (every device sees different rows),
parameters along ``fsdp`` only, so ``data=N, fsdp=1`` is plain replicated data
parallelism and ``data=1, fsdp=N`` is full FSDP. The same code runs on one CPU,
one GPU, a TPU VM and a multi-host pod slice: only the mesh shape changes.

Multi-host: :func:`initialize_distributed` joins the processes, each process
feeds only its own rows (:func:`process_rows`, :func:`shard_batch`), only the
primary process writes files (:func:`is_primary`), and checkpoints are sharded
orbax checkpoints that restore onto any mesh (:func:`save_sharded`,
:func:`restore_sharded`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alad_jax.errors import AladError

PyTree = Any

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Batch rows are split over every device: FSDP members are data-parallel too.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Regex over the '/'-joined state path (``re.search``, first match wins) ->
# PartitionSpec. Patterns are anchored at the end of the path, so an optax
# state leaf such as ``0/mu/layers/1/ffn/output/kernel`` gets the same spec as
# the parameter it mirrors. A dim whose size the mesh axis does not divide is
# replicated instead (:func:`fit_spec`); anything unmatched is replicated.
RULES: tuple[tuple[str, PartitionSpec], ...] = (
    # Biases and LayerNorm scales: a few KB each, not worth a gather.
    (r"(^|/)(bias|scale)$", PartitionSpec()),
    # Embedding tables [rows, hidden]: split hidden, because vocabulary sizes
    # (30522 = 2 * 3 * 5087) rarely divide by the device count; hidden sizes do.
    (r"(^|/)embedding$", PartitionSpec(None, FSDP_AXIS)),
    # Dense kernels [in, out]: encoder attention and FFN, adapter fc1/fc2,
    # task heads. The input dim is the large one in every one of them.
    (r"(^|/)kernel$", PartitionSpec(FSDP_AXIS, None)),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. ``-1`` for one axis means "all devices the other leaves"."""

    data: int = -1
    fsdp: int = 1


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int]:
    """Resolves ``config`` to ``(data, fsdp)`` whose product is ``num_devices``."""
    data, fsdp = config.data, config.fsdp
    for name, size in (("mesh.data", data), ("mesh.fsdp", fsdp)):
        if size == 0 or size < -1:
            raise AladError(
                f"{name}={size} is not a mesh axis size: use a positive integer, or -1 to infer it"
                f" from the {num_devices} devices"
            )
    if data == -1 and fsdp == -1:
        raise AladError(
            "mesh.data and mesh.fsdp are both -1: set at most one of them to -1 (inferred from the"
            f" {num_devices} devices)"
        )
    known = data if fsdp == -1 else fsdp
    if data == -1 or fsdp == -1:
        if num_devices % known:
            raise AladError(
                f"mesh data={data} fsdp={fsdp} cannot cover {num_devices} devices: {num_devices} is not"
                f" divisible by {known}; pick sizes whose product is {num_devices}"
            )
        data, fsdp = (num_devices // fsdp, fsdp) if data == -1 else (data, num_devices // data)
    if data * fsdp != num_devices:
        raise AladError(
            f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices but {num_devices} are present:"
            f" pick sizes whose product is {num_devices} (or -1 for one of them)"
        )
    return data, fsdp


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes).

    Axes are ``Auto``: XLA propagates shardings through the model, so the
    modelling code stays free of sharding annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(
        shape,
        (DATA_AXIS, FSDP_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def path_str(path) -> str:
    """'/'-joined names of a jax key path, without nnx's trailing ``value``.

    ``(DictKey('layers'), DictKey(0), DictKey('query'), DictKey('kernel'),
    GetAttrKey('value'))`` -> ``'layers/0/query/kernel'``.
    """
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            names.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            names.append(str(key.key))
        else:
            names.append(str(key))
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names.pop()
    return "/".join(names)


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> PartitionSpec:
    """``spec`` for an array of ``shape``; dims the mesh cannot split evenly are replicated.

    A spec longer than the array's rank is cut to the rank; trailing dims
    beyond the spec are replicated.
    """
    dims = []
    for size, axes in zip(shape, tuple(spec)[: len(shape)]):
        if axes is None:
            dims.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(axis_sizes[name] for name in names)
        dims.append(axes if size % ways == 0 else None)
    while dims and dims[-1] is None:
        dims.pop()
    return PartitionSpec(*dims)


def spec_for(path: str, shape: tuple[int, ...], axis_sizes: Mapping[str, int], rules=RULES) -> PartitionSpec:
    """The PartitionSpec that ``rules`` give the array at ``path`` (replicated if none match)."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            return fit_spec(spec, shape, axis_sizes)
    return PartitionSpec()


def state_shardings(state: PyTree, mesh: Mesh, rules=RULES) -> PyTree:
    """NamedShardings for every array leaf of ``state`` (same structure).

    ``state`` is an ``nnx.State``, a nested dict, an optax state or any pytree
    of arrays / ``jax.ShapeDtypeStruct``.
    """
    axis_sizes = dict(mesh.shape)

    def one(path, leaf):
        return NamedSharding(mesh, spec_for(path_str(path), np.shape(leaf), axis_sizes, rules))

    return jax.tree_util.tree_map_with_path(one, state)


def opt_state_shardings(opt_state: PyTree, params_shardings: PyTree, mesh: Mesh) -> PyTree:
    """Shardings for an optax state: each param-shaped leaf is sharded like its parameter.

    A leaf mirrors a parameter when the parameter's path is a suffix of the
    leaf's path (``0/mu/layers/0/query/kernel`` mirrors ``layers/0/query/kernel``);
    the longest such path wins. Leaves that mirror nothing (step counts) are
    replicated; a mirrored spec that does not fit the leaf's shape (factored
    second moments) is fitted dim by dim.
    """
    by_path = {
        path_str(path): sharding.spec
        for path, sharding in jax.tree_util.tree_leaves_with_path(
            params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
        )
    }
    axis_sizes = dict(mesh.shape)

    def one(path, leaf):
        name = path_str(path)
        best = None
        for param_path in by_path:
            if (name == param_path or name.endswith("/" + param_path)) and (
                best is None or len(param_path) > len(best)
            ):
                best = param_path
        spec = PartitionSpec() if best is None else by_path[best]
        return NamedSharding(mesh, fit_spec(spec, np.shape(leaf), axis_sizes))

    return jax.tree_util.tree_map_with_path(one, opt_state)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, RNG keys, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (dim 0) split over every device of the mesh; other dims whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Places host or single-device values, identical on every process, onto ``shardings``.

    ``shardings`` is a pytree prefix of ``tree``. On one process this is
    ``jax.device_put``; across processes each process fills only its own
    devices from its copy of the value.
    """

    def one(x, sharding):
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            # Typed PRNG keys have no numpy form: move their raw bits, re-wrap.
            return jax.random.wrap_key_data(one(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` (the same on every process) replicated on every device of ``mesh``."""
    return put(tree, replicated(mesh))


class TrainShardings(NamedTuple):
    """What a step is jitted with: ``in_shardings=(params, opt_state, batch, replicated)``."""

    params: PyTree
    opt_state: PyTree
    batch: NamedSharding
    replicated: NamedSharding


def shard_train_state(params: PyTree, opt_state: PyTree, mesh: Mesh, rules=RULES):
    """Places trainable params and their optax state on ``mesh`` by ``rules``.

    Returns ``(params, opt_state, TrainShardings)``. Jit the step as::

        step = jax.jit(train_step,
                       in_shardings=(sh.params, sh.opt_state, sh.batch, sh.replicated),
                       out_shardings=(sh.params, sh.opt_state, sh.replicated))
    """
    params_sh = state_shardings(params, mesh, rules)
    opt_sh = opt_state_shardings(opt_state, params_sh, mesh)
    shardings = TrainShardings(params_sh, opt_sh, batch_sharding(mesh), replicated(mesh))
    return put(params, params_sh), put(opt_state, opt_sh), shardings


def init_train_state(params: PyTree, optimizer, mesh: Mesh, rules=RULES):
    """Places params on ``mesh`` by ``rules`` and creates their optax state already sharded.

    Prefer it to ``jax.jit(optimizer.init)``: optax builds moments with
    ``zeros_like``, which carries no sharding, so an unconstrained jit puts the
    whole state on one device (and a step jitted with the params' shardings
    then fails with "incompatible devices").

    Returns ``(params, opt_state, TrainShardings)``.
    """
    params_sh = state_shardings(params, mesh, rules)
    params = put(params, params_sh)
    opt_sh = opt_state_shardings(jax.eval_shape(optimizer.init, params), params_sh, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    return params, opt_state, TrainShardings(params_sh, opt_sh, batch_sharding(mesh), replicated(mesh))


def _local_device_count(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process reads: block ``process_index`` of ``process_count``.

    The global batch size must divide by the number of devices. Where JAX
    puts each process's rows in the global array follows the mesh's device
    order, so row order may differ from the host's; every row is there once,
    which is all a mean-over-rows loss needs.
    """
    if global_batch_size % mesh.size:
        raise AladError(
            f"batch size {global_batch_size} does not divide over the {mesh.size} devices of the mesh:"
            f" use a multiple of {mesh.size}"
        )
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays whose rows are split over ``mesh`` from each process's own rows.

    ``local_batch``: ``name -> [local_rows, ...]``; on one process that is the
    whole batch, on ``P`` processes each holds ``global_rows / P`` rows
    (see :func:`process_rows`). Returns ``name -> [global_rows, ...]``.
    """
    sharding = batch_sharding(mesh)
    local_devices = _local_device_count(mesh)
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise AladError(f"batch field '{name}' is a scalar: batch fields need a leading row dimension")
        rows = value.shape[0]
        if rows % local_devices:
            raise AladError(
                f"batch field '{name}' has shape {value.shape} on process {jax.process_index()}: its rows"
                f" must divide over the {local_devices} local devices; use a per-process batch size that"
                f" is a multiple of {local_devices}"
            )
        if jax.process_count() == 1:
            out[name] = jax.device_put(value, sharding)
        else:
            global_shape = (rows * jax.process_count(), *value.shape[1:])
            out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def gather_to_host(tree: PyTree) -> PyTree:
    """Full numpy copies of (possibly multi-process sharded) arrays, on every process.

    Every process must call it (it is a collective when arrays span processes).
    """

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(one, tree)


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


def abstract_like(tree: PyTree, shardings: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves carrying ``shardings``: a restore target for :func:`restore_sharded`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def save_sharded(path: str | os.PathLike, pytree: PyTree) -> None:
    """Writes ``pytree`` as an orbax checkpoint directory at ``path`` (overwritten if present).

    All processes call it; each writes the shards it holds. Blocks until the
    checkpoint is complete.
    """
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(path), pytree, force=True)


def restore_sharded(path: str | os.PathLike, abstract_target: PyTree) -> PyTree:
    """Reads a :func:`save_sharded` checkpoint onto the shardings of ``abstract_target``.

    ``abstract_target``: same structure as the saved tree, leaves
    ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` (:func:`abstract_like`)
    or arrays whose sharding is used; the mesh may differ from the one that
    wrote the checkpoint.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise AladError(f"checkpoint directory {path} does not exist: pass the path save_sharded wrote")
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, abstract_target)
