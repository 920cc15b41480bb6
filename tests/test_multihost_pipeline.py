"""The whole `alad run` as two processes equals it as one process, epoch by epoch; the global batch, not the
process or device count, defines a run; a dead process stops the other cleanly.

Each run is the README's "Scaling out" command: the same `alad run` on every
worker plus ALAD_COORDINATOR / ALAD_NUM_PROCESSES / ALAD_PROCESS_ID, here CPU
processes of one or two devices each on this machine, on tiny random encoders,
every stage and every case (tests/helpers/multihost_run.py). The one-process
run is the plain command. The equality runs train several epochs per stage with
the stopping rule deciding, packed and bucketed, in float32, and compare every
stage's per-epoch dev curve (alignment: validation MSE), its step count and how
it stopped, not only the final numbers (issue 29: two processes took other
packed batches than one and diverged from the first epoch on).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import multihost_run as mh  # noqa: E402

# Nine tiny `alad run`s (six for the equality of layouts, two QA, a killed and resumed one): about 35 minutes
# on this project's shared 2-core machine when it is otherwise idle.
pytestmark = pytest.mark.slow

TIMEOUT_S = 2400  # a hung collective must fail the test, not block CI
# Relative to the score's size (at least 1). The QA runs keep bfloat16 steps: one and two processes reduce in
# different orders (~1e-7 apart in float32: measured 3.5e-7 at most over every number of this run with
# matmul_dtype=float32); bfloat16 step and cache matmuls round those differences and training carries them on
# (measured: 1.05e-4 at most, the stage-2 MSE on packed rows). The equality runs train in float32 (1e-4, the
# issue's bar): one word scored differently moves an accuracy here by ~5e-3.
TOLERANCE = 3e-4
FLOAT32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    mh.make_inputs(root / "inputs")
    return root


def _run(inputs: Path, task: str, processes: int, workdir: Path | None = None) -> tuple[list, Path]:
    workdir = workdir or inputs / f"{task}{processes}"
    workers = mh.start(workdir, mh.arguments(inputs / "inputs", task), processes, mh.environment(inputs / "xla"),
                       inputs)
    try:
        codes = mh.wait(workers, TIMEOUT_S)
    finally:
        mh.stop(workers)
    return codes, workdir


def _logs(inputs: Path, workdir: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(inputs.glob(f"{workdir.name}.worker*.log")))


def _assert_equal_numbers(one: dict, two: dict, tolerance: float = TOLERANCE) -> None:
    a, b = mh.scores(one), mh.scores(two)
    assert a.keys() == b.keys()
    gap = {k: abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in a}
    worst = max(gap.values())
    differ = {k: (a[k], b[k]) for k in a if gap[k] > tolerance}
    assert not differ, f"worst (relative) difference {worst}: {differ}"


_RUNS: dict[tuple, Path] = {}


def _layout_run(inputs: Path, packing: bool, processes: int, devices: int) -> Path:
    """The equality run of ``processes`` x ``devices`` (once per module)."""
    key = (packing, processes, devices)
    if key not in _RUNS:
        workdir = inputs / f"pos-{'packed' if packing else 'bucketed'}-{processes}x{devices}"
        workers = mh.start(workdir, mh.equality_arguments(inputs / "inputs", packing), processes,
                           mh.environment(inputs / "xla", devices), inputs)
        try:
            codes = mh.wait(workers, TIMEOUT_S)
        finally:
            mh.stop(workers)
        assert codes == [0] * processes, _logs(inputs, workdir)
        results = json.loads((workdir / "results.json").read_text())
        assert results["processes"] == processes and len(results["devices"]) == processes * devices
        _RUNS[key] = workdir
    return _RUNS[key]


def _assert_same_run(reference: Path, other: Path) -> None:
    """Every stage took the same steps, stopped the same way at the same epoch, and its dev curve (alignment:
    validation MSE) agrees epoch by epoch; every dev/test number of results.json agrees."""
    want, got = mh.histories(reference), mh.histories(other)
    assert list(got) == list(want)
    for stage, curve in want.items():
        mine = got[stage]
        for key in ("steps", "epochs_run", "best_epoch", "stopped"):
            assert mine[key] == curve[key], f"{stage}: {key} {mine[key]} (reference {curve[key]})"
        gaps = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(curve["dev"], mine["dev"])]
        assert max(gaps) <= FLOAT32_TOLERANCE, f"{stage}: dev per epoch {mine['dev']}, reference {curve['dev']}"
    _assert_equal_numbers(json.loads((reference / "results.json").read_text()),
                          json.loads((other / "results.json").read_text()), FLOAT32_TOLERANCE)


def _assert_a_real_run(workdir: Path) -> None:
    """What the equality must hold over: several epochs per stage, and the stopping rule ending some of them."""
    stages = mh.histories(workdir)
    assert {"teacher", "student_probe", "student_ft", "align_w3", "continual_w3", "alad_w3_head", "alad_w3_frozen",
            "alad_w3_joint", "alad_w3_noalign_frozen"} <= stages.keys()
    assert all(s["epochs_run"] >= 2 for s in stages.values()), {k: s["epochs_run"] for k, s in stages.items()}
    assert any(s["stopped"] == "plateau" for s in stages.values()), {k: s["stopped"] for k, s in stages.items()}


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "bucketed"])
def test_two_processes_give_the_one_process_run_epoch_by_epoch(inputs, packing):
    one = _layout_run(inputs, packing, 1, 1)
    _assert_a_real_run(one)
    two = _layout_run(inputs, packing, 2, 1)
    _assert_same_run(one, two)
    # Shared outputs come once, from process 0: no second writer's leftovers anywhere.
    leftovers = [p for p in two.rglob("*") if ".tmp" in p.name or p.name.startswith(".alad-shared")]
    assert not leftovers
    for name in ("results.json", "results.md", "progress.json", "adapters/w3_continual.safetensors",
                 "models/alad_w3_frozen", "models/teacher"):
        assert (two / name).exists(), name


@pytest.mark.parametrize("layout", [(1, 4), (2, 2)], ids=["1x4", "2x2"])
def test_the_global_batch_not_the_process_or_device_count_defines_the_run(inputs, layout):
    _assert_same_run(_layout_run(inputs, True, 1, 1), _layout_run(inputs, True, *layout))


def test_two_processes_give_the_one_process_qa_results(inputs):
    codes, single = _run(inputs, "qa", 1)
    assert codes == [0], _logs(inputs, single)
    codes, double = _run(inputs, "qa", 2)
    assert codes == [0, 0], _logs(inputs, double)
    one = json.loads((single / "results.json").read_text())
    two = json.loads((double / "results.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert [r["name"] for r in one["rows"]] == [r["name"] for r in two["rows"]]
    _assert_equal_numbers(one, two)


def test_killed_process_stops_the_other_with_one_line_and_a_rerun_ends_equal(inputs):
    """SIGKILL process 1 mid-run: process 0 exits within a minute naming it; both rerun to the same numbers."""
    reference = _layout_run(inputs, True, 1, 1)
    workdir = inputs / "pos2-killed"
    env = mh.environment(inputs / "xla")
    args = mh.equality_arguments(inputs / "inputs", True)
    workers = mh.start(workdir, args, 2, env, inputs)
    try:
        # Kill once a few stages are done, in the middle of the next one.
        deadline = time.monotonic() + TIMEOUT_S
        progress = workdir / "progress.json"
        while time.monotonic() < deadline and workers[0].poll() is None:
            if progress.is_file() and "student_probe" in json.loads(progress.read_text()):
                break
            time.sleep(1)
        time.sleep(5)
        os.killpg(workers[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = workers[0].wait(timeout=120)
        stopped_after = time.monotonic() - killed_at
    finally:
        mh.stop(workers)
    log = (inputs / f"{workdir.name}.worker0.log").read_text()
    assert code != 0
    assert stopped_after < 60, stopped_after
    last = [line for line in log.splitlines() if line.strip()][-1]
    assert last.startswith("error: process 1 of 2 stopped"), log[-3000:]
    assert "resume" in last

    workers = mh.start(workdir, args, 2, env, inputs)
    try:
        codes = mh.wait(workers, TIMEOUT_S)
    finally:
        mh.stop(workers)
    assert codes == [0, 0], _logs(inputs, workdir)
    _assert_same_run(reference, workdir)
