"""How a multi-process `alad run` ends when a peer goes: one line naming the process, never a bare C++ trace."""

import socket
import subprocess
import sys

import pytest

from alad_jax import distributed

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing answers there


def _supervise(child_code: str, env: dict, capsys) -> tuple[int | None, str]:
    for key in ("ALAD_DISTRIBUTED", "ALAD_SUPERVISED", "ALAD_COORDINATOR", "ALAD_NUM_PROCESSES", "ALAD_PROCESS_ID"):
        env.setdefault(key, "")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        code = distributed.supervise([sys.executable, "-c", child_code])
    return code, capsys.readouterr().err


def test_one_process_is_not_supervised(capsys):
    assert _supervise("raise SystemExit(5)", {}, capsys) == (None, "")
    assert _supervise("raise SystemExit(5)", {"ALAD_NUM_PROCESSES": "1"}, capsys) == (None, "")


def test_the_child_exit_code_passes_through_without_a_line(capsys):
    env = {"ALAD_NUM_PROCESSES": "2", "ALAD_PROCESS_ID": "1", "ALAD_COORDINATOR": f"127.0.0.1:{_closed_port()}"}
    assert _supervise("raise SystemExit(3)", env, capsys) == (3, "")


def test_an_aborted_worker_whose_coordinator_is_gone_names_process_0(capsys):
    address = f"127.0.0.1:{_closed_port()}"
    env = {"ALAD_NUM_PROCESSES": "2", "ALAD_PROCESS_ID": "1", "ALAD_COORDINATOR": address}
    code, err = _supervise("import os; os.abort()", env, capsys)
    assert code == 134
    assert err.splitlines()[-1] == (f"error: process 0 of 2 (the coordinator, {address}) stopped; run the same "
                                    f"commands again to resume from the last checkpoints")


def test_a_killed_worker_says_so(capsys):
    env = {"ALAD_NUM_PROCESSES": "2", "ALAD_PROCESS_ID": "0", "ALAD_COORDINATOR": "127.0.0.1:1"}
    code, err = _supervise("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", env, capsys)
    assert code == 137
    assert err.splitlines()[-1].startswith("error: process 0 of 2 was killed (SIGKILL); run the same commands")


def test_collective_errors_from_a_vanished_peer_are_recognised():
    gloo = ValueError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
                      "Connection closed by peer [127.0.0.1]:23477")
    assert distributed._broken_by_peer(gloo)
    assert not distributed._broken_by_peer(KeyError("labels"))


def test_supervised_alad_run_keeps_user_errors_to_one_line(tmp_path):
    """A multi-process launch with a bad override: the worker's one line, and nothing after it."""
    env = {"ALAD_NUM_PROCESSES": "2", "ALAD_PROCESS_ID": "0", "ALAD_COORDINATOR": f"127.0.0.1:{_closed_port()}",
           "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "alad_train.cli", "run", "--workdir", str(tmp_path), "nonsense.key=1"],
                         capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert lines[-1].startswith("error: ") and "nonsense" in lines[-1], out.stderr
