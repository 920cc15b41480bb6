"""The serving format, read side: a directory of ``jax.export`` programs, reloadable with jax alone.

:mod:`alad_jax.inference.export` writes it; this module reads it and imports neither flax
nor the model code (a server that only runs the artifact needs jax, numpy and safetensors).

    serving.json            labels, buckets, max_length, stride, row sizes, parameter names
    params.safetensors      the model's parameters, float32, once for all programs
    predict_L{L}.jaxexport  one ``jax.export`` program per bucket length L; the batch
                            dimension is symbolic (``b``), so any row count runs
    tokenizer files         so a server can turn words into ids without the Hub

Each tagging program is ``(params, input_ids [b, L] int32, attention_mask [b, L] int32)
-> (logits float32 [b, L, labels], label_ids int32 [b, L])``, ``params`` the
list of arrays in ``serving.json``'s order. The parameters are an argument
rather than constants folded into each program, so they are stored once.

A QA artifact (``task: "qa"`` in ``serving.json``) has one program, at ``max_length`` (QA
windows are always padded to it): ``(params, input_ids, attention_mask, token_type_ids) ->
(start_logits, end_logits)`` float32 ``[b, L]``; ``serving.json`` also holds the null
threshold, and span decoding stays in Python
(:meth:`~alad_jax.inference.predictor.QAPredictor.from_exported`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from alad_jax.errors import AladError

FORMAT = "alad-serving"
VERSION = 1
SERVING_JSON = "serving.json"
PARAMS_FILE = "params.safetensors"


def program_file(length: int) -> str:
    """The file of the program for bucket length ``length``."""
    return f"predict_L{length}.jaxexport"


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
            raise AladError(f"{path / program_file(length)} was exported for {', '.join(program.platforms)}, "
                            f"not this {platform} backend; export with platforms=[..., '{platform}']")
    if info.get("task") == "qa":
        return ExportedSpans(info, programs[int(info["max_length"])], params)
    return ExportedTagger(info, programs, params)
