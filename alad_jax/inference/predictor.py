"""Word-level tagging and QA with a saved aligned model: jitted, bucketed, and free of recompiles.

:class:`Predictor` turns words into labels. Sentences become sub-word rows
(long ones become overlapping windows, stitched back per word, as in
training); rows are padded to a few bucket lengths and batches to a few row
counts, so a session compiles at most ``len(buckets) * len(row_sizes)``
programs however many calls it serves. :class:`QAPredictor` answers questions
(SQuAD 2.0 decoding with the null threshold tuned in training). The saved
format itself is :mod:`alad_jax.inference.saved_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.data import batching, qa, readers, sources, tagging
from alad_jax.errors import AladError
from alad_jax.inference.saved_model import MODEL_JSON, STUDENT_DIR, load_aligned_model
from alad_jax.inference.serving import SERVING_JSON, ExportedSpans, load_exported
from alad_jax.models import hub
from alad_jax.models.task_model import TaskModel, predict_spans

# Few shapes: each (rows, length) pair is one compilation of the forward.
ROW_SIZES = (1, 8, 32)

Forward = Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]]


# --------------------------------------------------------------------------- compiled forward


class CompiledTagger:
    """A tagging TaskModel as one jitted function of padded batches.

    ``tagger(input_ids, attention_mask)``, both int32 ``[rows, length]``,
    returns ``(logits float32 [rows, length, labels], label_ids int32 [rows, length])``.
    :meth:`apply` is the pure function of ``(state, input_ids, attention_mask)``
    that is jitted here and exported by :mod:`alad_jax.inference.export`.
    """

    def __init__(self, model: TaskModel):
        self.graphdef, self.state = nnx.split(model)
        self._jitted = jax.jit(self.apply)

    def apply(self, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(self.graphdef, state)
        logits = model({"input_ids": input_ids, "attention_mask": attention_mask}).astype(jnp.float32)
        return logits, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def __call__(self, input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
        return self._jitted(self.state, input_ids, attention_mask)

    @property
    def num_compilations(self) -> int:
        """How many programs the jitted forward holds: one per distinct batch shape seen."""
        return self._jitted._cache_size()


# --------------------------------------------------------------------------- predictor


class Predictor:
    """Word-level labels from a forward function over fixed-shape batches.

    Args:
      forward: ``(input_ids, attention_mask)`` int32 ``[rows, length]`` ->
        ``(logits, label_ids [rows, length])``; called only with ``rows`` in
        ``row_sizes`` and ``length`` in ``buckets``.
      labels: label names by id.
      tokenizer: the encoder's fast tokenizer.
      max_length: sub-words per row, special tokens included.
      stride: overlap of the windows over a sentence longer than ``max_length``.
      buckets: row lengths (ascending, the last one ``max_length``).
      row_sizes: batch row counts (ascending); a batch has at most ``row_sizes[-1]`` rows.
    """

    def __init__(self, forward: Forward, labels: Sequence[str], tokenizer, *, max_length: int, stride: int = 32,
                 buckets: Sequence[int] | None = None, row_sizes: Sequence[int] = ROW_SIZES):
        self.forward = forward
        self.labels = tuple(labels)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.stride = int(stride)
        self.buckets = tuple(buckets) if buckets is not None else batching.length_buckets(self.max_length)
        self.row_sizes = tuple(row_sizes)
        if self.buckets[-1] != self.max_length or list(self.buckets) != sorted(set(self.buckets)):
            raise AladError(f"predictor buckets {list(self.buckets)} must ascend and end at max_length={max_length}")
        if list(self.row_sizes) != sorted(set(self.row_sizes)) or self.row_sizes[0] < 1:
            raise AladError(f"predictor row_sizes {list(self.row_sizes)} must be distinct positive ascending counts")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: TaskModel, labels: Sequence[str], tokenizer, *, max_length: int, **options) -> Predictor:
        if model.encoder.config.max_position_embeddings < max_length:
            raise AladError(
                f"max_length={max_length} exceeds the encoder's {model.encoder.config.max_position_embeddings} "
                "positions; use a smaller max_length"
            )
        return cls(CompiledTagger(model), labels, tokenizer, max_length=max_length, **options)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **options) -> Predictor:
        """A saved aligned model (see :func:`save_aligned_model`)."""
        loaded = load_aligned_model(path)
        if loaded.info["task"] == "qa":
            raise AladError(f"{path} is a QA model; answer questions with QAPredictor.from_dir (alad predict "
                            "--question Q --context C)")
        tokenizer = hub.load_tokenizer(str(Path(path) / STUDENT_DIR))
        options.setdefault("stride", loaded.info["stride"])
        return cls.from_model(loaded.model, loaded.labels, tokenizer, max_length=loaded.info["max_length"], **options)

    @classmethod
    def from_exported(cls, path: str | os.PathLike) -> Predictor:
        """A serving artifact written by :func:`alad_jax.inference.export.export_predictor`."""
        exported = load_exported(path)
        if not hasattr(exported, "labels"):
            raise AladError(f"{path} is a QA serving artifact; answer questions with QAPredictor.from_exported "
                            "(alad predict --question Q --context C)")
        tokenizer = hub.load_tokenizer(str(path))
        return cls(exported, exported.labels, tokenizer, max_length=exported.max_length, stride=exported.stride,
                   buckets=exported.buckets, row_sizes=exported.row_sizes)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Predictor:
        """A saved aligned model or an exported serving artifact, by what ``path`` holds."""
        path = Path(path)
        if (path / MODEL_JSON).is_file():
            return cls.from_dir(path)
        if (path / SERVING_JSON).is_file():
            return cls.from_exported(path)
        raise AladError(
            f"{path}: not a saved aligned model ({MODEL_JSON}) or a serving artifact ({SERVING_JSON}); check the path"
        )

    # -- prediction --------------------------------------------------------------------------
    def predict_words(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """One label per word for each pre-tokenized sentence."""
        if not sentences:
            return []
        tagged = []
        for i, words in enumerate(sentences):
            if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words):
                raise AladError(
                    f"input sentence {i + 1}: expected a list of non-empty word strings, got {str(words)[:60]!r}"
                )
            tagged.append(readers.TaggedSentence(tuple(words), None, f"input sentence {i + 1}"))
        return self._predict(tagged)

    def predict_text(self, texts: Sequence[str]) -> list[list[str]]:
        """Labels for raw sentences, split into words on whitespace (the words are ``text.split()``)."""
        sentences = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.split():
                raise AladError(f"input text {i + 1} is empty; give at least one word per text")
            sentences.append(text.split())
        return self.predict_words(sentences)

    def predict_file(self, path: str | os.PathLike, fmt: str = "text") -> list[tuple[list[str], list[str]]]:
        """(words, labels) per sentence of a file: ``text`` (one sentence per line), ``conll`` or
        ``conllu`` (word and tag columns; the gold tags are ignored)."""
        sentences = sources.read_sentences(path, fmt)
        labels = self._predict(sentences)
        return [(list(s.words), ls) for s, ls in zip(sentences, labels)]

    def _predict(self, sentences: Sequence[readers.TaggedSentence]) -> list[list[str]]:
        features = tagging.encode_tagging(sentences, self.tokenizer, None, max_length=self.max_length,
                                          stride=self.stride)
        row_ids = self.row_predictions(features.input_ids)
        return [[self.labels[i] for i in words] for words in tagging.stitch_predictions(features, row_ids)]

    def row_predictions(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label ids ``[len_i]`` for each sub-word row (special tokens included, ``len_i <= max_length``)."""
        lengths = [len(r) for r in rows]
        pad_id = self.tokenizer.pad_token_id or 0
        out: list[np.ndarray | None] = [None] * len(rows)
        for length, chunk in batching.plan_batches(lengths, batch_size=self.row_sizes[-1], buckets=self.buckets):
            chunk = chunk[chunk >= 0]
            num_rows = batching.bucket_length(len(chunk), self.row_sizes)
            input_ids = batching.pad_rows([rows[row] for row in chunk], length, num_rows=num_rows, pad_value=pad_id)
            attention_mask = batching.pad_rows([np.ones(lengths[row], np.int32) for row in chunk], length,
                                               num_rows=num_rows)
            _, label_ids = self.forward(input_ids, attention_mask)
            label_ids = np.asarray(label_ids)
            for r, row in enumerate(chunk):
                out[row] = label_ids[r, : lengths[row]]
        return out


