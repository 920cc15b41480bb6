"""Alignment-stage throughput of one process against several: tokens/s of the pipeline's train step.

    # one process
    JAX_PLATFORMS=cpu python benchmarks/multihost_align.py
    # two processes on this machine (each CPU process is one device)
    for i in 0 1; do JAX_PLATFORMS=cpu ALAD_COORDINATOR=localhost:12356 ALAD_NUM_PROCESSES=2 ALAD_PROCESS_ID=$i \\
        python benchmarks/multihost_align.py & done; wait

The step is stage 1 of ``alad run`` without the feature cache (frozen student
and teacher forwards, AlAd forward and backward, AdamW) on the default
config's models (MiniLM-L6 teacher, its first 2 layers as student, K=3) and
token-budget batches of general-corpus sentences, each process feeding its
own rows of every global batch exactly as the pipeline does. Every batch
shape is compiled first (untimed); then one pass over the batches is timed.
Process 0 prints one JSON line: processes, devices, steps, real tokens,
seconds, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from alad_jax import distributed, sharding


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=256, help="corpus sentences per pass")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    distributed.initialize()

    import jax
    from flax import nnx

    from alad_train.config import load_config
    from alad_jax.data import sources, splits, tagging
    from alad_jax.models import compress, hub
    from alad_train import cases, models, tasks
    from alad_train.loop import make_optimizer
    from alad_train.state import train_state_of

    cfg = load_config(None, args.overrides)
    teacher, _ = hub.load_encoder(cfg.teacher)
    tmp = tempfile.mkdtemp(prefix="alad-bench-")  # each process its own student copy: nothing shared on disk
    student, _ = hub.load_encoder(str(compress.truncate(cfg.student, cfg.student_layers, Path(tmp) / "s")))
    tokenizer = hub.load_tokenizer(cfg.teacher)
    sentences = splits.subsample(sources.read_corpus(cfg.corpus), args.sentences, seed=0)
    rows = tagging.encode_tagging(sentences, tokenizer, None, max_length=cfg.max_length, stride=cfg.stride)
    batches = tasks.alignment_batches(rows, cfg, cfg.stages.align, epoch=0)

    window = cfg.windows[0]
    adapter = models.new_adapter(cfg, student.config.hidden_size, teacher.config.hidden_size, window, nnx.Rngs(0))
    model = models.AlignModel(student, teacher, adapter)
    optimizer = make_optimizer(cfg.stages.align, cfg.optim, len(batches))
    mesh = sharding.make_mesh(sharding.MeshConfig(cfg.mesh.data, cfg.mesh.fsdp))
    state = train_state_of(model, cases.ALIGNMENT_TRAINS, models.align_loss, optimizer, mesh)  # what fit builds
    key = jax.random.key(0)

    seen = set()
    compile_start = time.perf_counter()
    for batch in batches:  # one step per shape: compiles, untimed
        if batch["input_ids"].shape not in seen:
            seen.add(batch["input_ids"].shape)
            state.step(sharding.shard_batch(batch, mesh), key)
    jax.block_until_ready(state.trainable)
    compile_s = time.perf_counter() - compile_start

    distributed.barrier("timed-pass")
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        state.step(sharding.shard_batch(batch, mesh), jax.random.fold_in(key, i))
    jax.block_until_ready(state.trainable)
    seconds = time.perf_counter() - start
    local_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    tokens = distributed.sum_over_processes(local_tokens)
    if distributed.is_primary():
        print(json.dumps({
            "processes": jax.process_count(), "devices": jax.device_count(), "steps": len(batches),
            "global_batch_rows": int(batches[0]["input_ids"].shape[0]) * jax.process_count(),
            "tokens": int(tokens), "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "compile_s": round(compile_s, 1), "token_budget": cfg.stages.align.token_budget,
            "max_length": cfg.max_length,
        }), flush=True)
    distributed.finished()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
