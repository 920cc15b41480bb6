"""``alad bench``: every measurement (:mod:`alad_train.bench`), assembled into one JSON document."""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax

from alad_jax import xla_cpu
from alad_train.config import Config, load_config
from alad_jax.errors import AladError
from alad_jax.models import compress, hub
from alad_train import tasks
from alad_train.bench import alignment, latency, pytorch, steps
from alad_train.bench.effort import EPOCHS, FULL, MFU_BATCH, QUICK, SEQ, TARGETS, WINDOWS, Effort
from alad_train.bench.flops import adapter_flops_per_token, encoder_flops_per_token
from alad_train.bench.gemm import peak_gflops
from alad_train.timing import rounded


def load_models(cfg: Config, workdir: Path):
    """(teacher, student, tokenizer, teacher_dir, student_dir, student description)."""
    teacher_dir = hub.resolve_model_dir(cfg.teacher, cache_dir=cfg.cache_dir or None)
    student_dir = hub.resolve_model_dir(cfg.student, cache_dir=cfg.cache_dir or None)
    described = cfg.student
    if cfg.student_layers > 0:
        student_dir = compress.truncate(str(student_dir), cfg.student_layers, workdir / "student")
        described = f"{cfg.student} (first {cfg.student_layers} layers)"
    teacher, _ = hub.load_encoder(str(teacher_dir))
    student, _ = hub.load_encoder(str(student_dir))
    for name, encoder in (("teacher", teacher), ("student", student)):
        if encoder.config.max_position_embeddings < SEQ:
            raise AladError(f"bench: {name} has {encoder.config.max_position_embeddings} positions; "
                            f"the benchmark runs sequences of {SEQ}; pick a model with at least {SEQ}")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise AladError(f"bench: teacher vocabulary {teacher.config.vocab_size} != student {student.config.vocab_size}; "
                        "AlAd aligns token by token, so both must share the tokenizer")
    return teacher, student, hub.load_tokenizer(str(teacher_dir)), teacher_dir, student_dir, described


def run_bench(cfg: Config, *, quick: bool = False, vs_torch: bool = False) -> dict:
    """Every measurement, as the JSON-able dict ``alad bench`` prints."""
    if vs_torch:
        pytorch.require_torch()
    cfg = copy.deepcopy(cfg)  # --quick shrinks the data section
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="alad-bench-") as tmp:
        measured = _measure(cfg, QUICK if quick else FULL, Path(tmp), vs_torch)
    result = _document(cfg, quick, measured)
    result["seconds"] = time.perf_counter() - started
    return rounded(result)


