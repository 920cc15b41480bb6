"""Padded batches whose shapes come from a small fixed set, so jit compiles a bounded number of programs.

Each feature row is padded to the smallest bucket length that holds it, and
batches only mix rows of one bucket. Every batch of a bucket has the same
number of rows (the last one is filled with empty rows: attention mask 0,
labels :data:`IGNORE_INDEX`, ``feature_index`` -1), so there are at most
``len(buckets)`` shapes.

Multi-host: all processes plan the same global batches (same seed and
epoch), and process ``p`` of ``P`` keeps rows ``[p*B/P, (p+1)*B/P)`` of each,
ready for ``jax.make_array_from_process_local_data``. Concatenating the
shares of all processes in process order gives the single-process batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alad_jax.data.tagging import IGNORE_INDEX, TaggingFeatures
from alad_jax.errors import AladError

# The one ladder of bucket lengths: few (each is one jit compilation per step function), about 1.5x
# apart, so a row carries at most ~1/3 padding.
LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512)


def length_buckets(max_length: int) -> tuple[int, ...]:
    """Bucket lengths for rows of at most ``max_length`` sub-words, ascending, the last ``max_length``.

    Training, evaluation, the feature cache, the teacher's inputs and the predictor all bucket by this
    one function (the :data:`LADDER` below ``max_length``).
    """
    return tuple(b for b in LADDER if b < max_length) + (max_length,)


DEFAULT_BUCKETS = length_buckets(512)  # BERT's longest input

Batch = dict[str, np.ndarray]


def pad_rows(rows: Sequence[Sequence[int]], length: int, *, num_rows: int | None = None, pad_value: int = 0,
             dtype=np.int32) -> np.ndarray:
    """Rows of varying length (each ``<= length``) as one ``[num_rows, length]`` array.

    ``num_rows`` (default ``len(rows)``) may exceed ``len(rows)``: the extra rows are all
    ``pad_value``. A row's positions past its end are ``pad_value``.
    """
    out = np.full((len(rows) if num_rows is None else num_rows, length), pad_value, dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket length >= ``n``."""
    for length in buckets:
        if n <= length:
            return length
    raise AladError(
        f"a sequence of {n} tokens is longer than the largest bucket ({max(buckets)}); "
        "lower max_length or add a larger bucket"
    )


def _split(n: int, most: int, multiple: int, *, evenly: bool = True) -> tuple[list[slice], int]:
    """``n`` items in ``ceil(n / most)`` batches: (each batch's slice, the rows every batch is padded to).

    ``evenly``: shared evenly (sizes differ by at most one, so no batch is mostly padding);
    otherwise full batches of ``most`` and a shorter last one. The padded size is the largest
    batch (``most`` when not even) rounded up to ``multiple``.
    """
    count = -(-n // most)
    base, extra = divmod(n, count) if evenly else (most, 0)
    bounds = np.minimum(np.cumsum([0] + [base + (i < extra) for i in range(count)]), n)
    per_batch = -(-(base + (extra > 0)) // multiple) * multiple
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])], per_batch


