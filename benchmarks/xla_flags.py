"""XLA CPU flags vs the plain path on our teacher fine-tune and uncached alignment steps (issue 14).

XLA_FLAGS is read once per process, so each flag set runs in a child process;
the sets alternate round by round (A B C A B C ...) so the machine's load
drifts over all alike. Each child reports the median step time and the loss
trajectory of a few steps from the same init, batch and keys: a flag that
changes the numbers shows up as a nonzero difference to the plain run's losses.
Run: ``python benchmarks/xla_flags.py [--rounds 2] [--steps 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAG_SETS = {
    "plain": "",
    "avx512_vectors": "--xla_cpu_prefer_vector_width=512",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    # compile-time flags: a cold XLA cache pays compilation on every run
    "opt_level_1": "--xla_backend_optimization_level=1",
    "no_expensive_llvm": "--xla_llvm_disable_expensive_passes=true",
    "opt1_no_expensive": "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true",
}


def child(steps: int) -> dict:
    import jax

    from alad_jax import sharding
    from alad_train.config import load_config
    from alad_train import cases, models
    from alad_train.bench import effort as bench_effort, run as bench_run, steps as bench_steps
    from alad_train.loop import make_optimizer
    from alad_train.state import train_state_of

    cfg = load_config(None, [])
    teacher, student, *_ = bench_run.load_models(cfg, Path(tempfile.mkdtemp()))
    num_labels = 17
    out = {}
    mesh = sharding.make_mesh()
    for name in ("teacher", "align_uncached"):
        if name == "teacher":
            batch = bench_steps.dense_batch(*bench_effort.FINETUNE_BATCH, teacher.config.vocab_size, num_labels)
            state = train_state_of(bench_steps.jax_case_model(cases.TEACHER_FT, cfg, teacher, student, num_labels),
                                   cases.TEACHER_FT.trainable, models.tagging_loss,
                                   make_optimizer(cfg.stages.teacher, cfg.optim, 1000), mesh)
        else:
            batch = bench_steps.dense_batch(*bench_effort.ALIGN_BATCH, teacher.config.vocab_size, num_labels)
            del batch["labels"]
            state = bench_steps.align_uncached_state(cfg, teacher, student, mesh)
        batch = jax.device_put(batch)
        start = time.perf_counter()
        losses = [float(state.step(batch, jax.random.key(0))["loss"])]  # compile + first step
        compile_s = time.perf_counter() - start
        times = []
        for i in range(1, steps):
            start = time.perf_counter()
            metrics = state.step(batch, jax.random.key(i))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            losses.append(float(metrics["loss"]))
        out[name] = {"ms": 1e3 * statistics.median(times), "losses": losses, "compile_s": compile_s}
        del state
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sets", default=",".join(FLAG_SETS))
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.steps)), flush=True)
        return
    results = {name: [] for name in args.sets.split(",")}
    for _ in range(args.rounds):
        for name in results:
            env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name]}
            proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                                  capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(name, "failed:", proc.stderr[-2000:], flush=True)
                continue
            results[name].append(json.loads(line[7:]))
            print(name, line[7:], flush=True)
    plain = results.get("plain", [])
    summary = {}
    for name, runs in results.items():
        if not runs:
            continue
        entry = {}
        for step in runs[0]:
            ms = [r[step]["ms"] for r in runs]
            entry[step] = {"ms_runs": [round(m, 1) for m in ms],
                           "compile_s_runs": [round(r[step]["compile_s"], 2) for r in runs]}
            if plain:
                ref = plain[0][step]["losses"]
                entry[step]["max_rel_loss_diff_vs_plain"] = max(
                    abs(a / b - 1) for a, b in zip(runs[0][step]["losses"], ref))
        summary[name] = entry
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
