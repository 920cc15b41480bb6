"""The stage-1 corpus as a stream: read, shard, tokenize and pack on the fly with ``grain``.

A corpus of any size (local text / CoNLL-U files and globs of shards, or a Hugging Face dataset
streamed by name) becomes packed alignment batches without ever being held in memory:

    sentences of the stream (every process reads the same order)
      -> the first ``corpus.val_sentences`` are the validation sample (every process, held out)
      -> sentence ``j`` of the rest goes to process ``j % process_count`` (disjoint; the union is the stream)
      -> chunks of sentences tokenized into feature rows (grain flat-map, in the loader)
      -> best-fit packed into rows of ``max_length`` positions (grain ``BestFitPackIterDataset``)
      -> this process's share of each global batch.

Every stage of that is a grain iterator with ``get_state``/``set_state``: the state of the
last one (:meth:`AlignmentStream.get_state`, plain JSON) is saved with a training
checkpoint, and a resumed run continues from the same sentence with the same batches.
A sentence is one line of a text file, one CoNLL-U sentence, or one non-blank line of a
Hugging Face row's text column (Wikipedia rows are articles: their paragraphs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from alad_jax.data import tagging
from alad_jax.data.readers import TaggedSentence
from alad_jax.data.sources import corpus_files
from alad_jax.errors import AladError

STREAM_FORMATS = ("text", "conllu", "hf")
CHUNK_SENTENCES = 256  # sentences tokenized per call of the fast tokenizer


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """Where the sentences come from: ``files`` (text / conllu) or a Hugging Face dataset (``hf``)."""

    fmt: str
    files: tuple[str, ...] = ()
    hf_name: str = ""
    hf_config: str = ""
    hf_split: str = "train"
    text_column: str = "text"


def source_of(corpus) -> StreamSource:
    """The config's ``corpus`` section as a checked :class:`StreamSource` (one-line errors, nothing read yet
    but the first sentence of every file: a missing or empty shard stops the run before any step)."""
    if corpus.format not in STREAM_FORMATS:
        raise AladError(f"config key 'corpus.format' is {corpus.format!r}; a streamed corpus is one of "
                        f"{', '.join(STREAM_FORMATS)}")
    if corpus.format == "hf":
        if not corpus.hf_name:
            raise AladError("config key 'corpus.hf_name' is empty; corpus.format = \"hf\" needs a dataset name, "
                            "e.g. corpus.hf_name=wikimedia/wikipedia corpus.hf_config=20231101.pt")
        return StreamSource("hf", hf_name=corpus.hf_name, hf_config=corpus.hf_config, hf_split=corpus.hf_split,
                            text_column=corpus.text_column)
    files = corpus_files(corpus.paths)
    for path in files:
        if not Path(path).is_file():
            raise AladError(f"corpus.paths: shard {path} does not exist; fix the list (config key 'corpus.paths')")
    if not files:
        raise AladError("config key 'corpus.paths' is empty; give files or globs of shards of the stage-1 corpus")
    for path in files:
        if next(_file_sentences(path, corpus.format, 0), None) is None:
            raise AladError(f"corpus.paths: shard {path} holds no sentence (empty file?); remove it or fill it")
    return StreamSource(corpus.format, files=tuple(files))


def check_hub(source: StreamSource) -> None:
    """Opens a Hugging Face streamed dataset once (one line when the name does not resolve, e.g. offline)."""
    if source.fmt == "hf":
        _hf_rows(source)


# -- reading sentences ----------------------------------------------------------------------------------


def _file_sentences(path: str, fmt: str, offset: int) -> Iterator[tuple[tuple[str, ...], int]]:
    """(words, byte offset after the sentence) of ``path`` from byte ``offset`` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        words: list[str] = []
        lineno_hint = f"{path} (byte {offset})"
        while True:
            raw = f.readline()
            if not raw:
                if words:
                    yield tuple(words), f.tell()
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff")
            if fmt == "text":
                if line.split():
                    yield tuple(line.split()), f.tell()
                continue
            if not line.strip():  # conllu: a blank line ends a sentence
                if words:
                    yield tuple(words), f.tell()
                    words = []
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise AladError(f"{lineno_hint}: expected 10 tab-separated CoNLL-U columns, found {len(fields)}; "
                                "check the shard's format (corpus.format)")
            if fields[0].isdigit():  # skips multiword ranges (1-2) and empty nodes (1.1), as read_conllu
                words.append(fields[1])


def _hf_rows(source: StreamSource):
    import datasets

    where = f"corpus.hf_name {source.hf_name!r}" + (f" ({source.hf_config})" if source.hf_config else "")
    try:  # never runs a dataset's own code (no trust_remote_code)
        return datasets.load_dataset(source.hf_name, source.hf_config or None, split=source.hf_split, streaming=True)
    except Exception as err:  # the Hub client raises many types; the user needs one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise AladError(f"{where}: could not open the streamed dataset ({type(err).__name__}: {first}); check the "
                        "name, config and split, the network, or use local shards (corpus.format = text)") from None