def _measure(cfg: Config, effort: Effort, workdir: Path, vs_torch: bool) -> dict:
    """Every timing, in the order the document's notes describe (peak before and after the JAX benchmarks)."""
    teacher, student, tokenizer, teacher_dir, student_dir, student_name = load_models(cfg, workdir)
    if effort.max_rows:
        cfg.data.max_train, cfg.data.max_dev, cfg.data.max_test = effort.max_rows, 8, 8
    task = tasks.TaggingTask.load(cfg, tokenizer)
    rows = task.text_rows("train")
    batches = tasks.alignment_batches(rows, cfg, cfg.stages.continual, epoch=0)
    num_labels, vocab = len(task.vocab), teacher.config.vocab_size

    out = {"teacher": teacher, "student": student, "student_name": student_name}
    peak_before = peak_gflops(effort, cfg.matmul_dtype)
    taggers = latency.latency_models(cfg, teacher, student, num_labels)
    out["latency"] = latency.latencies(taggers, effort.latency_reps, vocab)
    out["onnx_latency"] = latency.onnxruntime_latency(taggers["alad_w3"], effort.latency_reps, vocab)
    out["stage2"] = alignment.stage2(cfg, teacher, student, tasks.rows_of(rows), batches, workdir)
    out["step"] = alignment.adapter_step(cfg, student.config.hidden_size, teacher.config.hidden_size, effort)
    peak_after = peak_gflops(effort, cfg.matmul_dtype)
    other = "float32" if cfg.matmul_dtype == "bfloat16" else "bfloat16"
    out["peak"], out["peaks_before_after"] = max(peak_before, peak_after), [peak_before, peak_after]
    out["peaks"] = {cfg.matmul_dtype: out["peak"], other: peak_gflops(effort, other)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def torch_worker(batch, align_batch, hidden):  # the PyTorch twins, in a process of their own
        return pytorch.TorchWorker(cfg, teacher_dir, student_dir, num_labels, batch, align_batch, hidden,
                                   workdir / "torch_worker")

    out["steps"] = steps.run(cfg, teacher, student, num_labels, effort.step_reps, out["peak"],
                             torch_worker if vs_torch else None)
    if vs_torch:
        out["torch"] = pytorch.torch_recipe(cfg, teacher_dir, student_dir, batches, num_labels, effort)
        out["peak_rss_mb_with_torch"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _analytic(cfg: Config, teacher, student) -> dict:
    """What the targets would be if every part ran at the same FLOP rate: the share of the work the model
    sizes impose (measured rates differ: encoders also spend time outside matmuls)."""
    ds, dt, hidden = student.config.hidden_size, teacher.config.hidden_size, cfg.adapter_hidden
    f_student = encoder_flops_per_token(student.config, SEQ)
    f_teacher = encoder_flops_per_token(teacher.config, SEQ)
    f_train = adapter_flops_per_token(cfg.windows[0], ds, hidden, dt, train=True)
    return {
        "student_forward_mflop_per_token": f_student / 1e6,
        "teacher_forward_mflop_per_token": f_teacher / 1e6,
        "adapter_forward_mflop_per_token": {f"w{k}": adapter_flops_per_token(k, ds, hidden, dt, train=False) / 1e6
                                            for k in WINDOWS},
        "adapter_train_step_mflop_per_token": f_train / 1e6,
        "stage2_10epoch_speedup_at_equal_flop_rate": EPOCHS * (f_student + f_teacher + f_train)
        / (f_student + f_teacher + EPOCHS * f_train),
        "alad_w3_latency_overhead_at_equal_flop_rate": 1 + adapter_flops_per_token(3, ds, hidden, dt, train=False) / f_student,
    }


def _document(cfg: Config, quick: bool, m: dict) -> dict:
    """The JSON document of the measurements ``m`` (:func:`_measure`).

    Over 60 lines because it is one flat dict literal: the document's keys, in the order it prints them."""
    stage2, step, latency_ms, peak = m["stage2"], m["step"], m["latency"], m["peak"]
    uncached_10 = EPOCHS * stage2["uncached_epoch_s"]
    cached_10 = stage2["cache_build_s"] + EPOCHS * stage2["cached_epoch_s"]
    mfu = step["gflop"] / (step["ms"] / 1e3) / peak
    overhead = {f"alad_w{k}": {b: latency_ms[f"alad_w{k}"][b]["p50"] / latency_ms["student"][b]["p50"]
                               for b in latency_ms["student"]} for k in WINDOWS}
    f_train = adapter_flops_per_token(cfg.windows[0], m["student"].config.hidden_size, cfg.adapter_hidden,
                                      m["teacher"].config.hidden_size, train=True)
    result = {
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "quick": quick,
        "teacher": cfg.teacher,
        "student": m["student_name"],
        "seq_len": SEQ,
        "matmul_dtype": cfg.matmul_dtype,
        "xla_cpu": xla_cpu.describe(cfg.matmul_dtype),
        "matmul_peak_gflops": peak,
        "matmul_gflops_before_after": m["peaks_before_after"],
        "matmul_peak_gflops_by_dtype": m["peaks"],
        "latency_ms": latency_ms,
        "latency_overhead_vs_student": overhead,
        "onnxruntime_latency_ms": m["onnx_latency"],
        "align_tokens_per_s": {"uncached": stage2["tokens"] / stage2["uncached_epoch_s"],
                               "cached": stage2["tokens"] / stage2["cached_epoch_s"]},
        "stage2": stage2,
        "stage2_10epoch_speedup": uncached_10 / cached_10,
        "stage2_10epoch_speedup_cache_reused": stage2["uncached_epoch_s"] / stage2["cached_epoch_s"],
        "adapter_step": step,
        "adapter_step_mfu": mfu,
        "adapter_step_mfu_by_impl": {k: step["gflop"] / (ms / 1e3) / peak for k, ms in step["ms_by_impl"].items()},
        # The whole cached epoch (gather from the memory-mapped cache and padding rows included).
        "stage2_cached_epoch_mfu": stage2["padded_tokens"] * f_train / stage2["cached_epoch_s"] / 1e9 / peak,
        "peak_rss_mb": m["peak_rss_mb"],
        **m["steps"],
        "analytic": _analytic(cfg, m["teacher"], m["student"]),
        "targets": {
            "meaning": "aspirations this project set for its speed, not checks: false = not reached on this "
                       "machine (nothing fails)",
            "reached": {
                "stage2_10epoch_speedup>=5": uncached_10 / cached_10 >= TARGETS["stage2_10epoch_speedup"],
                "adapter_step_mfu>=0.5": mfu >= TARGETS["adapter_step_mfu"],
                "alad_w3_b32_latency_overhead<=1.3":
                    overhead["alad_w3"]["b32"] <= TARGETS["alad_w3_b32_latency_overhead"],
            },
        },
        "notes": [
            f"stage 2: one timed epoch of each path over the embedded default's {stage2['rows']} task-text rows "
            f"(token budget {cfg.stages.continual.token_budget}, K={cfg.windows[0]}); 10-epoch figures are "
            "10 x that epoch (+ the cache build, timed once, writing to disk included)",
            "compilation is excluded from every timing (ahead-of-time per batch shape; stage2.compile_s)",
            "align_tokens_per_s counts real (non-padding) tokens; adapter_step_mfu counts the executed matmul "
            f"FLOPs of one cached AlAd train step on a full {MFU_BATCH[0]}x{MFU_BATCH[1]} batch",
            "latency: full-length rows (seq 128), tagging head included, argmax included",
        ],
    }
    if "torch" in m:
        result["vs_torch"] = _vs_torch(m["torch"], stage2, latency_ms)
        result["peak_rss_mb_with_torch"] = m["peak_rss_mb_with_torch"]
    return result


def _vs_torch(torch_result: dict, stage2: dict, latency_ms: dict) -> dict:
    """Ours / the authors' PyTorch recipe, run in this process one epoch after the other."""
    ours_tokens = stage2["tokens"] / stage2["uncached_epoch_s"]
    theirs_tokens = torch_result["tokens"] / torch_result["seconds"]
    return {
        "torch": torch_result["version"],
        "torch_threads": torch_result["threads"],
        "batches": torch_result["batches"],
        "align_tokens_per_s_uncached": {"alad_jax": ours_tokens, "torch": theirs_tokens,
                                        "ratio": ours_tokens / theirs_tokens},
        "latency_ms_alad_w3_p50": {
            b: {"alad_jax": latency_ms["alad_w3"][b]["p50"], "torch": torch_result["latency"][b]["p50"],
                "ratio": latency_ms["alad_w3"][b]["p50"] / torch_result["latency"][b]["p50"]}
            for b in torch_result["latency"]},
        "align_tokens_per_s_cached_vs_torch_uncached": stage2["tokens"] / stage2["cached_epoch_s"] / theirs_tokens,
        "note": "ratio = ours / theirs: above 1 is faster for tokens/s, below 1 is faster for latency; "
                "these run PyTorch in the JAX process, one epoch after the other (PyTorch runs slower "
                "there): quote ratios_vs_torch (its own process, interleaved, dense batches) instead",
    }


def main(args) -> int:
    """``alad bench [--quick] [--vs-torch] [teacher=... student=... student_layers=N ...]``."""
    cfg = load_config(None, args.overrides)
    print(json.dumps(run_bench(cfg, quick=args.quick, vs_torch=args.vs_torch), indent=1))
    return 0
