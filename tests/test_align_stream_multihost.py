"""Streamed stage 1 as 2 local processes (one CPU device each, one shard of the stream each): SIGKILL both
mid-stream, run the same command again, and it ends with the uninterrupted 2-process run's adapter; a time
budget stops both processes at the same step although their clocks disagree."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))

import align_worker  # noqa: E402
import multihost_run  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = ["stages.align.max_steps=10"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mh_align")
    align_worker.make_inputs(root / "inputs")
    return root, multihost_run.environment(root / "xla")


def _run(setup, workdir: Path, extra: list[str], kill_at: int | None = None, late: float = 0.0,
         timeout: float = 600) -> list:
    root, env = setup
    workers = align_worker.start(root / "inputs", workdir, extra, 2, env, root, kill_at=kill_at, late=late)
    try:
        return multihost_run.wait(workers, timeout)
    finally:
        multihost_run.stop(workers)


def _logs(setup, workdir: Path) -> str:
    root, _ = setup
    return "\n".join((root / f"{workdir.name}.align{i}.log").read_text()[-3000:] for i in range(2))


def _adapter(workdir: Path) -> tuple[dict, dict]:
    with np.load(workdir / "out.npz") as arrays:
        params = {name: arrays[name] for name in arrays.files}
    return json.loads((workdir / "out.p0.json").read_text()), params


def test_two_processes_killed_mid_stream_resume_to_the_uninterrupted_adapter(setup):
    root, _ = setup
    reference_dir = root / "reference"
    assert _run(setup, reference_dir, STEPS) == [0, 0], _logs(setup, reference_dir)
    reference, reference_params = _adapter(reference_dir)
    assert reference["steps"] == 10 and reference["stopped"] == "cap"

    resumed_dir = root / "resumed"
    codes = _run(setup, resumed_dir, STEPS, kill_at=8)
    assert codes == [-9, -9], _logs(setup, resumed_dir)  # both killed at step 8; the checkpoint holds step 6
    assert not (resumed_dir / "out.npz").exists()
    assert _run(setup, resumed_dir, STEPS) == [0, 0], _logs(setup, resumed_dir)
    record, params = _adapter(resumed_dir)
    assert record["steps"] == 10 and record["history"] == reference["history"]
    assert record["resumed_seconds"] > 0  # it did continue from the checkpoint, not start over
    assert params.keys() == reference_params.keys()
    for name, value in reference_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_the_time_budget_is_process_0s_clock_so_both_processes_stop_at_the_same_step(setup):
    root, _ = setup
    workdir = root / "clock"
    # Process 1 starts 8 s after process 0: by its own clock process 0 runs out of its 24 s 8 s of training
    # earlier than process 1 would; each stopping on its own clock would leave the other alone in a collective.
    budget = ["stages.align.max_minutes=0.4", "stages.align.epochs=1000", "stages.align.eval_every=1000"]
    assert _run(setup, workdir, budget, late=8.0, timeout=300) == [0, 0], _logs(setup, workdir)
    records = [json.loads((workdir / f"out.p{i}.json").read_text()) for i in range(2)]
    assert [r["stopped"] for r in records] == ["time", "time"]
    assert records[0]["steps"] == records[1]["steps"] > 1
    assert records[0]["history"] == records[1]["history"]


def test_the_stream_ends_for_both_processes_at_the_first_process_end(setup):
    from alad_train.config import load_config
    from alad_jax.data import stream
    from alad_jax.models import hub

    root, _ = setup
    inputs = root / "inputs"
    source = stream.source_of(load_config(overrides=align_worker.overrides(inputs)).corpus)
    tokenizer = hub.load_tokenizer(str(inputs / "student"))

    def batches(limit: int, process: int) -> int:
        return len(list(stream.AlignmentStream(source, tokenizer, max_length=48, stride=16, gap=1, rows=2, skip=16,
                                               limit=limit, process_index=process, process_count=2, prefetch=0)))

    # a corpus size whose two shards pack into different numbers of batches
    limit, counts = next((n, c) for n in range(20, 120) if len(set(c := [batches(n, p) for p in range(2)])) == 2)
    workdir = root / "ends"
    extra = [f"corpus.max_sentences={limit}", "stages.align.eval_every=1000"]
    assert _run(setup, workdir, extra, timeout=300) == [0, 0], _logs(setup, workdir)
    records = [json.loads((workdir / f"out.p{i}.json").read_text()) for i in range(2)]
    assert [r["steps"] for r in records] == [min(counts)] * 2 and [r["stopped"] for r in records] == ["cap"] * 2
    assert records[0]["val_rows"] == records[1]["val_rows"] >= 16  # the whole head of the stream, on each process
