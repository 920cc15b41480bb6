"""Stage 1 streamed vs in memory: peak RSS and tokens/s at growing corpus sizes, a fixed number of steps.

    python benchmarks/stream_align.py --sizes 20000 200000 2000000 --steps 20 [--memory 20000] [--processes 2]
        [--modes stream memory cached] [KEY=VALUE ...]

Writes a generated text corpus per size (the packaged PetroGold + DANTEShots sentences repeated, in 8
shards) and runs, each in a fresh process so that its peak RSS is its own, on the default config's
models (MiniLM-L6 teacher, its first 2 layers as student, K=3, 4096-token batches, bfloat16 steps):

- ``stream``: :func:`alad_train.align.train_streamed`: corpus streamed (grain), teacher online,
  ``corpus.max_sentences = 0`` (the whole stream), ``max_steps`` steps;
- ``memory`` (sizes given by ``--memory``): today's in-memory path of ``alad run`` without the cache
  (read the whole corpus, tokenize all of it, bucketed batches, teacher online), same steps;
- ``cached``: today's default path (the same rows, feature cache built then packed cached steps);
- ``stream`` as ``--processes`` N local processes (``ALAD_COORDINATOR`` ...; each reads and tokenizes its
  shard of the stream and holds 1/N of each global batch): the same global batches, the same steps.

Prints one JSON line per run: mode, sentences, steps, train tokens/s (the fit's own count: real tokens
over the fit's seconds, compiling and the stream's reading and tokenizing included), the steady rate
after ``WARMUP`` steps, seconds to prepare the data before the fit (reading, tokenizing, building the
cache), peak RSS in GB (with N processes: each process's). Other jobs on a shared machine move the tokens/s: run modes back to
back and compare within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARDS = 8
WARMUP = 2  # steps left out of the steady rate


def write_corpus(directory: Path, sentences: int) -> Path:
    """``sentences`` lines (the packaged UD sentences repeated) in ``SHARDS`` text files; returns the glob."""
    from alad_jax.data.packaged import load_packaged

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "done").is_file():
        return directory / "part-*.txt"
    lines = [" ".join(s.words) for name in ("petrogold", "danteshots") for s in load_packaged(name)]
    per_shard = -(-sentences // SHARDS)
    written = 0
    for n in range(SHARDS):
        count = min(per_shard, sentences - written)
        with open(directory / f"part-{n:02d}.txt", "w", encoding="utf-8") as f:
            for i in range(written, written + count):
                f.write(lines[i % len(lines)] + "\n")
        written += count
    (directory / "done").write_text(str(sentences))
    return directory / "part-*.txt"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def run_one(mode: str, corpus: str, sentences: int, steps: int, workdir: Path, overrides: list[str]) -> dict:
    """One measurement in this process (see the module docstring)."""
    import jax
    from flax import nnx

    from alad_jax import distributed, sharding
    from alad_jax.cache import HiddenCache
    from alad_train.config import load_config
    from alad_jax.data import batching, sources, stream, tagging
    from alad_jax.models import compress, hub
    from alad_train import align, batches, cases, models
    from alad_train.loop import Objective, fit

    distributed.initialize()  # several local processes when ALAD_NUM_PROCESSES is set, else a no-op
    cfg = load_config(overrides=["corpus.format=text", f'corpus.paths=["{corpus}"]', "corpus.val_sentences=150",
                                 f"stages.align.max_steps={steps}", "stages.align.epochs=1",
                                 "stages.align.eval_every=100000", "stages.align.patience=0",
                                 f"checkpoint_every={10 * steps}", *overrides])
    student_dir = workdir / "student"
    with distributed.primary_writes("student") as writer:
        if writer and not (student_dir / "config.json").is_file():
            compress.truncate(cfg.student, cfg.student_layers, student_dir)
    teacher = hub.load_encoder(cfg.teacher)[0]
    student = hub.load_encoder(str(student_dir))[0]
    tokenizer = hub.load_tokenizer(cfg.teacher)
    name = "align_w3"
    adapter = models.new_adapter(cfg, student.config.hidden_size, teacher.config.hidden_size, 3,
                                 nnx.Rngs(align.stage_seed(cfg, name)))
    mesh = sharding.make_mesh(sharding.MeshConfig())
    seed = align.stage_seed(cfg, name)
    step_times = {}
    on_step = lambda step: step_times.setdefault(step, time.perf_counter())
    started = time.perf_counter()
    if mode == "stream":
        cfg.corpus.max_sentences = 0
        record = align.train_streamed(cfg, name=name, student=student, teacher=teacher, adapter=adapter,
                                      tokenizer=tokenizer, workdir=workdir / mode, seed=seed, mesh=mesh,
                                      on_step=on_step)
        prepare_s, fit_s, tokens_per_s = 0.0, record["train_seconds"], record["tokens_per_s"]
    else:
        # Today's stage 1 in memory: every sentence read and tokenized, validation the stream's head as above.
        everything = sources.read_corpus(cfg.corpus)
        val, train = everything[:cfg.corpus.val_sentences], everything[cfg.corpus.val_sentences:]
        encode = lambda s: tagging.encode_tagging(s, tokenizer, None, max_length=cfg.max_length, stride=cfg.stride)
        train_rows, val_rows = encode(train), encode(val)
        stage = cfg.stages.align
        if mode == "memory":
            objective = Objective(models.AlignModel(student, teacher, adapter), cases.ALIGNMENT_TRAINS,
                                  models.align_loss)
            strategy = batches.bucketed(cfg)
            batches_for_epoch, prepare = (lambda epoch: strategy.train(train_rows, stage, epoch, by_tokens=True)), None
            val_batches = strategy.eval(val_rows)
            val_prepare = None
        else:  # cached: the default's packed cached steps
            buckets = batching.length_buckets(cfg.max_length)
            cache = HiddenCache.build(workdir / "cache", train_rows.input_ids, student, teacher, buckets=buckets,
                                      matmul_dtype=cfg.matmul_dtype)
            val_cache = HiddenCache.build(workdir / "cache", val_rows.input_ids, student, teacher, buckets=buckets,
                                          matmul_dtype=cfg.matmul_dtype)
            objective = Objective(adapter, nnx.Param, models.cached_align_loss)
            strategy = batches.packed(cfg, 3)  # the gap of K = 3
            batches_for_epoch = lambda epoch: strategy.train(train_rows, stage, epoch, by_tokens=True)
            prepare, val_prepare = cache.gather, val_cache.gather
            val_batches = strategy.eval(val_rows)
        prepare_s = time.perf_counter() - started

        def evaluate(model):
            graphdef, state = nnx.split(model)
            sq = count = 0.0
            for batch in val_batches:
                s, _, n = (float(x) for x in models.align_eval(graphdef, state, val_prepare(batch) if val_prepare
                                                               else batch))
                sq, count = sq + s, count + n
            return sq / max(count, 1), {}

        result = fit(objective, name=name, stage=stage, optim=cfg.optim, batches_for_epoch=batches_for_epoch,
                     evaluate=evaluate, higher_is_better=False, checkpoint_dir=workdir / mode / "checkpoints",
                     seed=seed, mesh=mesh, checkpoint_every=10 * steps, prepare=prepare,
                     matmul_dtype=cfg.matmul_dtype, on_step=on_step)
        fit_s, tokens_per_s = result.seconds, result.tokens_per_s
    total_s = time.perf_counter() - started
    # After WARMUP steps (compiling the step): the steps' own rate, at the stage's mean tokens per step.
    tokens_per_step = tokens_per_s * fit_s / steps
    steady = tokens_per_step * (steps - WARMUP) / (step_times[steps] - step_times[WARMUP])
    return {"mode": mode, "sentences": sentences, "steps": steps, "tokens_per_s": round(tokens_per_s, 1),
            "steady_tokens_per_s": round(steady, 1),
            "fit_seconds": round(fit_s, 1), "prepare_seconds": round(prepare_s, 1), "total_seconds": round(total_s, 1),
            "peak_rss_gb": round(_peak_rss_gb(), 3), "devices": len(jax.devices()), "processes": jax.process_count(),
            "process": jax.process_index()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--memory", type=int, nargs="*", default=[20000], help="sizes also run in memory")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, nargs="*", default=[1],
                        help="process counts of the streamed runs (2: also as two local processes)")
    parser.add_argument("--modes", nargs="*", default=["memory", "cached"], help="in-memory modes run at --memory")
    parser.add_argument("--dir", help="where the corpora and work directories go (default: a temporary one)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="stream_align-"))
    if args.one:
        mode, size = args.one[0], int(args.one[1])
        corpus = write_corpus(root / f"corpus-{size}", size)
        workdir = root / f"work-{mode}-{size}-p{os.environ.get('ALAD_NUM_PROCESSES', '1')}"  # one per layout
        print(json.dumps(run_one(mode, str(corpus), size, args.steps, workdir, args.overrides)), flush=True)
        return 0
    plan = [("stream", s, n) for s in args.sizes for n in args.processes] \
        + [(m, s, 1) for s in args.memory for m in args.modes]
    for mode, size, processes in plan:
        write_corpus(root / f"corpus-{size}", size)
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "xla")}  # compile each shape once
        command = [sys.executable, __file__, "--dir", str(root), "--steps", str(args.steps), "--one", mode, str(size),
                   *args.overrides]
        if processes == 1:
            done = [subprocess.run(command, capture_output=True, text=True, env=env)]
        else:
            port = _free_port()
            workers = [subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env={**env, "ALAD_COORDINATOR": f"127.0.0.1:{port}", "ALAD_PROCESS_ID": str(i),
                                             "ALAD_NUM_PROCESSES": str(processes)}) for i in range(processes)]
            done = [subprocess.CompletedProcess(w.args, 0, *w.communicate()) for w in workers]
            for w, d in zip(workers, done):
                d.returncode = w.returncode
        for d in done:
            lines = [line for line in d.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if d.returncode == 0 and lines else json.dumps(
                {"mode": mode, "sentences": size, "processes": processes,
                 "error": d.stderr.strip().splitlines()[-1:]}), flush=True)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
