"""A serving artifact: the jitted predictor as serialized StableHLO, reloadable with jax alone.

``export_predictor`` writes one directory:

    serving.json            labels, buckets, max_length, stride, row sizes, parameter names
    params.safetensors      the model's parameters, float32, once for all programs
    predict_L{L}.jaxexport  one ``jax.export`` program per bucket length L; the batch
                            dimension is symbolic (``b``), so any row count runs
    tokenizer files         so a server can turn words into ids without the Hub

Each program is ``(params, input_ids [b, L] int32, attention_mask [b, L] int32)
-> (logits float32 [b, L, labels], label_ids int32 [b, L])``, ``params`` the
list of arrays in ``serving.json``'s order. The parameters are an argument
rather than constants folded into each program, so they are stored once.

A QA model (``task: "qa"`` in ``serving.json``, written by :func:`export_model`)
has one program, at ``max_length`` (QA windows are always padded to it):
``(params, input_ids, attention_mask, token_type_ids) -> (start_logits,
end_logits)`` float32 ``[b, L]``; ``serving.json`` also holds the null
threshold, and span decoding stays in Python
(:meth:`~alad_jax.inference.predictor.QAPredictor.from_exported`).

This module imports neither flax nor the model code: :func:`load_exported`
needs jax, numpy and safetensors only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alad_jax.errors import AladError

FORMAT = "alad-serving"
VERSION = 1
SERVING_JSON = "serving.json"
PARAMS_FILE = "params.safetensors"


def _program_file(length: int) -> str:
    return f"predict_L{length}.jaxexport"


def export_predictor(predictor, out_path: str | os.PathLike, *, platforms: Sequence[str] | None = None) -> Path:
    """Serializes ``predictor`` (a :class:`~alad_jax.inference.predictor.Predictor` over a
    model, not over another export) into the directory ``out_path``.

    ``platforms`` (e.g. ``("cpu", "cuda", "tpu")``) are the backends the
    programs are lowered for; default: this process's backend.
    """
    tagger = predictor.forward
    if not hasattr(tagger, "apply"):
        raise AladError("export_predictor: this predictor does not run a model in-process (already an export?); "
                        "build it with Predictor.from_dir or Predictor.from_model")
    out = Path(out_path)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SERVING_JSON).is_file())):
        raise AladError(f"{out} exists and is not a serving artifact (no {SERVING_JSON}); choose a new directory")
    out.mkdir(parents=True, exist_ok=True)

    flat, treedef = jax.tree_util.tree_flatten_with_path(tagger.state)
    names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]
    leaves = [np.asarray(leaf, np.float32) for _, leaf in flat]

    def serve(params, input_ids, attention_mask):
        return tagger.apply(jax.tree_util.tree_unflatten(treedef, params), input_ids, attention_mask)

    param_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    (batch,) = jax.export.symbolic_shape("b")
    programs = {}
    for length in predictor.buckets:
        tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
        exported = jax.export.export(jax.jit(serve), platforms=platforms)(param_specs, tokens, tokens)
        (out / _program_file(length)).write_bytes(exported.serialize())
        programs[str(length)] = _program_file(length)

    save_file({name: leaf for name, leaf in zip(names, leaves)}, str(out / PARAMS_FILE))
    predictor.tokenizer.save_pretrained(str(out))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "labels": list(predictor.labels),
        "max_length": predictor.max_length,
        "stride": predictor.stride,
        "buckets": list(predictor.buckets),
        "row_sizes": list(predictor.row_sizes),
        "params": names,
        "programs": programs,
        "platforms": list(exported.platforms),
        "inputs": "input_ids int32 [b, L], attention_mask int32 [b, L] (1 = token, 0 = padding)",
        "outputs": "logits float32 [b, L, num_labels], label_ids int32 [b, L]",
    }
    (out / SERVING_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def export_spans(model, tokenizer, out_path: str | os.PathLike, *, max_length: int, stride: int,
                 null_threshold: float, max_query_length: int = 64, platforms: Sequence[str] | None = None) -> Path:
    """Serializes a QA TaskModel's span logits into the directory ``out_path`` (one program, length
    ``max_length``, symbolic batch); ``null_threshold`` is the dev-tuned one of the saved model."""
    from flax import nnx

    from alad_jax.data import qa

    out = Path(out_path)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SERVING_JSON).is_file())):
        raise AladError(f"{out} exists and is not a serving artifact (no {SERVING_JSON}); choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    graphdef, state = nnx.split(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]
    leaves = [np.asarray(leaf, np.float32) for _, leaf in flat]

    def serve(params, input_ids, attention_mask, token_type_ids):
        start, end = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, params))(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids})
        return start.astype(jnp.float32), end.astype(jnp.float32)

    (batch,) = jax.export.symbolic_shape("b")
    tokens = jax.ShapeDtypeStruct((batch, max_length), jnp.int32)
    param_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    exported = jax.export.export(jax.jit(serve), platforms=platforms)(param_specs, tokens, tokens, tokens)
    (out / _program_file(max_length)).write_bytes(exported.serialize())
    save_file({name: leaf for name, leaf in zip(names, leaves)}, str(out / PARAMS_FILE))
    tokenizer.save_pretrained(str(out))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "task": "qa",
        "labels": [],
        "max_length": int(max_length),
        "stride": int(stride),
        "null_threshold": qa.threshold_to_json(null_threshold),
        "max_query_length": int(max_query_length),
        "buckets": [int(max_length)],
        "row_sizes": [],
        "params": names,
        "programs": {str(max_length): _program_file(max_length)},
        "platforms": list(exported.platforms),
        "inputs": "input_ids, attention_mask, token_type_ids int32 [b, max_length]",
        "outputs": "start_logits float32 [b, max_length], end_logits float32 [b, max_length]",
    }
    (out / SERVING_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def export_model(model_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                 platforms: Sequence[str] | None = None) -> Path:
    """A saved aligned model (tagging or QA) -> the serving artifact directory ``out_path``."""
    from alad_jax.data import qa
    from alad_jax.inference.predictor import Predictor
    from alad_jax.inference.saved_model import MODEL_JSON, STUDENT_DIR, load_aligned_model
    from alad_jax.models import hub

    model_dir = Path(model_dir)
    loaded = load_aligned_model(model_dir)
    if loaded.info["task"] != "qa":
        return export_predictor(Predictor.from_dir(model_dir), out_path, platforms=platforms)
    meta = loaded.info.get("meta") or {}
    threshold = qa.threshold_from_json(meta.get("null_threshold"), f"{model_dir / MODEL_JSON}: meta")
    return export_spans(loaded.model, hub.load_tokenizer(str(model_dir / STUDENT_DIR)), out_path,
                        max_length=loaded.info["max_length"], stride=loaded.info["stride"],
                        null_threshold=threshold, max_query_length=int(meta.get("max_query_length", 64)),
                        platforms=platforms)


class ExportedSpans:
    """A reloaded QA program: ``spans(batch) -> (start_logits, end_logits)``, float32 ``[rows, max_length]``.

    ``batch`` holds int ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[rows, max_length]``.
    """

    def __init__(self, info: dict, program: jax.export.Exported, params: list[jax.Array]):
        self.max_length = int(info["max_length"])
        self.stride = int(info["stride"])
        self.null_threshold = info["null_threshold"]
        self.max_query_length = int(info.get("max_query_length", 64))
        self.params = params
        self._call = jax.jit(program.call)

    def __call__(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        ids, mask, types = (np.asarray(batch[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids"))
        if ids.ndim != 2 or ids.shape[1] != self.max_length or not ids.shape == mask.shape == types.shape:
            raise AladError(f"exported QA model: inputs must be [rows, {self.max_length}] (max_length), "
                            f"got {ids.shape}, {mask.shape}, {types.shape}")
        return self._call(self.params, ids, mask, types)


class ExportedTagger:
    """The reloaded programs: ``tagger(input_ids, attention_mask) -> (logits, label_ids)``.

    Inputs are int ``[rows, length]`` with any row count and ``length <=
    max_length``; a length between buckets is padded to the next bucket and
    the outputs cut back to ``length``.
    """

    def __init__(self, info: dict, programs: dict[int, jax.export.Exported], params: list[jax.Array]):
        self.labels = tuple(info["labels"])
        self.max_length = int(info["max_length"])
        self.stride = int(info["stride"])
        self.buckets = tuple(sorted(programs))
        self.row_sizes = tuple(info["row_sizes"])
        self.params = params
        # One jit per program: compiled once per row count, like the in-process predictor.
        self._calls = {length: jax.jit(program.call) for length, program in programs.items()}

    def __call__(self, input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
        input_ids = np.asarray(input_ids, np.int32)
        attention_mask = np.asarray(attention_mask, np.int32)
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise AladError(f"exported tagger: input_ids {input_ids.shape} and attention_mask "
                            f"{attention_mask.shape} must be the same [rows, length]")
        rows, length = input_ids.shape
        bucket = next((b for b in self.buckets if b >= length), None)
        if bucket is None:
            raise AladError(f"exported tagger: length {length} exceeds max_length {self.max_length}; "
                            "split long inputs into windows")
        pad = ((0, 0), (0, bucket - length))
        logits, label_ids = self._calls[bucket](self.params, np.pad(input_ids, pad), np.pad(attention_mask, pad))
        return logits[:, :length], label_ids[:, :length]


def load_exported(path: str | os.PathLike) -> ExportedTagger | ExportedSpans:
    """Reads a directory written by :func:`export_predictor` (a tagger) or :func:`export_spans` (QA)."""
    path = Path(path)
    info_file = path / SERVING_JSON
    if not info_file.is_file():
        raise AladError(f"{path} is not a serving artifact ({SERVING_JSON} missing); pass export_predictor's output")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AladError(f"{info_file}:{e.lineno}: invalid JSON ({e.msg}); export the predictor again") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise AladError(f"{info_file}: format {info.get('format')!r} version {info.get('version')!r} is not "
                        f"{FORMAT} version {VERSION}; export the predictor again with this alad")
    try:
        with safe_open(str(path / PARAMS_FILE), framework="np") as f:
            params = [jnp.asarray(f.get_tensor(name)) for name in info["params"]]
    except (SafetensorError, FileNotFoundError) as e:
        raise AladError(f"{path / PARAMS_FILE}: cannot read parameters ({e}); export the predictor again") from None
    programs = {}
    for length, file in info["programs"].items():
        try:
            programs[int(length)] = jax.export.deserialize(bytearray((path / file).read_bytes()))
        except FileNotFoundError:
            raise AladError(f"{path / file} is missing; export the predictor again") from None
    platform = jax.export.default_export_platform()
    for length, program in programs.items():
        if platform not in program.platforms:
            raise AladError(f"{path / _program_file(length)} was exported for {', '.join(program.platforms)}, "
                            f"not this {platform} backend; export with platforms=[..., '{platform}']")
    if info.get("task") == "qa":
        return ExportedSpans(info, programs[int(info["max_length"])], params)
    return ExportedTagger(info, programs, params)
