"""Word-level tagging with a saved aligned model: jitted, bucketed, and free of recompiles.

A *saved aligned model* is one directory, loadable without the training config:

    student/              the encoder in HF layout (config.json, model.safetensors, tokenizer files)
    adapter.safetensors   AlAd in the reference PyTorch layout (fc1/fc2 weight [out, in]); absent
                          for a model without adapter (a student baseline)
    head.safetensors      the task head in PyTorch layout, as transformers' *ForTokenClassification
                          names it: classifier.weight [num_labels, D], classifier.bias [num_labels]
                          (QA: qa_outputs.weight [2, D], qa_outputs.bias [2])
    alad.json             task, labels, window, max_length, stride, teacher/student names, meta

:class:`Predictor` turns words into labels. Sentences become sub-word rows
(long ones become overlapping windows, stitched back per word, as in
training); rows are padded to a few bucket lengths and batches to a few row
counts, so a session compiles at most ``len(buckets) * len(row_sizes)``
programs however many calls it serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.data import batching, qa, readers, tagging
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models.heads import QAHead, TaggingHead
from alad_jax.models.task_model import TaskModel, predict_spans

FORMAT = "alad-aligned-model"
VERSION = 1
MODEL_JSON = "alad.json"
STUDENT_DIR = "student"
ADAPTER_FILE = "adapter.safetensors"
HEAD_FILE = "head.safetensors"
TASKS = ("pos", "ner", "qa")
# Few shapes: each (rows, length) pair is one compilation of the forward.
SEQ_BUCKETS = (32, 64, 128, 256, 512)
ROW_SIZES = (1, 8, 32)

Forward = Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]]


# --------------------------------------------------------------------------- saved aligned model


def _head_tensors(head: nnx.Module) -> tuple[str, dict[str, np.ndarray]]:
    """(PyTorch name prefix, tensors in nn.Linear layout) of a tagging or QA head."""
    name = "classifier" if isinstance(head, TaggingHead) else "qa_outputs"
    linear = getattr(head, name)
    return name, {
        f"{name}.weight": np.ascontiguousarray(np.asarray(linear.kernel[...], np.float32).T),  # [in, out] -> [out, in]
        f"{name}.bias": np.asarray(linear.bias[...], np.float32),
    }


def save_aligned_model(
    out_dir: str | os.PathLike,
    *,
    encoder: nnx.Module,
    adapter: AlignmentAdapter | None,
    head: nnx.Module,
    labels: Sequence[str],
    task: str,
    max_length: int,
    tokenizer,
    stride: int = 32,
    meta: dict | None = None,
) -> Path:
    """Writes encoder (+ AlAd) + head as one directory (layout in the module docstring).

    ``meta`` is any JSON-able dict; its ``teacher`` and ``student`` entries
    (model names) are also lifted to the top of ``alad.json``. The directory is
    written next to ``out_dir`` and renamed into place, so a reader never sees
    half a model; an existing ``out_dir`` is replaced only if it is a previous
    saved model (holds ``alad.json``) or empty.
    """
    out = Path(out_dir)
    if task not in TASKS:
        raise AladError(f"save_aligned_model: task {task!r} is unknown; use one of {', '.join(TASKS)}")
    if not isinstance(head, (TaggingHead, QAHead)):
        raise AladError(f"save_aligned_model: head is a {type(head).__name__}; pass a TaggingHead or QAHead")
    if (task == "qa") != isinstance(head, QAHead):
        raise AladError(f"save_aligned_model: task {task!r} does not match a {type(head).__name__}")
    width = adapter.teacher_dim if adapter is not None else encoder.config.hidden_size
    if head.in_features != width:
        raise AladError(f"save_aligned_model: head takes width {head.in_features} but the model feeds it {width}")
    if adapter is not None and adapter.student_dim != encoder.config.hidden_size:
        raise AladError(
            f"save_aligned_model: adapter expects student width {adapter.student_dim}, "
            f"the encoder has {encoder.config.hidden_size}"
        )
    head_name, head_tensors = _head_tensors(head)
    if isinstance(head, TaggingHead) and head_tensors[f"{head_name}.bias"].shape[0] != len(labels):
        raise AladError(
            f"save_aligned_model: the head has {head_tensors[f'{head_name}.bias'].shape[0]} outputs "
            f"but {len(labels)} labels were given"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MODEL_JSON).is_file())):
        raise AladError(f"{out} exists and is not a saved aligned model (no {MODEL_JSON}); choose a new directory")

    meta = dict(meta or {})
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted save of this same model
    tmp.mkdir(parents=True)
    hub.save_encoder(encoder, tmp / STUDENT_DIR, tokenizer=tokenizer)
    if adapter is not None:
        export_reference(adapter, tmp / ADAPTER_FILE)
    save_file(head_tensors, str(tmp / HEAD_FILE), metadata={"format": "pt"})
    info = {
        "format": FORMAT,
        "version": VERSION,
        "task": task,
        "labels": list(labels),
        "window": adapter.window if adapter is not None else None,
        "max_length": int(max_length),
        "stride": int(stride),
        "student_dim": encoder.config.hidden_size,
        "output_dim": width,
        "head": head_name,
        "teacher": meta.get("teacher"),
        "student": meta.get("student"),
        "meta": meta,
    }
    (tmp / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class LoadedModel(NamedTuple):
    """A saved aligned model in memory: the TaskModel, its label names, and ``alad.json``."""

    model: TaskModel
    labels: tuple[str, ...]
    info: dict


def _read_info(path: Path) -> dict:
    file = path / MODEL_JSON
    if not file.is_file():
        raise AladError(f"{path} is not a saved aligned model ({MODEL_JSON} missing); pass a directory save_aligned_model wrote")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AladError(f"{file}:{e.lineno}: invalid JSON ({e.msg}); the saved model is damaged, save it again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise AladError(f"{file}: not an {FORMAT} file (format={info.get('format') if isinstance(info, dict) else None!r})")
    if info.get("version") != VERSION:
        raise AladError(f"{file}: version {info.get('version')!r} is not supported (this alad reads version {VERSION})")
    for key in ("task", "labels", "window", "max_length", "stride", "head"):
        if key not in info:
            raise AladError(f"{file}: key {key!r} is missing; the saved model is damaged, save it again")
    if info["task"] not in TASKS:
        raise AladError(f"{file}: key 'task' is {info['task']!r}; expected one of {', '.join(TASKS)}")
    return info


def _load_head(file: Path, info: dict, width: int) -> nnx.Module:
    name = info["head"]
    try:
        with safe_open(str(file), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, FileNotFoundError) as e:
        raise AladError(f"{file}: cannot read the head ({e}); the saved model is damaged, save it again") from None
    weight, bias = tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias")
    if weight is None or bias is None:
        raise AladError(f"{file}: expected tensors {name}.weight and {name}.bias, found {sorted(tensors)}")
    outputs = 2 if info["task"] == "qa" else len(info["labels"])
    if weight.shape != (outputs, width) or bias.shape != (outputs,):
        raise AladError(
            f"{file}: {name}.weight is {list(weight.shape)}, expected {[outputs, width]} "
            f"({outputs} outputs on width {width})"
        )
    rngs = nnx.Rngs(0)  # initial values are replaced below
    head = QAHead(width, rngs=rngs) if info["task"] == "qa" else TaggingHead(width, outputs, rngs=rngs)
    linear = getattr(head, name)
    linear.kernel[...] = jnp.asarray(weight.T)  # [out, in] -> [in, out]
    linear.bias[...] = jnp.asarray(bias)
    return head


def load_aligned_model(path: str | os.PathLike, *, impl: str = "auto") -> LoadedModel:
    """Reads a directory written by :func:`save_aligned_model` (params float32)."""
    path = Path(path)
    info = _read_info(path)
    encoder, config = hub.load_encoder(str(path / STUDENT_DIR))
    adapter = None
    if info["window"] is not None:
        adapter = import_reference(path / ADAPTER_FILE, window=info["window"], impl=impl)
        if adapter.student_dim != config.hidden_size:
            raise AladError(
                f"{path / ADAPTER_FILE}: adapter takes student width {adapter.student_dim}, "
                f"but {path / STUDENT_DIR} has hidden size {config.hidden_size}"
            )
    width = adapter.teacher_dim if adapter is not None else config.hidden_size
    head = _load_head(path / HEAD_FILE, info, width)
    return LoadedModel(TaskModel(encoder, head, adapter), tuple(info["labels"]), info)


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


def default_buckets(max_length: int) -> tuple[int, ...]:
    return tuple(b for b in SEQ_BUCKETS if b < max_length) + (max_length,)


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
        self.buckets = tuple(buckets) if buckets is not None else default_buckets(self.max_length)
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
    def from_workdir(cls, workdir: str | os.PathLike, case: str = "frozen", window: int | None = None,
                     **options) -> Predictor:
        """The ``alad_w{K}_{case}`` model of a finished ``alad run`` work directory."""
        return cls.from_dir(model_dir_of_workdir(workdir, case, window), **options)

    @classmethod
    def from_exported(cls, path: str | os.PathLike) -> Predictor:
        """A serving artifact written by :func:`alad_jax.inference.export.export_predictor`."""
        from alad_jax.inference.export import load_exported

        exported = load_exported(path)
        if not hasattr(exported, "labels"):
            raise AladError(f"{path} is a QA serving artifact; answer questions with QAPredictor.from_exported "
                            "(alad predict --question Q --context C)")
        tokenizer = hub.load_tokenizer(str(path))
        return cls(exported, exported.labels, tokenizer, max_length=exported.max_length, stride=exported.stride,
                   buckets=exported.buckets, row_sizes=exported.row_sizes)

    @classmethod
    def open(cls, path: str | os.PathLike, case: str = "frozen", window: int | None = None) -> Predictor:
        """A saved aligned model, a work directory, or an exported serving artifact, by what ``path`` holds."""
        from alad_jax.inference.export import SERVING_JSON

        path = Path(path)
        if (path / MODEL_JSON).is_file():
            return cls.from_dir(path)
        if (path / SERVING_JSON).is_file():
            return cls.from_exported(path)
        if (path / "models").is_dir():
            return cls.from_workdir(path, case, window)
        raise AladError(
            f"--model {path}: not a saved aligned model ({MODEL_JSON}), a serving artifact ({SERVING_JSON}) "
            "or an alad run work directory (models/); check the path"
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
        if not Path(path).is_file():
            raise AladError(f"--file {path}: no such file; give the path of a text, CoNLL or CoNLL-U file")
        if fmt == "text":
            sentences = readers.read_text(path)
        elif fmt == "conll":
            sentences = readers.read_conll(path, scheme="none")
        elif fmt == "conllu":
            sentences = readers.read_conllu(path)
        else:
            raise AladError(f"--format {fmt!r} is unknown for {path}; use text, conll or conllu")
        labels = self._predict([readers.TaggedSentence(s.words, None, s.source) for s in sentences])
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
            input_ids = np.full((num_rows, length), pad_id, np.int32)
            attention_mask = np.zeros((num_rows, length), np.int32)
            for r, row in enumerate(chunk):
                input_ids[r, : lengths[row]] = rows[row]
                attention_mask[r, : lengths[row]] = 1
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
                 null_threshold: float, batch_size: int = 8):
        """``spans(batch) -> (start_logits, end_logits)`` ``[rows, max_length]``: the in-process model
        (:meth:`from_model`), a jax.export artifact or an ONNX file."""
        self.spans = spans
        self.tokenizer = tokenizer
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size
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
        threshold = qa.threshold_from_json((loaded.info.get("meta") or {}).get("null_threshold"),
                                           f"{Path(path) / MODEL_JSON}: meta")
        return cls.from_model(loaded.model, hub.load_tokenizer(str(Path(path) / STUDENT_DIR)),
                              max_length=loaded.info["max_length"], stride=loaded.info["stride"],
                              null_threshold=threshold)

    @classmethod
    def from_exported(cls, path: str | os.PathLike) -> QAPredictor:
        """A QA serving artifact written by :func:`alad_jax.inference.export.export_model`."""
        from alad_jax.inference.export import ExportedSpans, load_exported

        exported = load_exported(path)
        if not isinstance(exported, ExportedSpans):
            raise AladError(f"{path} is a tagging artifact; use Predictor.from_exported for word labels")
        threshold = qa.threshold_from_json(exported.null_threshold, f"{Path(path) / 'serving.json'}")
        return cls(exported, hub.load_tokenizer(str(path)), max_length=exported.max_length, stride=exported.stride,
                   null_threshold=threshold)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        """One answer per (question, context) pair; "" means unanswerable."""
        from alad_jax.data import qa

        if len(questions) != len(contexts) or not questions:
            raise AladError(f"alad predict: give as many --question as --context ({len(questions)} vs "
                            f"{len(contexts)}), at least one")
        examples = [readers.QAExample(str(i), q, c, ()) for i, (q, c) in enumerate(zip(questions, contexts))]
        features = qa.encode_qa(examples, self.tokenizer, max_length=self.max_length, doc_stride=self.stride)
        start = np.zeros(features.input_ids.shape, np.float32)
        end = np.zeros_like(start)
        for batch in qa.make_qa_batches(features, batch_size=self.batch_size):
            s, e = (np.asarray(x) for x in self.spans(batch))
            real = batch["feature_index"] >= 0
            start[batch["feature_index"][real]], end[batch["feature_index"][real]] = s[real], e[real]
        answers, _ = qa.postprocess_qa(examples, features, start, end, null_threshold=self.null_threshold)
        return [answers[e.id] for e in examples]


def model_dir_of_workdir(workdir: str | os.PathLike, case: str = "frozen", window: int | None = None) -> Path:
    """``workdir/models/alad_w{K}_{case}``; with ``window=None`` the only K saved for that case."""
    models = Path(workdir) / "models"
    if not models.is_dir():
        raise AladError(f"{workdir} has no models/ directory; pass the --workdir of a finished alad run")
    pattern = re.compile(rf"alad_w\d+_{re.escape(case)}")  # not alad_w3_noalign_frozen for case "frozen"
    found = sorted(p.name for p in models.iterdir() if pattern.fullmatch(p.name) and (p / MODEL_JSON).is_file())
    if window is not None:
        name = f"alad_w{window}_{case}"
        if name not in found:
            raise AladError(f"{models / name} is not a saved model (saved for case {case!r}: {found or 'none'}); "
                            "pick another --case/--window or finish the run")
        return models / name
    if len(found) != 1:
        what = "no saved model" if not found else f"several windows ({', '.join(found)})"
        raise AladError(f"{models}: {what} for case {case!r}; "
                        + ("pass --window K" if found else "finish alad run first, or pick another --case"))
    return models / found[0]


# --------------------------------------------------------------------------- alad predict


def _write(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], out) -> None:
    for i, (words, labels) in enumerate(pairs):
        if i:
            out.write("\n")
        out.writelines(f"{w}\t{label}\n" for w, label in zip(words, labels))


def _file_format(path: str, fmt: str | None) -> str:
    """--format, else from the suffix: .conllu, .conll, anything else plain text."""
    if fmt:
        return fmt
    return {".conllu": "conllu", ".conll": "conll"}.get(Path(path).suffix.lower(), "text")


def main(args) -> int:
    """``alad predict``: word<TAB>label lines, a blank line between sentences (stdout or --out); QA: one answer a line."""
    if Path(args.model).suffix == ".onnx":  # an `alad export --format onnx` file, run by onnxruntime
        from alad_jax.inference.onnx_export import onnx_predictor

        onnx_model = onnx_predictor(args.model)
        if args.question or args.context:
            print("\n".join(onnx_model.answer(args.question or [], args.context or [])))
            return 0
        return _label(onnx_model, args)
    if args.question or args.context:
        from alad_jax.inference.export import SERVING_JSON

        path = Path(args.model)
        if (path / SERVING_JSON).is_file():
            qa_model = QAPredictor.from_exported(path)
        else:
            qa_model = QAPredictor.from_dir(
                path if (path / MODEL_JSON).is_file() else model_dir_of_workdir(path, args.case, args.window))
        answers = qa_model.answer(args.question or [], args.context or [])
        print("\n".join(answers))
        return 0
    return _label(Predictor.open(args.model, args.case, args.window), args)


def _label(predictor, args) -> int:
    if not (args.text or args.words or args.file):
        raise AladError('alad predict: nothing to label; give --text "a sentence", --words W1 W2 ... or --file FILE')
    if not hasattr(predictor, "predict_words"):
        raise AladError(f"{args.model} is a QA model; ask it with --question Q --context C")
    pairs: list[tuple[list[str], list[str]]] = []
    if args.text:
        pairs += [(t.split(), labels) for t, labels in zip(args.text, predictor.predict_text(args.text))]
    if args.words:
        pairs += list(zip(args.words, predictor.predict_words(args.words)))
    if args.file:
        pairs += predictor.predict_file(args.file, _file_format(args.file, args.format))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            _write(pairs, f)
    else:
        _write(pairs, sys.stdout)
    return 0
