"""The serving format, write side: a saved model or predictor -> a ``jax.export`` artifact directory.

The layout and the programs' signatures are :mod:`alad_jax.inference.serving`'s, which reads
them back with jax alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from alad_jax.data import qa
from alad_jax.errors import AladError
from alad_jax.inference.predictor import Predictor
from alad_jax.inference.saved_model import MODEL_JSON, STUDENT_DIR, load_aligned_model
from alad_jax.inference.serving import FORMAT, PARAMS_FILE, SERVING_JSON, VERSION, program_file
from alad_jax.models import hub


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
        (out / program_file(length)).write_bytes(exported.serialize())
        programs[str(length)] = program_file(length)

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
    (out / program_file(max_length)).write_bytes(exported.serialize())
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
        "programs": {str(max_length): program_file(max_length)},
        "platforms": list(exported.platforms),
        "inputs": "input_ids, attention_mask, token_type_ids int32 [b, max_length]",
        "outputs": "start_logits float32 [b, max_length], end_logits float32 [b, max_length]",
    }
    (out / SERVING_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def export_model(model_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                 platforms: Sequence[str] | None = None) -> Path:
    """A saved aligned model (tagging or QA) -> the serving artifact directory ``out_path``."""
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
