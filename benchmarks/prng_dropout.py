"""Dropout's random bits: threefry (JAX's default) vs rbg / unsafe_rbg keys, on the runs' own train steps (issue 14).

A profile of the teacher fine-tune step put ~12% of it in threefry's random-bit
generation for dropout masks. The key's implementation is chosen by the key itself
(``jax.random.key(seed, impl=...)``), so all three run in one process, their steps
taking turns rep by rep. Different generators give different masks: a switch is a
recipe change, to be judged on the default run's numbers, not here.
Run: ``python benchmarks/prng_dropout.py [--reps 8]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax

from alad_jax import sharding
from alad_train.config import load_config
from alad_train import models
from alad_train.bench import effort as bench_effort, run as bench_run, steps as bench_steps
from alad_train.loop import make_optimizer
from alad_train.state import train_state_of

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=8)
    args = parser.parse_args()
    cfg = load_config(None, [])
    teacher, student, *_ = bench_run.load_models(cfg, Path(tempfile.mkdtemp()))
    num_labels = 17
    mesh = sharding.make_mesh()
    batch = jax.device_put(bench_steps.dense_batch(*bench_effort.FINETUNE_BATCH, teacher.config.vocab_size, num_labels))
    tokens = batch["input_ids"].size
    steps = {}
    for case in bench_steps.FINETUNE_CASES:
        stage = getattr(cfg.stages, case.stage)
        for impl in IMPLS:
            state = train_state_of(bench_steps.jax_case_model(case, cfg, teacher, student, num_labels),
                                   case.trainable, models.tagging_loss, make_optimizer(stage, cfg.optim, 1000), mesh)
            keys = iter(jax.random.split(jax.random.key(cfg.seed, impl=impl), 10_000))

            def step(state=state, keys=keys):
                return state.step(batch, next(keys))["loss"]

            jax.block_until_ready(step())  # compile
            jax.block_until_ready(step())
            steps[(case.name, impl)] = step
    times = {k: [] for k in steps}
    for _ in range(args.reps):
        for k, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step())
            times[k].append(time.perf_counter() - start)
    out = {}
    for (case, impl), t in times.items():
        out.setdefault(case, {})[impl] = round(tokens / statistics.median(t), 1)
    for case, by_impl in out.items():
        by_impl["rbg_vs_threefry"] = round(by_impl["rbg"] / by_impl["threefry2x32"], 3)
        by_impl["unsafe_rbg_vs_threefry"] = round(by_impl["unsafe_rbg"] / by_impl["threefry2x32"], 3)
    print(json.dumps({"tokens_per_s": out, "batch": list(batch["input_ids"].shape), "reps": args.reps}, indent=1))


if __name__ == "__main__":
    main()
