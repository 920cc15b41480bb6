"""Dropout's random bits on the runs' own train steps (issues 14, 28): the encoders' dropout
(``alad_jax.models.dropout``: four 16-bit draws per Threefry evaluation) against ``nnx.Dropout``'s one
float32 uniform per element, with Threefry keys (jax's default) and with rbg keys.

A profile of the teacher fine-tune step put ~10-12% of it in Threefry's random-bit
generation for dropout masks. The variants are built in one process and their steps
take turns rep by rep (A B C A B C ...), so load on a shared machine falls on all of
them alike; ``per_rep_vs_per_element`` gives each rep's ratio. Different generators
give different masks: a switch is a recipe change, judged on the default run's
numbers, not here.
Run: ``python benchmarks/prng_dropout.py [--reps 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
from flax import nnx

from alad_jax import sharding
from alad_jax.models.dropout import Dropout
from alad_train.config import load_config
from alad_train import models
from alad_train.bench import effort as bench_effort, run as bench_run, steps as bench_steps
from alad_train.loop import make_optimizer
from alad_train.state import train_state_of

# (name, key implementation, encoder dropout): nnx.Dropout draws one uniform per element; ours four per evaluation
VARIANTS = (("threefry_per_element", "threefry2x32", "nnx"), ("threefry_4_per_evaluation", "threefry2x32", "ours"),
            ("rbg_per_element", "rbg", "nnx"))


def per_element(model: nnx.Module) -> nnx.Module:
    """``model`` with every dropout module back on ``nnx.Dropout`` (one float32 uniform per element)."""
    for _, node in list(nnx.iter_graph(model)):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, Dropout):
                    setattr(node, name, nnx.Dropout(value.rate))
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
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
        for variant, impl, dropout in VARIANTS:
            model = bench_steps.jax_case_model(case, cfg, teacher, student, num_labels)
            state = train_state_of(model if dropout == "ours" else per_element(model), case.trainable,
                                   models.tagging_loss, make_optimizer(stage, cfg.optim, 1000), mesh,
                                   matmul_dtype=cfg.matmul_dtype)
            keys = iter(jax.random.split(jax.random.key(cfg.seed, impl=impl), 10_000))

            def step(state=state, keys=keys):
                return state.step(batch, next(keys))["loss"]

            jax.block_until_ready(step())  # compile
            jax.block_until_ready(step())
            steps[(case.name, variant)] = step
    times = {k: [] for k in steps}
    for _ in range(args.reps):
        for k, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step())
            times[k].append(time.perf_counter() - start)
    out = {}
    for case in bench_steps.FINETUNE_CASES:
        base = times[(case.name, VARIANTS[0][0])]
        row = out[case.name] = {}
        for variant, *_ in VARIANTS:
            t = times[(case.name, variant)]
            row[variant] = {"tokens_per_s": round(tokens / statistics.median(t), 1),
                            "speed_vs_per_element": round(statistics.median(base) / statistics.median(t), 3),
                            "per_rep_vs_per_element": [round(b / a, 3) for a, b in zip(t, base)]}
    print(json.dumps({"steps": out, "batch": list(batch["input_ids"].shape), "reps": args.reps,
                      "matmul_dtype": cfg.matmul_dtype, "load_avg_1min": os.getloadavg()[0]}, indent=1))

if __name__ == "__main__":
    main()
