"""`alad run` as N local processes (the README's "Scaling out" command) and as one, on tiny random encoders.

    python tests/helpers/multihost_run.py OUT [--task pos|qa] [--processes 2] [--kill-after-s S]

writes the tiny models and data under OUT/inputs, runs ``alad run`` with
``ALAD_COORDINATOR`` / ``ALAD_NUM_PROCESSES`` / ``ALAD_PROCESS_ID`` on each
worker into OUT/run<N>, and prints each worker's exit code. Used by
tests/test_multihost_pipeline.py and by hand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tiny_inputs  # beside this file (tests/helpers)

REPO = Path(__file__).resolve().parents[2]
QA_CONFIG = REPO / "configs" / "qa_squad_v2_tiny.toml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_inputs(root: Path) -> None:
    """Tiny random teacher (H32, 2 layers) and student (H16, 1 layer) with the MiniLM tokenizer; UD sentences."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_inputs.write_encoders(root, {"teacher": (32, 2), "student": (16, 1)}, max_positions=256)
    tiny_inputs.write_ud_splits(root, {"train": (0, 32), "dev": (32, 44), "test": (44, 56)}, corpus=(0, 32))


STAGES = ("teacher", "probe", "student_ft", "align", "continual", "head", "frozen", "joint")
ROW_STAGES = ("teacher", "head", "frozen", "joint", "probe", "student_ft")


def arguments(root: Path, task: str) -> list[str]:
    """``alad run`` arguments after ``--workdir``: every stage and case, one or two epochs, small batches."""
    common = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0",
        f'corpus.paths=["{root / "corpus.conllu"}"]', "corpus.format=conllu", "corpus.max_sentences=24",
        "corpus.val_sentences=8", "adapter_hidden=32", "eval_batch_size=8", "latency_batches=1",
        "checkpoint_every=4", "stages.align.token_budget=300", "stages.continual.token_budget=300",
        "stages.align.batch_size=0", "stages.continual.batch_size=0",
    ] + [f"stages.{s}.epochs={2 if s in ('align', 'probe', 'frozen') else 1}" for s in STAGES] \
      + [f"stages.{s}.lr=3e-3" for s in STAGES] + [f"stages.{s}.batch_size=8" for s in ROW_STAGES]
    if task == "qa":
        return ["--config", str(QA_CONFIG), "data.max_train=16", "data.max_dev=8", "data.max_test=8",
                "max_length=128", "stride=32", *common]
    return [f"data.train={root / 'train.conllu'}", f"data.dev={root / 'dev.conllu'}",
            f"data.test={root / 'test.conllu'}", "data.max_train=0", "data.max_dev=0", "data.max_test=0",
            "max_length=48", "stride=16", *common]


# The equality runs: several epochs per stage with the stopping rule deciding (patience 1-2 and a min_delta),
# packed or bucketed batches whose real rows per step do not divide by 2 or 4 (7 packed rows of 64 positions
# per batch of 8 sentences: the layout-rounded count, 8, took other steps), float32 steps so that one and two
# processes differ by reduction order alone (~1e-7) and one flipped word (~5e-3 here) means a logic difference.
EQUALITY_EPOCHS = {"teacher": 4, "probe": 8, "student_ft": 3, "align": 3, "continual": 4, "head": 8, "frozen": 6,
                   "joint": 3}
EQUALITY_PATIENCE = {"teacher": 1, "probe": 2, "student_ft": 1, "align": 2, "continual": 2, "head": 1, "frozen": 1,
                     "joint": 1}


def equality_arguments(root: Path, packing: bool) -> list[str]:
    """``alad run`` arguments for the run-equality tests (POS, every stage and case; see EQUALITY_EPOCHS)."""
    return arguments(root, "pos") + [
        "max_length=64", "matmul_dtype=float32", f"packing={'true' if packing else 'false'}",
    ] + [f"stages.{s}.epochs={n}" for s, n in EQUALITY_EPOCHS.items()] \
      + [f"stages.{s}.patience={n}" for s, n in EQUALITY_PATIENCE.items()] \
      + [f"stages.{s}.min_delta=0.005" for s in ROW_STAGES]


def environment(xla_cache: Path, devices: int = 1) -> dict[str, str]:
    """``devices`` CPU devices per process; ``ALAD_TEST_XLA_CACHE`` may name a compilation cache kept between sessions."""
    xla_cache = Path(os.environ.get("ALAD_TEST_XLA_CACHE") or xla_cache)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "ALAD_"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_COMPILATION_CACHE_DIR=str(xla_cache))
    return env


def start(workdir: Path, args: list[str], processes: int, env: dict[str, str], logs: Path,
          port: int | None = None) -> list[subprocess.Popen]:
    """The same `alad run` command on each of ``processes`` workers (one: no ALAD_* variables)."""
    port = port or free_port()
    workers = []
    for process_id in range(processes):
        worker_env = dict(env)
        if processes > 1:
            worker_env.update(ALAD_COORDINATOR=f"127.0.0.1:{port}", ALAD_NUM_PROCESSES=str(processes),
                              ALAD_PROCESS_ID=str(process_id))
        log = open(logs / f"{workdir.name}.worker{process_id}.log", "a")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "alad_train.cli", "run", "--workdir", str(workdir), *args],
            cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return workers


def stop(workers: list[subprocess.Popen]) -> None:
    """SIGKILL each worker's own process group (each started its own session)."""
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def wait(workers: list[subprocess.Popen], timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    codes = []
    for worker in workers:
        try:
            codes.append(worker.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def scores(results: dict) -> dict[str, float]:
    """Every dev/test number of a results.json: row headline scores and every metric under them."""
    out = {}
    for row in results["rows"]:
        for split in ("dev", "test"):
            value = row[split]
            for key, number in (value.items() if isinstance(value, dict) else [("score", value)]):
                out[f"{row['name']}/{split}/{key}"] = float(number)
            for key, number in row[f"{split}_metrics"].items():
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    out[f"{row['name']}/{split}_metrics/{key}"] = float(number)
    for window, stages in results["alignment"].items():
        for stage, row in stages.items():
            for key in ("mse", "cosine"):
                out[f"alignment/{window}/{stage}/{key}"] = float(row[key])
    return out


def histories(workdir: Path) -> dict[str, dict]:
    """Per stage of a finished run (progress.json): how it ended and its per-epoch dev curve (alignment: MSE)."""
    progress = json.loads((Path(workdir) / "progress.json").read_text())
    return {name: {"steps": out["steps"], "epochs_run": out["epochs_run"], "best_epoch": out["best_epoch"],
                   "stopped": out["stopped"], "dev": [h["dev"] for h in out["history"]]}
            for name, out in progress.items() if "history" in out}


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", default="pos", choices=["pos", "qa"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--kill-after-s", type=float, default=0.0, help="SIGKILL process 1 after this long")
    args = parser.parse_args()
    inputs = args.out / "inputs"
    if not (inputs / "teacher").is_dir():
        make_inputs(inputs)
    workdir = args.out / f"{args.task}{args.processes}"
    env = environment(args.out / "xla")
    started = time.monotonic()
    workers = start(workdir, arguments(inputs, args.task), args.processes, env, args.out)
    try:
        if args.kill_after_s:
            time.sleep(args.kill_after_s)
            os.killpg(workers[-1].pid, signal.SIGKILL)
        codes = wait(workers, 3600)
    finally:
        stop(workers)
    print(json.dumps({"codes": codes, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