class QAPredictor:
    """Answers questions from contexts with a saved aligned QA model (SQuAD 2.0 decoding).

    Contexts are windowed with the model's document stride; the answer is the
    best span over all windows, or "" when the null score beats it by more than
    the null threshold tuned on dev during training (``alad.json``).
    """

    def __init__(self, spans: Callable[[dict], tuple], tokenizer, *, max_length: int, stride: int,
                 null_threshold: float, max_query_length: int = 64, batch_size: int = 8):
        """``spans(batch) -> (start_logits, end_logits)`` ``[rows, max_length]``: the in-process model
        (:meth:`from_model`), a jax.export artifact or an ONNX file."""
        self.spans = spans
        self.tokenizer = tokenizer
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size
        self.max_query_length = max_query_length
        self.null_threshold = null_threshold

    @classmethod
    def from_model(cls, model: TaskModel, tokenizer, **options) -> QAPredictor:
        graphdef, state = nnx.split(model)
        return cls(lambda batch: predict_spans(graphdef, state, batch), tokenizer, **options)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> QAPredictor:
        loaded = load_aligned_model(path)
        if loaded.info["task"] != "qa":
            raise AladError(f"{path} is a {loaded.info['task']} model; use Predictor for word labels")
        meta = loaded.info.get("meta") or {}
        threshold = qa.threshold_from_json(meta.get("null_threshold"), f"{Path(path) / MODEL_JSON}: meta")
        # Questions are cut as in training (models saved before this key existed used the default, 64).
        return cls.from_model(loaded.model, hub.load_tokenizer(str(Path(path) / STUDENT_DIR)),
                              max_length=loaded.info["max_length"], stride=loaded.info["stride"],
                              null_threshold=threshold, max_query_length=int(meta.get("max_query_length", 64)))

    @classmethod
    def from_exported(cls, path: str | os.PathLike) -> QAPredictor:
        """A QA serving artifact written by :func:`alad_jax.inference.export.export_model`."""
        exported = load_exported(path)
        if not isinstance(exported, ExportedSpans):
            raise AladError(f"{path} is a tagging artifact; use Predictor.from_exported for word labels")
        threshold = qa.threshold_from_json(exported.null_threshold, f"{Path(path) / 'serving.json'}")
        return cls(exported, hub.load_tokenizer(str(path)), max_length=exported.max_length, stride=exported.stride,
                   null_threshold=threshold, max_query_length=exported.max_query_length)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        """One answer per (question, context) pair; "" means unanswerable."""
        if len(questions) != len(contexts) or not questions:
            raise AladError(f"alad predict: give as many --question as --context ({len(questions)} vs "
                            f"{len(contexts)}), at least one")
        examples = [readers.QAExample(str(i), q, c, ()) for i, (q, c) in enumerate(zip(questions, contexts))]
        features = qa.encode_qa(examples, self.tokenizer, max_length=self.max_length, doc_stride=self.stride,
                                max_query_length=self.max_query_length)
        start = np.zeros(features.input_ids.shape, np.float32)
        end = np.zeros_like(start)
        for batch in qa.make_qa_batches(features, batch_size=self.batch_size):
            s, e = (np.asarray(x) for x in self.spans(batch))
            real = batch["feature_index"] >= 0
            start[batch["feature_index"][real]], end[batch["feature_index"][real]] = s[real], e[real]
        answers, _ = qa.postprocess_qa(examples, features, start, end, null_threshold=self.null_threshold)
        return [answers[e.id] for e in examples]