class _SentenceIterator(grain.DatasetIterator):
    """This process's sentences of the stream; state: pass, file, byte offset, sentence index (plain ints).

    Local files: every process reads every shard's bytes and keeps sentence ``j`` when ``j % N`` is its
    index. A Hub dataset with several processes is split by node instead (``split_dataset_by_node``: its
    files when they divide over the processes, else every N-th row): each host reads only its part of the
    stream, ``start`` (the validation head) is skipped on process 0's part alone, and ``stop - start`` counts
    this process's training sentences (:func:`training_share`).
    """

    def __init__(self, source: StreamSource, *, start: int, stop: int | None, process_index: int,
                 process_count: int, passes: int | None):
        super().__init__()
        self._by_node = splits_by_node(source, process_count)
        if self._by_node and process_index:  # its sentences are counted in its own part, which has no head
            start, stop = 0, None if stop is None else stop - start
        self._source, self._start, self._stop = source, start, stop
        self._process_index, self._process_count, self._passes = process_index, process_count, passes
        self._state = {"pass": 0, "file": 0, "offset": 0, "index": 0}
        self._reader = None

    def _mine(self, index: int) -> bool:
        j = index - self._start
        return j >= 0 and (self._by_node or j % self._process_count == self._process_index)

    def _open(self):
        s = self._state
        if self._source.fmt == "hf":
            rows = _hf_rows(self._source)
            if self._by_node:
                from datasets.distributed import split_dataset_by_node

                rows = split_dataset_by_node(rows, rank=self._process_index, world_size=self._process_count)
            return _hf_sentences(rows, self._source.text_column, s["offset"])
        return _file_sentences(self._source.files[s["file"]], self._source.fmt, s["offset"])

    def __next__(self) -> tuple[str, ...]:
        s = self._state
        while True:
            if self._passes is not None and s["pass"] >= self._passes:
                raise StopIteration
            if self._stop is not None and s["index"] >= self._stop:
                self._next_pass()
                continue
            if self._reader is None:
                self._reader = self._open()
            item = next(self._reader, None)
            if item is None:
                self._reader = None
                if self._source.fmt != "hf" and s["file"] + 1 < len(self._source.files):
                    s.update(file=s["file"] + 1, offset=0)
                else:
                    self._next_pass()
                continue
            words, s["offset"] = item
            index = s["index"]
            s["index"] += 1
            if self._mine(index):
                return words

    def _next_pass(self) -> None:
        if self._state["index"] <= self._start + (0 if self._by_node else self._process_index):  # nothing for it
            raise AladError(f"the stage-1 stream has {self._state['index']} sentences: none left for training "
                            f"process {self._process_index} of {self._process_count} after the first {self._start} "
                            "(the validation sample); lower corpus.val_sentences or add text")
        self._reader = None
        self._state.update({"pass": self._state["pass"] + 1, "file": 0, "offset": 0, "index": 0})

    def get_state(self) -> dict[str, Any]:
        return dict(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        self._state = {k: int(state[k]) for k in ("pass", "file", "offset", "index")}
        self._reader = None


def _hf_sentences(rows, column: str, skip: int) -> Iterator[tuple[tuple[str, ...], int]]:
    """(words, sentences read so far) of the non-blank lines of each row's ``column``, after the first ``skip``.

    The "offset" of a streamed Hub dataset is the count of sentences before it: a resume reads
    past them again (the Hub streams have no byte offsets to seek to)."""
    seen = 0
    for row in rows:
        if column not in row:
            raise AladError(f"corpus.text_column {column!r} is not a column of the streamed dataset; "
                            f"it has {', '.join(sorted(row))}")
        for line in str(row[column]).splitlines():
            words = tuple(line.split())
            if not words:
                continue
            seen += 1
            if seen > skip:
                yield words, seen


class _Sentences(grain.IterDataset):
    def __init__(self, source: StreamSource, **options):
        super().__init__()
        self._source, self._options = source, options

    def __iter__(self) -> _SentenceIterator:
        return _SentenceIterator(self._source, **self._options)


def splits_by_node(source: StreamSource, process_count: int) -> bool:
    """Whether each process reads only its own part of the source (a Hub dataset with several processes)."""
    return source.fmt == "hf" and process_count > 1


def training_share(source: StreamSource, limit: int, process_index: int, process_count: int) -> int:
    """Training sentences the stream's ``stop`` counts for this process: ``limit`` of the whole stream (0: all)."""
    if not limit or not splits_by_node(source, process_count):
        return limit
    return limit // process_count + (process_index < limit % process_count)


def read_sentences(source: StreamSource, start: int, count: int, process_count: int = 1) -> list[TaggedSentence]:
    """Sentences ``start .. start + count - 1`` of the stream (every process the same ones).

    A Hub dataset read by ``process_count`` > 1 processes: of process 0's part of it (the part whose head
    its training stream skips), so that every host reads only the head of one part."""
    # Local shards: every process reads the whole head; a split Hub stream: the head of process 0's part.
    count_split = process_count if splits_by_node(source, process_count) else 1
    it = _SentenceIterator(source, start=start, stop=start + count, process_index=0, process_count=count_split,
                           passes=1)
    return [TaggedSentence(words, None, f"stream:{start + i}") for i, words in enumerate(it)]


# -- tokenizing and packing -------------------------------------------------------------------------


class _Tokenize(grain.experimental.FlatMapTransform):
    """A chunk of sentences -> their feature rows (``input_ids``, ``attention_mask``, with ``gap`` empty
    positions after each row where the packed row has room)."""

    max_fan_out = CHUNK_SENTENCES * 64

    def __init__(self, tokenizer, max_length: int, stride: int, gap: int):
        self.tokenizer, self.max_length, self.stride, self.gap = tokenizer, max_length, stride, gap

    def flat_map(self, chunk: Sequence[tuple[str, ...]]) -> list[dict[str, np.ndarray]]:
        sentences = [TaggedSentence(words, None, "stream") for words in chunk]
        rows = tagging.encode_tagging(sentences, self.tokenizer, None, max_length=self.max_length,
                                      stride=self.stride).input_ids
        out = []
        for ids in rows:
            n = len(ids)
            pad = min(self.gap, self.max_length - n)  # the gap only separates a row from the next one
            out.append({"input_ids": np.concatenate([ids, np.zeros(pad, np.int32)]).astype(np.int32),
                        "attention_mask": np.concatenate([np.ones(n, np.int32), np.zeros(pad, np.int32)])})
        return out


def _as_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed rows -> the keys of :func:`alad_jax.data.batching.make_packed_batches` (empty and gap
    positions: segment 0, position 0, mask 0)."""
    mask = rows["attention_mask"].astype(np.int32)
    return {
        "input_ids": np.where(mask > 0, rows["input_ids"], 0).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
        "segment_ids": np.where(mask > 0, rows["input_ids_segment_ids"], 0).astype(np.int32),
        "position_ids": np.where(mask > 0, rows["input_ids_positions"], 0).astype(np.int32),
    }


def rows_per_process(token_budget: int, max_length: int, process_count: int, device_count: int) -> int:
    """This process's packed rows per batch: ``token_budget // max_length`` global rows, rounded up so
    that they divide over the processes and devices."""
    rows = max(token_budget // max_length, 1)
    multiple = math.lcm(process_count, device_count)
    return -(-rows // multiple) * multiple // process_count


class AlignmentStream:
    """This process's packed training batches of a streamed corpus, resumable from :meth:`get_state`.

    ``skip``: sentences at the head of the stream held out (the validation sample);
    ``limit``: training sentences of the whole stream to use (0: all); ``passes``: times
    through them (None: without end, a step or time budget stops training).
    """

    def __init__(self, source: StreamSource, tokenizer, *, max_length: int, stride: int, gap: int, rows: int,
                 skip: int, limit: int = 0, passes: int | None = 1, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2):
        limit = training_share(source, limit, process_index, process_count)
        sentences = _Sentences(source, start=skip, stop=skip + limit if limit else None, passes=passes,
                               process_index=process_index, process_count=process_count)
        chunks = sentences.batch(CHUNK_SENTENCES, batch_fn=list)
        feature_rows = grain.experimental.FlatMapIterDataset(chunks, _Tokenize(tokenizer, max_length, stride, gap))
        length = {"input_ids": max_length, "attention_mask": max_length}
        packed = grain.experimental.BestFitPackIterDataset(feature_rows, length_struct=length,
                                                           num_packing_bins=rows, seed=seed, shuffle_bins=True)
        batches = packed.batch(rows, drop_remainder=False).map(_as_batch)
        if prefetch:  # tokenizing and packing the next batches while the step runs
            batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
        self.rows = rows
        self._process_index, self._process_count = process_index, process_count
        self._iterator = iter(batches)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator, None)
        # Each process packs its own sentences, so one may run out a batch before another: the stream ends for
        # all at the first process's end (a step the others took alone would wait forever in its collectives).
        if self._process_count > 1 and not _every_process(batch is not None):
            raise StopIteration
        if batch is None:
            raise StopIteration
        short = self.rows - batch["input_ids"].shape[0]
        if short:  # the stream's last batch: empty rows keep the one compiled shape
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        return batch

    def get_state(self) -> dict:
        """Every process's position in the stream (a collective: every process calls it at the same step).

        The checkpoint's metadata is written by process 0 alone, so it must hold the other processes'
        positions too; each takes back its own in :meth:`set_state`."""
        return {"process_count": self._process_count, "positions": _gather_json(self._iterator.get_state())}

    def set_state(self, state: dict) -> None:
        count = state.get("process_count", 1)
        if count != self._process_count:
            raise AladError(f"the stage-1 checkpoint was written by {count} process(es), this run has "
                            f"{self._process_count}: resume with {count}, or delete the stage's checkpoints "
                            "directory to start it over")
        self._iterator.set_state(state["positions"][self._process_index] if "positions" in state else state)


def _every_process(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (a collective)."""
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _gather_json(value) -> list:
    """``value`` (plain JSON) of every process, in process order (a collective; one process: ``[value]``)."""
    import jax

    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(every[i, :size]).decode()) for i, size in enumerate(sizes)]
