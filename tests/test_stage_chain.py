"""The method's stage chain: stage 2 starts from the adapter stage 1 exported, each stage-3 case from stage 2's.

The AlAd is the thread that runs through the stages: task-independent alignment
(stage 1) trains it from scratch, continual alignment (stage 2) must go on from
exactly what stage 1 exported, and every stage-3 case that uses alignment
(head, frozen, joint) must start from exactly what stage 2 exported; only the
no-alignment ablation starts fresh. A run that silently restarts a stage from a
new AlAd still produces every row and every number, so this test watches the
adapter each stage *starts* from (the objective ``fit`` is handed) and compares
it, tensor by tensor, with the reference-layout files the earlier stage wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from alad_jax.adapter import export_reference
from alad_train.config import load_config
from alad_train import pipeline
from alad_train.stages import common

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

import multihost_run as mh  # noqa: E402

STAGES = ("teacher", "probe", "student_ft", "align", "continual", "head", "frozen", "joint")


@pytest.fixture(scope="module")
def started_from(tmp_path_factory):
    """One tiny `alad run` (every stage, one epoch each); per stage, the AlAd it started from (reference layout)."""
    root = tmp_path_factory.mktemp("chain")
    mh.make_inputs(root / "inputs")
    overrides = mh.arguments(root / "inputs", "pos") + [f"stages.{s}.epochs=1" for s in STAGES]
    workdir = root / "run"
    starts: dict[str, dict[str, np.ndarray]] = {}
    real_fit = common.fit

    def spy(objective, *, name, **kwargs):
        model = objective.model
        adapter = model if hasattr(model, "fc1") else getattr(model, "adapter", None)
        if adapter is not None:
            path = root / f"start_{name}.safetensors"
            export_reference(adapter, path)
            starts[name] = load_file(str(path))
        return real_fit(objective, name=name, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(common, "fit", spy)
    try:
        pipeline.run(load_config(None, overrides), workdir)
    finally:
        mp.undo()
    exported = {p.stem: load_file(str(p)) for p in (workdir / "adapters").glob("*.safetensors")}
    return starts, exported


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_stage_2_starts_from_exactly_the_adapter_stage_1_exported(started_from):
    starts, exported = started_from
    assert {"align_w3", "continual_w3"} <= starts.keys()
    assert _same(starts["continual_w3"], exported["w3_align"])
    # and stage 1 trained it: stage 2's start is not stage 1's own (random) start
    assert not _same(starts["continual_w3"], starts["align_w3"])


@pytest.mark.parametrize("case", ["head", "frozen", "joint"])
def test_each_stage_3_case_starts_from_exactly_the_adapter_stage_2_exported(started_from, case):
    starts, exported = started_from
    assert _same(starts[f"alad_w3_{case}"], exported["w3_continual"])
    assert not _same(exported["w3_continual"], exported["w3_align"])  # stage 2 moved it


def test_only_the_ablation_starts_from_a_fresh_adapter(started_from):
    starts, exported = started_from
    fresh = starts["alad_w3_noalign_frozen"]
    assert not any(_same(fresh, exported[name]) for name in ("w3_align", "w3_continual"))
    assert not _same(fresh, starts["align_w3"])
