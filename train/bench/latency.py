"""Inference latency: the jitted tagging forward (what ``alad predict`` runs) of the student, student + AlAd
and teacher, and the same AlAd tagger under onnxruntime."""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from alad_jax.inference.onnx_export import OnnxForward, convert
from alad_jax.inference.predictor import CompiledTagger
from alad_jax.models.heads import TaggingHead
from alad_jax.models.task_model import TaskModel
from alad_train import models
from alad_train.measure import blocking
from alad_train.bench.effort import LATENCY_BATCHES, SEQ, WINDOWS
from alad_train.timing import interleaved, percentiles


def latency_models(cfg, teacher, student, num_labels: int) -> dict[str, CompiledTagger]:
    """{"student", "alad_w1", "alad_w3", "alad_w5", "teacher"}: compiled taggers with new heads (and AlAds)."""
    rngs = nnx.Rngs(cfg.seed)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    forwards = {"student": CompiledTagger(TaskModel(student, TaggingHead(ds, num_labels, rngs=rngs)))}
    for k in WINDOWS:
        adapter = models.new_adapter(cfg, ds, dt, k, rngs)
        forwards[f"alad_w{k}"] = CompiledTagger(TaskModel(student, TaggingHead(dt, num_labels, rngs=rngs), adapter))
    forwards["teacher"] = CompiledTagger(TaskModel(teacher, TaggingHead(dt, num_labels, rngs=rngs)))
    return forwards


def latencies(forwards: dict, reps: dict, vocab: int) -> dict:
    """{name: {"b1": {p50, p95}, "b32": ...}} in ms, the forwards interleaved run by run."""
    out = {name: {} for name in forwards}
    for rows in LATENCY_BATCHES:
        ids = np.random.default_rng(rows).integers(1000, vocab, (rows, SEQ)).astype(np.int32)
        mask = np.ones_like(ids)
        for forward in forwards.values():
            jax.block_until_ready(forward(ids, mask))  # compile
        times = interleaved({name: blocking(forward, ids, mask) for name, forward in forwards.items()}, reps[rows])
        for name in forwards:
            out[name][f"b{rows}"] = percentiles(times[name])
    return out


def onnxruntime_latency(tagger: CompiledTagger, reps: dict, vocab: int) -> dict:
    """{"alad_w3_onnxruntime": {b1, b32}, "alad_w3_jit": {b1, b32}, ...}: one model, both runtimes, interleaved."""
    try:  # the onnx extra is optional: without it there is nothing to time
        import jax2onnx  # noqa: F401  (the converter)
        import onnxruntime
    except ImportError:
        return {"note": "not measured: install the onnx extra (bash scripts/setup.sh onnx)"}

    started = time.perf_counter()
    proto = convert(nnx.merge(tagger.graphdef, tagger.state), "pos")
    export_s = time.perf_counter() - started
    forward = OnnxForward(proto.SerializeToString())
    timed = latencies({"alad_w3_onnxruntime": forward, "alad_w3_jit": tagger}, reps, vocab)
    return {**timed, "onnxruntime": onnxruntime.__version__, "export_s": export_s,
            "onnxruntime_threads": "default (one per core)"}
