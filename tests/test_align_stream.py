"""Streamed stage 1 end to end on tiny encoders: step / time budgets, evaluation every eval_every steps,
the stream's end, resume after SIGKILL mid-stream, and `alad align` reused by `alad run stages.align.from`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))

import align_worker  # noqa: E402
from alad_train.config import load_config  # noqa: E402
import multihost_run  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    align_worker.make_inputs(root)
    return root


@pytest.fixture(scope="module")
def uninterrupted(inputs, xla_cache, tmp_path_factory):
    return align_worker.run(inputs, tmp_path_factory.mktemp("reference"), ["stages.align.max_steps=10"])


def test_max_steps_stops_the_stream_and_validation_runs_every_eval_every_steps(uninterrupted):
    record, _ = uninterrupted
    assert record["steps"] == 10 and record["stopped"] == "cap"
    assert [h["step"] for h in record["history"]] == [4, 8, 10]
    assert record["streamed"] and record["val_rows"] >= 16
    assert record["history"][-1]["dev"] < record["history"][0]["dev"]  # it learns: validation MSE falls


def test_the_clock_stops_a_streamed_stage(inputs, xla_cache, tmp_path):
    record, _ = align_worker.run(inputs, tmp_path, ["stages.align.max_minutes=0.00001"])
    assert record["stopped"] == "time" and record["steps"] == 1


def test_without_a_budget_the_stream_end_stops_it(inputs, xla_cache, tmp_path):
    from alad_jax.data import stream
    from alad_jax.models import hub

    record, _ = align_worker.run(inputs, tmp_path, ["corpus.max_sentences=40", "stages.align.eval_every=1000"])
    source = stream.source_of(load_config(overrides=align_worker.overrides(inputs)).corpus)
    batches = stream.AlignmentStream(source, hub.load_tokenizer(str(inputs / "student")), max_length=48, stride=16,
                                     gap=1, rows=4, skip=16, limit=40, prefetch=0)
    # one pass over the 40 training sentences: as many steps as their batches, then one evaluation
    assert record["stopped"] == "cap" and record["steps"] == len(list(batches))
    assert len(record["history"]) == 1


def _latest_checkpoint(directory: Path) -> int:
    manager = ocp.CheckpointManager(directory.absolute())
    try:
        return manager.latest_step() or 0
    finally:
        manager.close()


def test_sigkill_mid_stream_then_rerun_ends_with_the_uninterrupted_adapter(inputs, uninterrupted, xla_cache, tmp_path):
    reference, reference_params = uninterrupted
    killed = subprocess.run([sys.executable, str(HELPERS / "align_worker.py"), str(inputs), str(tmp_path),
                             "--kill-at", "8", "stages.align.max_steps=10"],
                            capture_output=True, text=True, timeout=600, env=xla_cache)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _latest_checkpoint(tmp_path / "checkpoints" / "align_w3") == 6  # checkpoint_every = 3: steps 3, 6
    record, params = align_worker.run(inputs, tmp_path, ["stages.align.max_steps=10"])
    assert record["steps"] == 10
    for name, value in reference_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert record["history"] == reference["history"]


@pytest.mark.slow
def test_alad_align_then_alad_run_reuses_its_adapter(inputs, xla_cache, tmp_path):
    common = align_worker.overrides(inputs)
    aligned = subprocess.run([sys.executable, "-m", "alad_train.cli", "align", "--workdir", str(tmp_path / "a"),
                              *common, "stages.align.max_steps=6"], capture_output=True, text=True, timeout=600,
                             env=xla_cache)
    assert aligned.returncode == 0, aligned.stderr[-3000:]
    adapter = tmp_path / "a" / "adapters" / "w3_align.safetensors"
    assert adapter.is_file()
    assert json.loads((tmp_path / "a" / "align.json").read_text())["align_w3"]["steps"] == 6
    run_args = [a for a in multihost_run.arguments(inputs, "pos") if not a.startswith(("corpus.", "stages.align."))]
    ran = subprocess.run([sys.executable, "-m", "alad_train.cli", "run", "--workdir", str(tmp_path / "r"), *run_args,
                          "windows=[3]", f"stages.align.from={tmp_path / 'a'}", "corpus.paths=[\"/nonexistent\"]"],
                         capture_output=True, text=True, timeout=900, env=xla_cache)
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["alignment"]["w3"]["stage1"]["from"] == str(adapter.resolve())
    assert (tmp_path / "r" / "adapters" / "w3_align.safetensors").read_bytes() == adapter.read_bytes()


@pytest.mark.slow
def test_the_wikipedia_config_runs_offline_on_local_shards_standing_in(inputs, xla_cache, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "align_wikipedia.toml"
    done = subprocess.run([sys.executable, "-m", "alad_train.cli", "align", "--config", str(config), "--workdir",
                           str(tmp_path), "corpus.format=text", f'corpus.paths=["{inputs / "shards"}/part-*.txt"]',
                           f"teacher={inputs / 'teacher'}", f"student={inputs / 'student'}", "windows=[3]",
                           "max_length=48", "stride=16", "adapter_hidden=32", "eval_batch_size=8",
                           "corpus.val_sentences=16", "stages.align.max_steps=3", "stages.align.eval_every=2"],
                          capture_output=True, text=True, timeout=600, env=xla_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "align.json").read_text())["align_w3"]
    assert record["steps"] == 3 and record["streamed"] and [h["step"] for h in record["history"]] == [2, 3]
    assert (tmp_path / "adapters" / "w3_align.safetensors").is_file()
