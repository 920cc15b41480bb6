"""Which library runs each dot of a train step, under which XLA:CPU settings (issue 28).

Compiles the teacher fine-tune step twice, on ``alad bench``'s dense batch and on
a packed batch of the same shape as ``alad run`` feeds it (segment ids, position
ids: 3 sentences per row), each under several XLA:CPU debug-option sets passed
as compile options (the same DebugOptions fields ``XLA_FLAGS`` sets). For every
dot of the optimized HLO it reports where it runs: a YNNPACK fusion
(``__ynn_fusion``), a oneDNN fusion (``__onednn_fusion``) or XLA's own emitter
(``xla``), with its operand -> result dtypes. ``--time`` then steps every
compiled variant interleaved (A B C A B C ...), so load falls on all alike.
Run: ``python benchmarks/xla_cpu_dots.py [--time 8]``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

ONEDNN_DOTS = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
OPTION_SETS = {
    "default": {},
    "use_onednn": {"xla_cpu_use_onednn": True},  # what the issue tried: --xla_cpu_use_onednn=true alone
    "onednn_dots": ONEDNN_DOTS,
    "ynn_off": {"xla_cpu_experimental_ynn_fusion_type": ""},
    # YNNPACK fusions grown around the dots (bias add, GELU, ...) instead of one dot each
    "ynn_dot_fusions": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynn_dot_eltwise": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
}

def packed_batch(rows: int, length: int, vocab: int, num_labels: int, per_row: int = 3, seed: int = 0) -> dict:
    """A packed batch as :func:`alad_jax.data.batching.make_packed_batches` builds it: ``per_row`` sentences
    per row, each ``length // per_row - 1`` tokens long (a few positions left empty, as packing leaves them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = length // per_row - 1
    batch = {"input_ids": np.zeros((rows, length), np.int32), "attention_mask": np.zeros((rows, length), np.int32),
             "token_type_ids": np.zeros((rows, length), np.int32),
             "labels": np.full((rows, length), -100, np.int32), "segment_ids": np.zeros((rows, length), np.int32),
             "position_ids": np.zeros((rows, length), np.int32), "packed_index": np.full((rows, length), -1, np.int32)}
    for r in range(rows):
        for k in range(per_row):
            span = slice(k * n, (k + 1) * n)
            batch["input_ids"][r, span] = rng.integers(1000, vocab, n)
            batch["attention_mask"][r, span] = 1
            batch["labels"][r, span] = rng.integers(0, num_labels, n)
            batch["segment_ids"][r, span] = k + 1
            batch["position_ids"][r, span] = np.arange(n)
            batch["packed_index"][r, span] = r * per_row + k
    return batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", type=int, default=0, help="interleaved timed steps per variant (0: counts only)")
    parser.add_argument("--sets", default=",".join(OPTION_SETS))
    parser.add_argument("--batches", default="bench_dense,run_packed")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from alad_jax import sharding, xla_cpu
    from alad_train.config import load_config
    from alad_train import cases, models
    from alad_train.bench import effort as bench_effort, run as bench_run, steps as bench_steps
    from alad_train.loop import make_optimizer
    from alad_train.state import train_state_of

    cfg = load_config(None, [])
    teacher, student, *_ = bench_run.load_models(cfg, Path(tempfile.mkdtemp()))
    num_labels, (rows, length) = 17, bench_effort.FINETUNE_BATCH
    batches = {"bench_dense": bench_steps.dense_batch(rows, length, teacher.config.vocab_size, num_labels),
               "run_packed": packed_batch(rows, length, teacher.config.vocab_size, num_labels)}
    state = train_state_of(bench_steps.jax_case_model(cases.TEACHER_FT, cfg, teacher, student, num_labels),
                           cases.TEACHER_FT.trainable, models.tagging_loss,
                           make_optimizer(cfg.stages.teacher, cfg.optim, 1000), sharding.make_mesh(),
                           matmul_dtype=cfg.matmul_dtype)
    report, compiled = {"matmul_dtype": cfg.matmul_dtype, "jax": jax.__version__}, {}
    for batch_name in args.batches.split(","):
        batch = batches[batch_name]
        lowered = state.lower(batch, jax.random.key(0))
        for name in args.sets.split(","):
            start = time.perf_counter()
            exe = lowered.compile(compiler_options=OPTION_SETS[name])
            text = exe.as_text()
            report[f"{batch_name}/{name}"] = {"dots": xla_cpu.dot_libraries(text), "compile_s": round(time.perf_counter() - start, 1),
                                              "hlo_sha": hashlib.sha256(text.encode()).hexdigest()[:12]}
            compiled[(batch_name, name)] = (exe, jax.device_put(batch))
            print(batch_name, name, json.dumps(report[f"{batch_name}/{name}"]), flush=True)
    if args.time:
        times = collections.defaultdict(list)
        for (batch_name, name), (exe, batch) in compiled.items():  # one step from the same state: the numbers
            saved = [jnp.copy(x) for x in state._trainable], [jnp.copy(x) for x in state._opt_state]
            metrics = jax.device_get(state.run(exe, batch, jax.random.key(0)))
            report[f"{batch_name}/{name}"].update(loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]))
            state._trainable, state._opt_state = saved
        for i in range(args.time):
            for key, (exe, batch) in compiled.items():
                start = time.perf_counter()
                jax.block_until_ready(state.run(exe, batch, jax.random.key(i)))
                times[key].append(time.perf_counter() - start)
        for (batch_name, name), ts in times.items():
            report[f"{batch_name}/{name}"]["ms_median"] = round(1e3 * statistics.median(ts), 1)
            report[f"{batch_name}/{name}"]["ms_min"] = round(1e3 * min(ts), 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
