"""Multi-host: two real processes joined by jax.distributed on one machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "helpers"
sys.path.insert(0, str(HELPERS))

STEPS = 3
TIMEOUT_S = 180  # a hung collective must fail the test, not block CI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_workers(out: Path, num_processes: int) -> list[subprocess.Popen]:
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "ALAD_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HELPERS)])
    workers = []
    for process_id in range(num_processes):
        env = dict(
            base,
            ALAD_COORDINATOR=f"127.0.0.1:{port}",
            ALAD_NUM_PROCESSES=str(num_processes),
            ALAD_PROCESS_ID=str(process_id),
        )
        log = open(out / f"worker{process_id}.log", "w")
        workers.append(
            subprocess.Popen(
                [sys.executable, str(HELPERS / "multihost_train.py"), "--out", str(out), "--steps", str(STEPS),
                 "--local-devices", "2", "--mesh", "1,4"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        log.close()
    return workers


def _stop(workers: list[subprocess.Popen]) -> None:
    """Kills each worker's own process group (it was started in a new session)."""
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_two_processes_each_feeding_half_the_batch_match_one_process(tmp_path):
    workers = _start_workers(tmp_path, 2)
    try:
        # The single-process reference runs here while the workers start up.
        import tiny_task_model as tiny

        history, trainable, _ = tiny.train_single_device(STEPS)
        reference = tiny.flat_numpy(trainable)
        codes = [worker.wait(timeout=TIMEOUT_S) for worker in workers]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        _stop(workers)
    logs = "\n".join((tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], logs

    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["process_count"], result["device_count"], result["local_rows"]) == (2, 4, 8)
    np.testing.assert_allclose(result["losses"], [h["loss"] for h in history], rtol=0, atol=1e-5)
    np.testing.assert_allclose(result["grad_norms"], [h["grad_norm"] for h in history], rtol=1e-5, atol=0)
    with np.load(tmp_path / "params.npz") as trained:
        assert sorted(trained.files) == sorted(reference)
        worst = max(float(np.max(np.abs(trained[k] - reference[k]))) for k in reference)
    assert worst < 1e-5
    # FSDP over 4 devices on 2 hosts: each host stores half of every kernel, all of every bias.
    held = result["fraction_held_by_primary"]
    assert held["encoder/layers/0/mlp/output/kernel"] == 0.5
    assert held["adapter/fc1/kernel"] == 0.5
    assert held["encoder/layers/0/mlp/output/bias"] == 1.0
    # A checkpoint written by both processes reads back equal.
    assert result["restored_equal"] is True