def _rows_per_batch(length: int, batch_size: int | None, token_budget: int | None) -> int:
    """Most real rows in a global batch: ``batch_size``, or the whole rows the token budget holds (at least one)."""
    if batch_size is not None:
        return batch_size
    return max(token_budget // length, 1)


def plan_batches(
    lengths: Sequence[int],
    *,
    batch_size: int | None = None,
    token_budget: int | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
) -> list[tuple[int, np.ndarray]]:
    """The global batches as ``(bucket_length, rows)``; ``rows`` int ``[B]`` are row indices, -1 for padding rows.

    ``B`` is a multiple of ``process_count`` and of ``row_multiple`` (the
    devices a batch is split over). A bucket's ``n`` rows go into as many
    batches as ``batch_size`` (or ``budget // length``) real rows each would
    need, ``ceil(n / real)``, and are shared evenly among them (sizes differ by
    at most one, so no batch is mostly padding); the batches of a bucket are
    filled with empty rows up to one shape, the largest share rounded up to the
    multiple. Every process and device count thus sees the same real rows in
    the same batches and order (the losses ignore empty rows).

    Without shuffling: buckets in ascending length, rows in input order. With
    shuffling (from ``(seed, epoch)``): rows shuffled within each bucket, then
    the batches shuffled across buckets.
    """
    if (batch_size is None) == (token_budget is None):
        raise AladError("batching: give exactly one of batch_size and token_budget")
    if process_count < 1:
        raise AladError(f"batching: process_count={process_count} must be >= 1")
    if row_multiple < 1:
        raise AladError(f"batching: row_multiple={row_multiple} must be >= 1")
    multiple = int(np.lcm(process_count, row_multiple))
    if batch_size is not None and (batch_size < 1 or batch_size % multiple):
        raise AladError(
            f"batching: batch_size={batch_size} must be a positive multiple of {multiple} (the {process_count}"
            f" processes and the {row_multiple} devices a batch is split over)"
        )
    if token_budget is not None and token_budget < 1:
        raise AladError(f"batching: token_budget={token_budget} must be positive")
    if list(buckets) != sorted(set(buckets)) or min(buckets) < 1:
        raise AladError(f"batching: buckets {list(buckets)} must be distinct positive lengths in ascending order")
    by_bucket: dict[int, list[int]] = {}
    for row, n in enumerate(lengths):
        by_bucket.setdefault(bucket_length(n, buckets), []).append(row)
    rng = np.random.default_rng((seed, epoch))
    plan = []
    for length in sorted(by_bucket):
        rows = np.asarray(by_bucket[length], np.int64)
        if shuffle:
            rows = rng.permutation(rows)
        # As many batches as full ones of `real` rows need, the rows shared evenly among them (sizes
        # differ by at most one): a bucket's last batch is not mostly empty rows, and every batch of
        # the bucket keeps one shape, the largest share rounded up to the multiple.
        spans, per_batch = _split(len(rows), _rows_per_batch(length, batch_size, token_budget), multiple)
        for span in spans:
            chunk = rows[span]
            plan.append((length, np.pad(chunk, (0, per_batch - len(chunk)), constant_values=-1)))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def make_batches(
    features: TaggingFeatures,
    *,
    batch_size: int | None = None,
    token_budget: int | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
    pad_id: int = 0,
) -> list[Batch]:
    """This process's share of every batch, as numpy arrays.

    Exactly one of ``batch_size`` (rows per global batch) and ``token_budget``
    (at most budget // bucket length real rows, at least one, filled with empty rows
    up to a multiple of ``process_count`` and ``row_multiple``: see
    :func:`plan_batches`). Keys, with ``b = B / P`` local rows and ``L`` the
    bucket length:

    - ``input_ids`` int32 ``[b, L]`` (``pad_id`` past each row's end)
    - ``attention_mask`` int32 ``[b, L]``
    - ``token_type_ids`` int32 ``[b, L]`` (the rows' segment ids, zeros when they have none)
    - ``labels`` int32 ``[b, L]`` (:data:`IGNORE_INDEX` on padding)
    - ``feature_index`` int32 ``[b]`` (row in ``features``, -1 for a padding row)
    """
    if not 0 <= process_index < process_count:
        raise AladError(f"batching: process_index={process_index} must be in [0, {process_count})")
    lengths = [len(ids) for ids in features.input_ids]
    plan = plan_batches(
        lengths,
        batch_size=batch_size,
        token_budget=token_budget,
        buckets=buckets,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        process_count=process_count,
        row_multiple=row_multiple,
    )
    batches = []
    for length, rows in plan:
        share = len(rows) // process_count
        local = rows[process_index * share : (process_index + 1) * share]
        segments = getattr(features, "token_type_ids", None)

        def pad(row_values, value=0):  # a padding row (-1) stays all ``value``
            return pad_rows([row_values(row) if row >= 0 else () for row in local], length, pad_value=value)

        batches.append(
            {
                "input_ids": pad(lambda row: features.input_ids[row], pad_id),
                "attention_mask": pad(lambda row: np.ones(lengths[row], np.int32)),
                "token_type_ids": pad(lambda row: segments[row]) if segments is not None
                else np.zeros((share, length), np.int32),
                "labels": pad(lambda row: features.labels[row], IGNORE_INDEX),
                "feature_index": local.astype(np.int32),
            }
        )
    return batches


def batch_shapes(batches: Sequence[Batch]) -> set[tuple[int, int]]:
    """The distinct ``[rows, length]`` shapes: how many programs a jitted step compiles for these batches."""
    return {tuple(b["input_ids"].shape) for b in batches}


def rows_from_batches(batches: Sequence[Batch], outputs: Sequence[np.ndarray], num_rows: int) -> list[np.ndarray]:
    """Per-batch outputs ``[B, L, ...]`` -> per-feature-row outputs ``[len_i, ...]`` (padding dropped).

    Use on the batches of one process holding every row (single host, or
    outputs gathered to one host); the result feeds
    :func:`alad_jax.data.tagging.stitch_predictions`.
    """
    rows: list[np.ndarray | None] = [None] * num_rows
    for batch, output in zip(batches, outputs, strict=True):
        output = np.asarray(output)
        lengths = batch["attention_mask"].sum(axis=1)
        for i, row in enumerate(batch["feature_index"]):
            if row >= 0:
                rows[row] = output[i, : lengths[i]]
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        raise ValueError(f"{len(missing)} feature rows have no output (first: {missing[:5]}); pass every batch")
    return rows


# -- sequence packing -----------------------------------------------------------------------------
#
# A packed row holds several feature rows end to end, each followed by ``gap`` empty positions
# (attention mask 0): ``segment_ids`` (1, 2, ... within a packed row, 0 at empty positions) make
# attention block-diagonal, ``position_ids`` restart at 0 for every feature row, and the gap keeps
# an AlAd window of K <= 2 * gap + 1 tokens inside its own sentence (the AlAd zeroes masked
# neighbours, so a window at a sentence's edge sees zeros, as at a batch edge). A packed batch thus
# computes every feature row exactly as a padded batch does, on (almost) no padding and one shape.


def pack_rows(lengths: Sequence[int], capacity: int, *, gap: int = 0, order: Sequence[int] | None = None
              ) -> list[list[int]]:
    """Feature rows packed into as few rows of ``capacity`` positions as best-fit decreasing finds.

    Row ``i`` takes ``lengths[i]`` positions plus ``gap`` empty ones after it (the
    gap may run past the packed row's end). Rows are placed longest first, ties in
    ``order`` (default: index order), each into the fullest packed row that has room.
    The number of packed rows depends on the lengths only, not on ``order``.
    Returns the packed rows as lists of row indices, in placement order.
    """
    if capacity < 1 or gap < 0:
        raise AladError(f"packing: capacity={capacity} must be positive and gap={gap} non-negative")
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        bad = int(np.argmax((lengths > capacity) | (lengths < 1)))
        raise AladError(f"packing: row {bad} has {lengths[bad]} tokens; rows must hold 1 to {capacity} tokens")
    rank = np.empty(len(lengths), np.int64)
    rank[np.asarray(order if order is not None else np.arange(len(lengths)), np.int64)] = np.arange(len(lengths))
    placed = np.lexsort((rank, -lengths))  # longest first, ties by `order`
    room = capacity + gap  # a row's trailing gap may run past the end
    by_free: list[list[int]] = [[] for _ in range(room + 1)]  # free positions -> packed rows (stacks)
    bins: list[list[int]] = []
    free: list[int] = []
    for row in placed:
        need = int(lengths[row]) + gap
        target = next((f for f in range(need, room + 1) if by_free[f]), None)
        if target is None:
            bins.append([])
            free.append(room)
            index = len(bins) - 1
        else:
            index = by_free[target].pop()
        bins[index].append(int(row))
        free[index] -= need
        by_free[free[index]].append(index)
    return bins


def packed_rows_per_batch(lengths: Sequence[int], batch_size: int, capacity: int, *, gap: int = 0) -> int:
    """Real packed rows per global batch so that a batch holds ``batch_size`` feature rows on average.

    ``batch_size * packed / feature rows``, rounded, at least one. It depends on the data alone, never on
    the processes or devices: :func:`make_packed_batches` pads each batch with empty rows to a multiple
    of those, so every layout splits an epoch into the same batches of the same real rows.
    """
    packed = len(pack_rows(lengths, capacity, gap=gap))
    return max(round(batch_size * packed / max(len(lengths), 1)), 1)


def make_packed_batches(
    features: TaggingFeatures,
    *,
    rows_per_batch: int,
    length: int,
    gap: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    row_multiple: int = 1,
    pad_id: int = 0,
    share_evenly: bool = True,
) -> list[Batch]:
    """This process's share of every packed batch: ``rows_per_batch`` packed rows of ``length`` positions.

    The feature rows are packed by :func:`pack_rows` (ties shuffled from
    ``(seed, epoch)``), the packed rows shuffled and shared evenly among
    ``ceil(packed / rows_per_batch)`` batches, each filled with empty rows to one
    shape (the largest share rounded up to a multiple of ``process_count`` and
    ``row_multiple``). Every epoch has the same number of batches. ``share_evenly=False``
    fills every batch but the last and gives every batch ``rows_per_batch`` rows (one shape
    for any data: evaluation). Keys, ``[b, length]``:

    - ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``: as :func:`make_batches`
    - ``segment_ids`` int32: 1, 2, ... per feature row within a packed row, 0 at empty positions
    - ``position_ids`` int32: the position within its feature row (0 at empty positions)
    - ``packed_index`` int32: the feature row of each position, -1 at empty positions
    """
    if not 0 <= process_index < process_count:
        raise AladError(f"batching: process_index={process_index} must be in [0, {process_count})")
    if rows_per_batch < 1:
        raise AladError(f"packing: rows_per_batch={rows_per_batch} must be positive")
    lengths = [len(ids) for ids in features.input_ids]
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(lengths)) if shuffle else None
    bins = pack_rows(lengths, length, gap=gap, order=order)
    if shuffle:
        bins = [bins[i] for i in rng.permutation(len(bins))]
    multiple = int(np.lcm(process_count, row_multiple))
    spans, per_batch = _split(len(bins), rows_per_batch, multiple, evenly=share_evenly)
    segments = getattr(features, "token_type_ids", None)
    batches = []
    for span in spans:
        chunk = bins[span]
        share = per_batch // process_count
        local = (chunk + [[]] * (per_batch - len(chunk)))[process_index * share : (process_index + 1) * share]
        batch = {
            "input_ids": np.full((share, length), pad_id, np.int32),
            "attention_mask": np.zeros((share, length), np.int32),
            "token_type_ids": np.zeros((share, length), np.int32),
            "labels": np.full((share, length), IGNORE_INDEX, np.int32),
            "segment_ids": np.zeros((share, length), np.int32),
            "position_ids": np.zeros((share, length), np.int32),
            "packed_index": np.full((share, length), -1, np.int32),
        }
        for r, rows in enumerate(local):
            at = 0
            for k, row in enumerate(rows):
                n = lengths[row]
                span = slice(at, at + n)
                batch["input_ids"][r, span] = features.input_ids[row]
                batch["attention_mask"][r, span] = 1
                if segments is not None:
                    batch["token_type_ids"][r, span] = segments[row]
                batch["labels"][r, span] = features.labels[row]
                batch["segment_ids"][r, span] = k + 1
                batch["position_ids"][r, span] = np.arange(n)
                batch["packed_index"][r, span] = row
                at += n + gap
        batches.append(batch)
    return batches


def rows_from_packed(batches: Sequence[Batch], outputs: Sequence[np.ndarray], num_rows: int) -> list[np.ndarray]:
    """Per-batch outputs ``[B, L, ...]`` of packed batches -> per-feature-row outputs ``[len_i, ...]``.

    The packed counterpart of :func:`rows_from_batches` (one process holding every row).
    """
    rows, positions, values = [], [], []
    for batch, output in zip(batches, outputs, strict=True):
        real = batch["packed_index"] >= 0
        rows.append(batch["packed_index"][real])
        positions.append(batch["position_ids"][real])
        values.append(np.asarray(output)[real])
    rows, positions, values = np.concatenate(rows), np.concatenate(positions), np.concatenate(values)
    order = np.lexsort((positions, rows))
    counts = np.bincount(rows, minlength=num_rows)
    if len(counts) > num_rows or not counts.all():
        missing = np.flatnonzero(counts[:num_rows] == 0)
        raise ValueError(f"{len(missing)} feature rows have no output (first: {missing[:5].tolist()}); "
                         "pass every packed batch")
    return np.split(values[order], np.cumsum(counts)[:-1])
