"""Streamed stage 1 (alad_train.align.train_streamed) on tiny random encoders and a sharded text corpus.

    python tests/helpers/align_worker.py ROOT WORKDIR [--kill-at STEP] [--out FILE.npz] [--late S] [KEY=VALUE ...]

``ROOT`` holds the inputs (:func:`make_inputs`); ``--kill-at`` SIGKILLs the process right after that
step, before any checkpoint of it; ``--out`` writes the best adapter's parameters (process 0) and each
process's stage record (``FILE.p<i>.json``); ``--late`` makes every process but 0 start training that many
seconds after it (its clock starts later). With ``ALAD_COORDINATOR`` / ``ALAD_NUM_PROCESSES`` / ``ALAD_PROCESS_ID`` set it is one of
several processes (:func:`start`). Used by tests/test_align_stream.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
sys.path.insert(0, str(HELPERS))

import multihost_run  # noqa: E402


def make_inputs(root: Path, shards: int = 3, per_shard: int = 60) -> None:
    """Tiny teacher (H32) and student (H16) with the MiniLM tokenizer; ``shards`` text files of UD sentences."""
    from alad_jax.data.packaged import load_packaged

    multihost_run.make_inputs(root)
    sentences = [" ".join(s.words) for s in load_packaged("petrogold")[: shards * per_shard]]
    (root / "shards").mkdir(exist_ok=True)
    for n in range(shards):
        shard = sentences[n * per_shard:(n + 1) * per_shard]
        (root / "shards" / f"part-{n:02d}.txt").write_text("\n".join(shard) + "\n")


def overrides(root: Path) -> list[str]:
    return [f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0", "corpus.format=text",
            f'corpus.paths=["{root / "shards"}/part-*.txt"]', "corpus.max_sentences=0", "corpus.val_sentences=16",
            "adapter_hidden=32", "eval_batch_size=8", "max_length=48", "stride=16", "checkpoint_every=3",
            "stages.align.token_budget=192", "stages.align.lr=3e-3", "stages.align.epochs=1",
            "stages.align.eval_every=4", "stages.align.patience=0", "windows=[3]"]


def run(root: Path, workdir: Path, extra: list[str] = (), kill_at: int | None = None):
    """(stage record, adapter parameters as numpy arrays by path)."""
    import jax
    import numpy as np
    from flax import nnx

    from alad_jax import distributed, sharding
    from alad_jax.adapter import AlignmentAdapter
    from alad_train.config import load_config
    from alad_jax.models import hub
    from alad_train import align

    cfg = load_config(overrides=overrides(root) + list(extra))
    teacher = hub.load_encoder(cfg.teacher)[0]
    student = hub.load_encoder(cfg.student)[0]
    name = "align_w3"
    adapter = AlignmentAdapter(student.config.hidden_size, teacher.config.hidden_size, 3, cfg.adapter_hidden,
                               rngs=nnx.Rngs(align.stage_seed(cfg, name)))

    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    record = align.train_streamed(cfg, name=name, student=student, teacher=teacher, adapter=adapter,
                                  tokenizer=hub.load_tokenizer(cfg.student), workdir=workdir,
                                  seed=align.stage_seed(cfg, name), mesh=sharding.make_mesh(sharding.MeshConfig()),
                                  on_step=on_step)
    best = distributed.host_copy(record.pop("best"))  # a collective: every process's copy of the whole adapter
    params = {jax.tree_util.keystr(p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(best, nnx.Param))[0]}
    return record, params


def start(root: Path, workdir: Path, extra: list[str], processes: int, env: dict[str, str], logs: Path,
          kill_at: int | None = None, late: float = 0.0) -> list:
    """This worker as ``processes`` local processes (one CPU device each); process 0 writes ``workdir/out.npz``."""
    import subprocess

    port = multihost_run.free_port()
    workers = []
    for process_id in range(processes):
        worker_env = {**env, "ALAD_COORDINATOR": f"127.0.0.1:{port}", "ALAD_NUM_PROCESSES": str(processes),
                      "ALAD_PROCESS_ID": str(process_id)}
        kill = (["--kill-at", str(kill_at)] if kill_at else []) + (["--late", str(late)] if late else [])
        with open(logs / f"{workdir.name}.align{process_id}.log", "a") as log:
            workers.append(subprocess.Popen(
                [sys.executable, __file__, str(root), str(workdir), *kill, "--out", str(workdir / "out.npz"), *extra],
                env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return workers


def main(argv: list[str]) -> None:
    import json

    import numpy as np

    from alad_jax import distributed

    root, workdir, *rest = argv
    options = {}
    while rest[:1] in (["--kill-at"], ["--out"], ["--late"]):
        options[rest[0]], rest = rest[1], rest[2:]
    distributed.initialize()
    import jax

    if jax.process_index() and "--late" in options:
        time.sleep(float(options["--late"]))
    kill_at = int(options["--kill-at"]) if "--kill-at" in options else None
    record, params = run(Path(root), Path(workdir), rest, kill_at)
    if "--out" in options:
        out = Path(options["--out"])
        if distributed.is_primary():
            np.savez(out, **params)
        out.with_name(f"{out.stem}.p{jax.process_index()}.json").write_text(json.dumps(
            {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool, list))}))
    distributed.finished()


if __name__ == "__main__":
    main(sys.argv[1:])
