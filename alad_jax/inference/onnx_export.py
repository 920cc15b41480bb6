"""One ONNX file per saved aligned model (student + AlAd + head), for onnxruntime.

``export_onnx(model_dir, "frozen.onnx")`` writes:

    frozen.onnx             the whole forward, weights inside; batch and sequence length dynamic
    alad.json               format "alad-onnx": task, labels, max_length, stride, QA null threshold,
                            input and output names, and which .onnx file it describes
    tokenizer files         the student's tokenizer (tokenizer.json, tokenizer_config.json, ...)

The graph's inputs are named as a transformers tokenizer names its outputs
(``input_ids``, ``attention_mask``, ``token_type_ids``; no ``token_type_ids``
for a student without segments, DistilBERT), int64 ``[batch, sequence]`` as
``tokenizer(..., return_tensors="np")`` returns them, so
``session.run(None, dict(encoded))`` works as is. Outputs:

- tagging: ``logits`` float32 ``[batch, sequence, num_labels]``, ``label_ids``
  int64 ``[batch, sequence]`` (the arg-max);
- QA: ``start_logits``, ``end_logits``, float32 ``[batch, sequence]``; span
  decoding (best span over windows, the null threshold) stays in Python, as
  for the jax.export artifact.

The conversion is jax2onnx's: it traces the very forward the jitted predictor
runs (the adapter's fused form: one ONNX Conv; exact GELU: ONNX Gelu). What it
could not express as is, and the workaround (:func:`_serving_copy`,
:func:`_int64_io`): dropout modules (its patched ``nnx.Dropout`` takes no
``rngs``: removed for the trace, inference never drops), the adapter's
explicit window form (a vmap over ``arange(seq)`` it cannot reshape with a
symbolic length: the fused form is traced instead), ``arange`` position ids
(the encoder counts them with a cumsum, same numbers), and int64 inputs (JAX
traces int32 without x64: the graph's inputs become int64 with a Cast in front).
An MPNet student does not convert (its relative position buckets are computed
in numpy at trace time): :func:`convert` says so and points to ``--format jax``.

:class:`OnnxForward` runs a file with onnxruntime and plugs into
:class:`~alad_jax.inference.predictor.Predictor`, so word stitching and
windowing are the same code for every backend.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import importlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.data import qa
from alad_jax.errors import AladError
from alad_jax.inference.predictor import Predictor, QAPredictor
from alad_jax.inference.saved_model import MODEL_JSON, STUDENT_DIR, load_aligned_model
from alad_jax.models import hub

FORMAT = "alad-onnx"
VERSION = 1
INFO_JSON = "alad.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TAGGING_OUTPUTS = ("logits", "label_ids")
QA_OUTPUTS = ("start_logits", "end_logits")
OPSET = 21


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AladError(f"{module} is not installed; install the onnx extra (bash scripts/setup.sh onnx, "
                        "or pip install -e '.[onnx]' and then jax2onnx --no-deps: see README)") from None


# --------------------------------------------------------------------------- export


def check_out(out: Path, suffix: str | None) -> None:
    """Fails fast (before a slow conversion) on a path that cannot be written."""
    if suffix and out.suffix != suffix:
        raise AladError(f"--out {out}: an ONNX export is one file; give a path ending in {suffix}")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AladError(f"--out {out}: cannot create directory {parent} ({e.strerror or e}); "
                        "choose another path") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AladError(f"--out {out}: directory {parent} is not writable; choose another path")
    if out.exists() and (out.is_dir() if suffix else not out.is_dir()):
        raise AladError(f"--out {out} exists and is a {'directory' if out.is_dir() else 'file'}; choose another path")
    probe = out.with_name(out.name + ".tmp")
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise AladError(f"--out {out}: cannot write in {parent} ({e.strerror or e}); choose another path") from None
    if suffix:
        info = parent / INFO_JSON
        if info.is_file():
            try:
                existing = json.loads(info.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                existing = None
            if not (isinstance(existing, dict) and existing.get("format") == FORMAT
                    and existing.get("onnx") == out.name):
                raise AladError(f"--out {out}: {info} already describes another model; export into its own "
                                "directory (the tokenizer and alad.json are written beside the .onnx file)")


def serving_function(model, task: str):
    """The traced forward: ``(input_ids, attention_mask, token_type_ids)`` int32 ``[b, s]`` ->
    tagging ``(logits [b, s, labels], label_ids [b, s])``, QA ``(start [b, s], end [b, s])``."""
    graphdef, state = nnx.split(model)

    def forward(input_ids, attention_mask, token_type_ids):
        out = nnx.merge(graphdef, state)(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids})
        if task == "qa":
            start, end = out
            return start.astype(jnp.float32), end.astype(jnp.float32)
        logits = out.astype(jnp.float32)
        return logits, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return forward


def _int64_io(proto, onnx) -> None:
    """Graph inputs (and integer outputs) int32 -> int64, a Cast at the boundary, as tokenizers emit int64."""
    graph = proto.graph
    int32, int64 = onnx.TensorProto.INT32, onnx.TensorProto.INT64
    # An input no node reads (token_type_ids of DistilBERT / MPNet, which have no segments) is dropped,
    # so the output of that model's tokenizer, which has no token_type_ids either, feeds the graph as is.
    consumed = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    unused = [value for value in graph.input if value.name not in consumed]
    for value in unused:
        graph.input.remove(value)
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != int32:
            continue
        inner = f"{value.name}__int32"
        for node in graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        casts.append(onnx.helper.make_node("Cast", [value.name], [inner], to=int32, name=f"{value.name}_to_int32"))
        value.type.tensor_type.elem_type = int64
    for value in graph.output:
        if value.type.tensor_type.elem_type != int32:
            continue
        inner = f"{value.name}__int32"
        for node in graph.node:
            node.output[:] = [inner if name == value.name else name for name in node.output]
            node.input[:] = [inner if name == value.name else name for name in node.input]
        graph.node.append(onnx.helper.make_node("Cast", [inner], [value.name], to=int64, name=f"{value.name}_to_int64"))
        value.type.tensor_type.elem_type = int64
    for i, cast in enumerate(casts):
        graph.node.insert(i, cast)


def _serving_copy(model):
    """A copy of ``model`` (same arrays) that traces into ONNX: dropout removed, adapter in fused form.

    - jax2onnx replaces ``nnx.Dropout.__call__`` while tracing by one that takes no
      ``rngs`` argument, which our modules pass; at inference dropout is the identity anyway.
    - The adapter's explicit form vmaps a window slice over ``arange(seq)``, which
      jax2onnx 0.17 cannot reshape with a symbolic length; the fused form is one Conv
      (the same numbers, tests/test_adapter.py), and that converts.
    """
    class NoDropout(nnx.Module):
        def __call__(self, x, *, deterministic: bool = True, rngs=None):
            return x

    copy = nnx.merge(*nnx.split(model))
    for _, node in list(nnx.iter_graph(copy)):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, nnx.Dropout):
                    setattr(node, name, NoDropout())
    if getattr(copy, "adapter", None) is not None:
        copy.adapter.impl = "fused"
    return copy


def convert(model, task: str, *, opset: int = OPSET):
    """An ``onnx.ModelProto`` of a TaskModel's forward (see the module docstring for inputs and outputs)."""
    onnx = _require("onnx")
    jax2onnx = _require("jax2onnx")
    # jax2onnx imports every plugin and logs a warning for each optional library it lacks (equinox, ...),
    # and its flax plugins read parameters through the deprecated `.value`.
    for name in ("jax2onnx", "onnx_ir"):  # onnx_ir: "value type ... not known" for shape-only values
        logging.getLogger(name).setLevel(logging.ERROR)
    # The encoder checks the length against its positions: the symbolic length carries that bound.
    shape = jax.export.symbolic_shape("batch, sequence",
                                      constraints=(f"sequence <= {model.encoder.config.max_length}",))
    spec = jax.ShapeDtypeStruct(shape, jnp.int32)
    outputs = QA_OUTPUTS if task == "qa" else TAGGING_OUTPUTS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            proto = jax2onnx.to_onnx(serving_function(_serving_copy(model), task), [spec, spec, spec],
                                     model_name=f"alad_{task}", opset=opset, input_names=list(INPUT_NAMES),
                                     output_names=list(outputs))
    except Exception as e:  # jax2onnx raises whatever its tracing hits; say what and what to use instead
        kind = model.encoder.config.model_type
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AladError(f"jax2onnx cannot convert this {kind} student ({type(e).__name__}: {reason[:200]}); "
                        "BERT and DistilBERT students convert (MPNet's relative position buckets do not): "
                        "use --format jax for this model") from e
    _int64_io(proto, onnx)
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model_dir: str | os.PathLike, out_path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Writes ``out_path`` (.onnx) and, beside it, ``alad.json`` and the tokenizer files."""
    onnx = _require("onnx")
    _require("jax2onnx")
    out = Path(out_path)
    check_out(out, ".onnx")
    model_dir = Path(model_dir)
    loaded = load_aligned_model(model_dir)
    task = loaded.info["task"]
    proto = convert(loaded.model, task, opset=opset)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, out)
    hub.load_tokenizer(str(model_dir / STUDENT_DIR)).save_pretrained(str(out.parent))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "onnx": out.name,
        "task": task,
        "labels": list(loaded.labels),
        "max_length": int(loaded.info["max_length"]),
        "stride": int(loaded.info["stride"]),
        "inputs": [value.name for value in proto.graph.input],
        "outputs": list(QA_OUTPUTS if task == "qa" else TAGGING_OUTPUTS),
        "window": loaded.info.get("window"),
        "teacher": loaded.info.get("teacher"),
        "student": loaded.info.get("student"),
        "source": str(model_dir / MODEL_JSON),
    }
    if task == "qa":
        info["null_threshold"] = (loaded.info.get("meta") or {}).get("null_threshold")
        info["max_query_length"] = int((loaded.info.get("meta") or {}).get("max_query_length", 64))
    (out.parent / INFO_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- run


def read_info(path: str | os.PathLike) -> dict:
    """``alad.json`` beside an exported ``.onnx`` file."""
    path = Path(path)
    file = path.parent / INFO_JSON
    if not path.is_file():
        raise AladError(f"{path}: no such file; pass the .onnx file alad export wrote")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AladError(f"{file} is missing; it is written beside the .onnx file by alad export, export again") from None
    except json.JSONDecodeError as e:
        raise AladError(f"{file}:{e.lineno}: invalid JSON ({e.msg}); export the model again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("onnx") != path.name:
        raise AladError(f"{file} does not describe {path.name} (an {FORMAT} file naming it); export the model again")
    return info


class OnnxForward:
    """An exported file in onnxruntime, with the Predictor's forward signature.

    ``forward(input_ids, attention_mask[, token_type_ids])``, int ``[rows, length]``
    -> tagging ``(logits, label_ids)``, QA ``(start_logits, end_logits)``, numpy.
    """

    def __init__(self, model: str | os.PathLike | bytes, *, threads: int | None = None):
        """``model``: an .onnx file, or a serialized ModelProto (bytes)."""
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64),
                 "token_type_ids": (np.zeros_like(input_ids, np.int64) if token_type_ids is None
                                    else np.asarray(token_type_ids, np.int64))}
        return tuple(self.session.run(None, {name: feeds[name] for name in self.input_names}))


def onnx_predictor(path: str | os.PathLike, **options):
    """A word-level :class:`~alad_jax.inference.predictor.Predictor` (tagging) or
    :class:`~alad_jax.inference.predictor.QAPredictor` (QA) running ``path`` in onnxruntime."""
    info = read_info(path)
    tokenizer = hub.load_tokenizer(str(Path(path).parent))
    forward = OnnxForward(path)
    if info["task"] == "qa":
        threshold = qa.threshold_from_json(info.get("null_threshold"), f"{Path(path).parent / INFO_JSON}")
        return QAPredictor(lambda batch: forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                           tokenizer, max_length=info["max_length"], stride=info["stride"], null_threshold=threshold,
                           max_query_length=int(info.get("max_query_length", 64)))
    return Predictor(forward, info["labels"], tokenizer, max_length=info["max_length"], stride=info["stride"], **options)
