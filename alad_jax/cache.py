"""Cached frozen hidden states for the alignment stages.

In stages 1 and 2 both the student and the teacher are frozen, so their last
hidden states are the same every epoch. They are computed once, stored in
bfloat16 (raw ``uint16`` bits in ``.npy`` files, memory-mapped back) under a
key derived from the parameters and configuration of both encoders and the
tokenized rows, and the adapter then trains from the cache. Any change of
model, data or tokenizer changes the key, so a stale cache is never read.
Stored per token (no padding), so one cache serves any batching or bucketing.

With several processes each encodes only its own contiguous share of the rows and writes it as a
part (``part<i>/``) of the one cache directory; every process then reads the parts memory-mapped
(the work directory is shared), so every global batch gathers the same states as with one process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from alad_jax import distributed
from alad_jax.data.batching import pack_rows
from alad_jax.errors import AladError
from alad_jax.models import precision

BF16 = ml_dtypes.bfloat16


def fingerprint_params(module: nnx.Module) -> str:
    """A digest of every parameter's bytes, names and shapes (invalidates caches on any change)."""
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]:
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.shape}:{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint_encoder(encoder: nnx.Module) -> str:
    """Parameters plus the architecture: a config change (e.g. the activation) also changes the outputs."""
    return f"{type(encoder).__name__}:{getattr(encoder, 'config', None)!r}:{fingerprint_params(encoder)}"


def fingerprint_rows(rows: Sequence[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update(np.asarray(row, np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, input_ids, attention_mask, token_type_ids, segment_ids, position_ids):
    encoder = nnx.merge(graphdef, state)
    return encoder(input_ids, attention_mask, token_type_ids, segment_ids=segment_ids,
                   position_ids=position_ids).last_hidden_state.astype(jnp.bfloat16)


def _tmp_dir(path: Path) -> Path:
    """This process's own temporary directory for the cache ``path`` (emptied)."""
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _open_part(tmp: Path, name: str, tokens: int, width: int) -> np.ndarray:
    """``tmp/<name>.npy`` created on disk as ``[tokens, width]`` bfloat16 bits, memory-mapped for writing:
    states go to disk batch by batch, no whole-corpus array in RAM."""
    bits = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint16, shape=(tokens, width))
    return bits.view(BF16)


def _publish(path: Path, parts: dict[str, np.ndarray], offsets: np.ndarray, num_rows: int,
             tmp: Path | None = None) -> None:
    """Write the arrays into a temporary directory of this process alone, then rename it to ``path``.

    ``tmp``: that directory, already holding the parts written there (:func:`_open_part`);
    only the parts not yet on disk there are saved.

    Several processes of one run (or two runs) may build the same cache into
    the same directory at once: each writes its own
    ``<key>.tmp-<host>-<pid>`` (no two writers share a file) and the first
    rename wins; a later writer finds ``path`` complete (the content is the
    same: the key covers models and rows) and drops its copy.
    """
    tmp = tmp if tmp is not None else _tmp_dir(path)
    for name, array in parts.items():
        if isinstance(array, np.memmap) or isinstance(getattr(array, "base", None), np.memmap):
            array.flush()
        else:
            np.save(tmp / f"{name}.npy", array.view(np.uint16))
    np.save(tmp / "offsets.npy", offsets)
    (tmp / "done.json").write_text(json.dumps({"rows": num_rows, "tokens": int(offsets[-1])}))
    try:
        os.replace(tmp, path)
    except OSError:
        if not (path / "done.json").is_file():  # not another writer's finished copy: a real failure
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        # A writer killed before its rename leaves a temporary directory behind; a finished cache makes them moot.
        for stale in path.parent.glob(f"{path.name}.tmp*"):
            if stale != tmp and _writer_is_gone(stale):
                shutil.rmtree(stale, ignore_errors=True)


def _writer_is_gone(tmp: Path) -> bool:
    """Whether the temporary directory ``tmp`` was left by a writer that no longer runs.

    ``<key>.tmp`` (the single-writer name of earlier versions) always was; for
    ``<key>.tmp-<host>-<pid>`` only a process of this host can be checked.
    """
    if tmp.name.endswith(".tmp"):
        return True
    host, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _encode_rows(encoder: nnx.Module, rows: Sequence[np.ndarray], token_types: Sequence[np.ndarray] | None,
                 batch_size: int, buckets: Sequence[int] | None, matmul_dtype: str = "float32",
                 out: np.ndarray | None = None) -> np.ndarray:
    """``encoder``'s last hidden states of every row, concatenated: bf16 ``[sum of lengths, D]``, written
    into ``out`` when given (e.g. a file on disk, :func:`_open_part`).

    The rows are packed (:func:`alad_jax.data.batching.pack_rows`) into blocks of
    ``batch_size`` rows of the largest bucket (without buckets, or when a row is longer:
    the power of two, at least 16, that holds the longest row): one compiled shape, almost no padding, and each row
    computed as if it were alone (block-diagonal attention, its own positions). Its matmuls
    run in ``matmul_dtype`` (:func:`alad_jax.models.precision.step_graphdef`).
    """
    graphdef, state = nnx.split(encoder)
    graphdef = precision.step_graphdef(graphdef, state, matmul_dtype=matmul_dtype, adapter_impl=None)  # no AlAd
    lengths = np.array([len(r) for r in rows], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if out is None:
        out = np.zeros((offsets[-1], encoder.config.hidden_size), BF16)
    if not len(rows):  # a process's share of fewer rows than processes
        return out
    longest = int(lengths.max())
    width = max(buckets) if buckets and longest <= max(buckets) else 1 << max(4, (longest - 1).bit_length())
    packed = pack_rows(lengths, width)
    for start in range(0, len(packed), batch_size):
        arrays = {k: np.zeros((batch_size, width), np.int32) for k in ("ids", "mask", "types", "segments", "positions")}
        placed = []  # (row, packed row, first position)
        for r, members in enumerate(packed[start:start + batch_size]):
            at = 0
            for k, i in enumerate(members):
                span = slice(at, at + lengths[i])
                arrays["ids"][r, span] = rows[i]
                arrays["mask"][r, span] = 1
                if token_types is not None:
                    arrays["types"][r, span] = token_types[i]
                arrays["segments"][r, span] = k + 1
                arrays["positions"][r, span] = np.arange(lengths[i])
                placed.append((i, r, at))
                at += lengths[i]
        hidden = np.asarray(_encode(graphdef, state, arrays["ids"], arrays["mask"], arrays["types"],
                                    arrays["segments"], arrays["positions"]))
        for i, r, at in placed:
            out[offsets[i]:offsets[i + 1]] = hidden[r, at:at + lengths[i]]
    return out


def _words_to_student_tokens(teacher: np.ndarray, teacher_rows, teacher_words, student_words) -> np.ndarray:
    """Per student token, the mean teacher state over the teacher's tokens of the same word (0 if none)."""
    out = np.zeros((sum(len(w) for w in student_words), teacher.shape[1]), BF16)
    t_start = s_start = 0
    for t_row, t_words, s_words in zip(teacher_rows, teacher_words, student_words):
        states = np.asarray(teacher[t_start:t_start + len(t_row)], np.float32)
        num = int(max(t_words.max(initial=-1), s_words.max(initial=-1))) + 1
        sums = np.zeros((num + 1, teacher.shape[1]), np.float32)  # the last slot collects -1 (no word)
        counts = np.zeros(num + 1, np.float32)
        np.add.at(sums, t_words, states)
        np.add.at(counts, t_words, 1.0)
        means = sums / np.maximum(counts, 1.0)[:, None]
        means[-1] = 0.0
        out[s_start:s_start + len(s_words)] = means[s_words].astype(BF16)
        t_start, s_start = t_start + len(t_row), s_start + len(s_words)
    return out


def shares(num_rows: int, count: int) -> np.ndarray:
    """Bounds of ``count`` contiguous, near-equal shares of ``num_rows`` rows: share ``i`` is ``[b[i], b[i+1])``."""
    return np.linspace(0, num_rows, count + 1).round().astype(np.int64)


def _encode_parts(tmp: Path, rows, student, teacher, token_types, batch_size, buckets, teacher_rows, teacher_words,
                  student_words, matmul_dtype) -> dict[str, np.ndarray]:
    """The student's and teacher's states of ``rows``, written into ``tmp`` as they are computed."""
    parts = {}
    for name, encoder in (("student", student), ("teacher", teacher)):
        encoder_rows = rows if name == "student" or teacher_rows is None else teacher_rows
        # Written to disk as computed; word-level teacher states are averaged in memory first (task data).
        out = None if name == "teacher" and teacher_words is not None else _open_part(
            tmp, name, int(sum(len(r) for r in encoder_rows)), encoder.config.hidden_size)
        parts[name] = _encode_rows(encoder, encoder_rows, None if encoder_rows is not rows else token_types,
                                   batch_size, buckets, matmul_dtype, out=out)
    if teacher_words is not None:
        parts["teacher"] = _words_to_student_tokens(parts["teacher"], teacher_rows, teacher_words, student_words)
    tokens = sum(len(r) for r in rows)
    if parts["teacher"].shape[0] != tokens:
        raise AladError(f"hidden cache: the teacher rows have {parts['teacher'].shape[0]} tokens, the student rows "
                        f"{tokens}; pass teacher_words and student_words when the tokenizations differ")
    return parts


class PartedRows:
    """The rows of several ``[n_i, D]`` arrays (memory-mapped cache parts) read as one ``[sum n_i, D]`` table."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.shape = (int(self.starts[-1]), self.parts[0].shape[1])
        self.dtype = self.parts[0].dtype
        self.nbytes = sum(p.nbytes for p in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (an integer array ``[N]``) -> ``[N, D]``, in that order."""
        index = np.asarray(index, np.int64)
        out = np.empty((len(index), self.shape[1]), self.dtype)
        part = np.searchsorted(self.starts, index, side="right") - 1
        for k, rows in enumerate(self.parts):
            here = part == k
            if here.any():
                out[here] = rows[index[here] - self.starts[k]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([np.asarray(p) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)


class HiddenCache:
    """Per-row student and teacher hidden states, ``[num_tokens, D]`` bf16 each, plus row offsets."""

    def __init__(self, student: "np.ndarray | PartedRows", teacher: "np.ndarray | PartedRows", offsets: np.ndarray):
        self.student = student
        self.teacher = teacher
        self.offsets = offsets

    @classmethod
    def build(cls, directory: Path, rows: Sequence[np.ndarray], student: nnx.Module, teacher: nnx.Module,
              *, token_types: Sequence[np.ndarray] | None = None, batch_size: int = 64,
              buckets: Sequence[int] | None = None, teacher_rows: Sequence[np.ndarray] | None = None,
              teacher_words: Sequence[np.ndarray] | None = None,
              student_words: Sequence[np.ndarray] | None = None,
              matmul_dtype: str = "float32") -> "HiddenCache":
        """Load the cache for (student, teacher, rows) from ``directory``, computing it if absent.

        ``rows`` are token id arrays (special tokens included), one per sequence;
        ``token_types`` their segment ids (QA: question 0, context 1), zeros if None.
        ``buckets`` are the padded lengths to compute at (the training buckets: no
        new compilations); default powers of two.

        A teacher with its own tokenizer (``alad_jax.data.teacher_inputs``):
        ``teacher_rows`` are its token ids per row (default ``rows``); with
        ``teacher_words`` (word per teacher token) and ``student_words`` (word per
        student token, row-relative, -1 for none) the cache stores, at each student
        token, the mean teacher state of its word (0 where the teacher lacks it),
        so it is gathered like a token-level cache and pooling it again over the
        student's sub-words gives the teacher's word mean.

        ``matmul_dtype="bfloat16"`` computes the states with bfloat16 matmul operands
        (float32 accumulation), as the train steps that read them multiply; they are
        stored as bfloat16 either way. It is part of the cache's key.
        """
        key = hashlib.blake2b(
            "|".join([fingerprint_encoder(student), fingerprint_encoder(teacher), fingerprint_rows(rows)]
                     + ([fingerprint_rows(token_types)] if token_types is not None else [])
                     + [fingerprint_rows(x) for x in (teacher_rows, teacher_words, student_words) if x is not None]
                     + ([f"matmul={matmul_dtype}"] if matmul_dtype != "float32" else [])
                     ).encode(),
            digest_size=12,
        ).hexdigest()
        path = Path(directory) / key
        if (path / "done.json").is_file():
            return cls._load(path)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        count = jax.process_count()
        if count > 1:  # this process's share of the rows, encoded into its part of the cache
            return cls._build_part(path, offsets, rows, student, teacher, token_types=token_types,
                                   batch_size=batch_size, buckets=buckets, teacher_rows=teacher_rows,
                                   teacher_words=teacher_words, student_words=student_words,
                                   matmul_dtype=matmul_dtype, index=jax.process_index(), count=count)
        tmp = _tmp_dir(path)
        parts = _encode_parts(tmp, rows, student, teacher, token_types, batch_size, buckets, teacher_rows,
                              teacher_words, student_words, matmul_dtype)
        _publish(path, parts, offsets, len(rows), tmp=tmp)
        del parts  # the arrays written to tmp: read them back memory-mapped, from where they now are
        return cls._load(path)

    @classmethod
    def _build_part(cls, path: Path, offsets: np.ndarray, rows, student, teacher, *, index: int, count: int,
                    **options) -> "HiddenCache":
        """Process ``index`` of ``count``: encode rows ``share(index)``, publish them as ``<key>.part<index>``;
        then process 0 moves every part into ``<key>/`` and marks it done; every process loads it."""
        lo, hi = (int(x) for x in shares(len(rows), count)[index:index + 2])
        part_path = path.with_name(f"{path.name}.part{index}")
        if not (part_path / "done.json").is_file():
            tmp = _tmp_dir(part_path)
            pick = lambda xs: None if xs is None else xs[lo:hi]  # noqa: E731
            parts = _encode_parts(tmp, rows[lo:hi], student, teacher, pick(options["token_types"]),
                                  options["batch_size"], options["buckets"], pick(options["teacher_rows"]),
                                  pick(options["teacher_words"]), pick(options["student_words"]),
                                  options["matmul_dtype"])
            _publish(part_path, parts, offsets[lo:hi + 1] - offsets[lo], hi - lo, tmp=tmp)
            del parts
        distributed.barrier(f"cache-{path.name}-parts")
        if distributed.is_primary() and not (path / "done.json").is_file():
            tmp = _tmp_dir(path)
            for i in range(count):
                os.replace(path.with_name(f"{path.name}.part{i}"), tmp / f"part{i}")
            np.save(tmp / "offsets.npy", offsets)
            (tmp / "done.json").write_text(json.dumps({"rows": len(rows), "tokens": int(offsets[-1]), "parts": count}))
            os.replace(tmp, path)
        distributed.barrier(f"cache-{path.name}-done")
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> "HiddenCache":
        done = json.loads((path / "done.json").read_text())
        if "parts" not in done:
            student = np.load(path / "student.npy", mmap_mode="r").view(BF16)
            teacher = np.load(path / "teacher.npy", mmap_mode="r").view(BF16)
            return cls(student, teacher, np.load(path / "offsets.npy"))
        parts = [path / f"part{i}" for i in range(done["parts"])]
        return cls(*(PartedRows([np.load(p / f"{name}.npy", mmap_mode="r").view(BF16) for p in parts])
                     for name in ("student", "teacher")), np.load(path / "offsets.npy"))

    def gather(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add ``student_hidden`` / ``teacher_hidden`` ``[B, L, D]`` (bf16, zeros at padding) for a row batch.

        ``batch["feature_index"]`` ``[B]`` names each row's cached sequence (-1:
        a padding row); ``attention_mask`` must count exactly that sequence's
        tokens, which catches a batch paired with another data set's cache.
        A packed batch (``packed_index`` and ``position_ids`` ``[B, L]``:
        :func:`alad_jax.data.batching.make_packed_batches`) names each position's
        sequence and place in it instead.
        """
        if "packed_index" in batch:
            rows = np.asarray(batch["packed_index"])
            valid = rows >= 0
            start = self.offsets[np.maximum(rows, 0)]
            lengths = self.offsets[np.maximum(rows, 0) + 1] - start
            positions = np.asarray(batch["position_ids"])
            if np.any(valid & (positions >= lengths)):
                bad = tuple(np.argwhere(valid & (positions >= lengths))[0])
                raise AladError(
                    f"hidden cache: packed batch position {bad} is token {positions[bad]} of sequence {rows[bad]}, "
                    f"which the cache holds with {lengths[bad]} tokens; the batch was made from other rows than "
                    "the cache, rebuild it from the same rows"
                )
            index = np.where(valid, start + positions, 0)
        else:
            rows = np.asarray(batch["feature_index"])
            length = batch["input_ids"].shape[1]
            start = self.offsets[np.maximum(rows, 0)]
            lengths = np.where(rows >= 0, self.offsets[np.maximum(rows, 0) + 1] - start, 0)
            real = np.asarray(batch["attention_mask"]).sum(axis=1)
            if np.any(lengths != real):
                bad = int(np.argmax(lengths != real))
                raise AladError(
                    f"hidden cache: batch row {bad} (sequence {rows[bad]}) has {real[bad]} tokens, the cache holds "
                    f"{lengths[bad]}; the batch was made from other rows than the cache, rebuild it from the same rows"
                )
            positions = np.arange(length)
            valid = positions[None, :] < lengths[:, None]
            index = np.where(valid, start[:, None] + positions[None, :], 0)  # [B, L] rows of the token arrays
        out = {}
        for name, table in (("student_hidden", self.student), ("teacher_hidden", self.teacher)):
            hidden = table[index.reshape(-1)].reshape(*index.shape, table.shape[1])
            hidden[~valid] = 0
            out[name] = hidden
        return {**batch, **out}
