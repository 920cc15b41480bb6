"""The training loop resumes where it was killed: the same steps, the same optimizer state, the same parameters.

A subprocess trains the tiny task model with ``alad_train.loop.fit`` and SIGKILLs
itself right after a chosen step, before that step can be checkpointed. The
run is then resumed here, in process, and must take exactly the steps after
its last checkpoint, no more (a restarted stage) and no fewer, and end with
the parameters, best score and per-epoch history of an uninterrupted run.
The schedule decays with the optimizer's step count, so a resume that lost
the optimizer state would end elsewhere.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))

import fit_worker  # noqa: E402  (needs the helpers directory on sys.path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, xla_cache):
    steps = []
    result, params = fit_worker.run(tmp_path_factory.mktemp("reference"), 1000, steps.append)
    assert steps == list(range(1, result.steps + 1))
    return result, params


def _latest_checkpoint(directory: Path) -> int:
    manager = ocp.CheckpointManager(directory.absolute())
    try:
        return manager.latest_step() or 0
    finally:
        manager.close()


# (checkpoint_every, kill after step, last checkpoint then): mid-epoch (5 steps per epoch: saved at
# 2, 4, 6; killed at 8) and at an epoch boundary (saved at the end of epoch 1 only; killed at 7).
@pytest.mark.parametrize("every, kill_at, saved_at", [(2, 8, 6), (5, 7, 5)])
def test_killed_fit_resumes_the_remaining_steps_to_identical_parameters(uninterrupted, xla_cache, tmp_path, every,
                                                                         kill_at, saved_at):
    reference, reference_params = uninterrupted
    total = reference.steps
    assert total == fit_worker.EPOCHS * fit_worker.STEPS_PER_EPOCH > kill_at
    killed = subprocess.run([sys.executable, str(HELPERS / "fit_worker.py"), str(tmp_path), str(every), str(kill_at)],
                            capture_output=True, text=True, timeout=300, env=xla_cache)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, not a clean exit
    assert _latest_checkpoint(tmp_path) == saved_at

    steps = []
    result, params = fit_worker.run(tmp_path, every, steps.append)
    assert steps == list(range(saved_at + 1, total + 1))  # exactly total - saved_at further steps
    assert result.steps == total
    assert sorted(params) == sorted(reference_params)
    for name, value in reference_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert result.best_score == reference.best_score
    assert result.history == reference.history
