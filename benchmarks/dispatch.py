"""Per-step dispatch: the train state's flat-list step vs the same step on nnx/optax trees (issue 14).

``TrainState.step`` passes the trainable, frozen and optimizer state as flat lists of
arrays; ``step_fn`` takes the trees, which jit flattens and rebuilds in Python on every
call. Both run the same compiled program (tests/test_state.py holds them equal bit for
bit). This times both, alternating, on the stages' real shapes: the cached AlAd + head
step of ``alad_w3_frozen`` (32 rows x 48 tokens of cached student states: a short step,
where dispatch shows) and the teacher fine-tune step (16 x 48). Reports the median step
(dispatch + compute, blocking) and the median time for the call alone to return.
Run: ``python benchmarks/dispatch.py [--reps 30]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from alad_jax import sharding
from alad_train.config import load_config
from alad_jax.models.heads import TaggingHead
from alad_jax.models.task_model import TaskModel
from alad_train import cases, models
from alad_train.bench import run as bench_run, steps as bench_steps, trainer as bench_trainer
from alad_train.loop import make_optimizer
from alad_train.state import train_state_of


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    cfg = load_config(None, [])
    teacher, student, *_ = bench_run.load_models(cfg, Path(tempfile.mkdtemp()))
    num_labels, mesh, rng = 17, sharding.make_mesh(), np.random.default_rng(0)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    adapter = models.new_adapter(cfg, ds, dt, 3, nnx.Rngs(0))
    frozen_model = TaskModel(student, TaggingHead(dt, num_labels, rngs=nnx.Rngs(1)), adapter)
    frozen_batch = bench_steps.dense_batch(32, 48, student.config.vocab_size, num_labels)
    frozen_batch["encoder_hidden"] = rng.standard_normal((32, 48, ds)).astype(jax.numpy.bfloat16)
    teacher_batch = bench_steps.dense_batch(16, 48, teacher.config.vocab_size, num_labels)
    setups = {
        "alad_w3_frozen (cached)": (frozen_model, cases.FROZEN, frozen_batch),
        "teacher": (bench_steps.jax_case_model(cases.TEACHER_FT, cfg, teacher, student, num_labels),
                    cases.TEACHER_FT, teacher_batch),
    }
    out = {}
    for name, (model, case, batch) in setups.items():
        optimizer = make_optimizer(getattr(cfg.stages, case.stage), cfg.optim, 1000)
        states = {side: train_state_of(bench_trainer.own_copy(model), case.trainable, models.tagging_loss, optimizer,
                                       mesh) for side in ("flat", "tree")}
        batch = jax.device_put(batch)
        key = jax.random.key(0)

        def flat():
            return states["flat"].step(batch, key)

        def tree():
            s = states["tree"]
            s.trainable, s.opt_state, metrics = s.step_fn(s.trainable, s.frozen, s.opt_state, batch, key)
            return metrics

        steps = {"flat": flat, "tree": tree}
        for fn in steps.values():
            for _ in range(2):
                jax.block_until_ready(fn())
        step_s = {side: [] for side in steps}
        call_s = {side: [] for side in steps}
        for _ in range(args.reps):
            for side, fn in steps.items():
                start = time.perf_counter()
                metrics = fn()
                call_s[side].append(time.perf_counter() - start)
                jax.block_until_ready(metrics)
                step_s[side].append(time.perf_counter() - start)
        med = lambda xs: round(1e3 * statistics.median(xs), 2)
        out[name] = {"batch": list(batch["input_ids"].shape),
                     "step_ms": {side: med(t) for side, t in step_s.items()},
                     "call_returns_ms": {side: med(t) for side, t in call_s.items()},
                     "leaves": len(jax.tree_util.tree_leaves((states["flat"].trainable, states["flat"].opt_state)))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
