"""The one stopping rule every stage uses: best dev score, stop on plateau (patience) or at the cap."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_train.config import OptimConfig, StageConfig
from alad_jax.sharding import MeshConfig, make_mesh
from alad_train.loop import Objective, fit, improves

STEPS_PER_EPOCH = 3


class Scalar(nnx.Module):
    """One trainable number w; the loss (w - 5)^2 moves it a fixed way every step."""

    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))


def _loss(model, batch, key):
    del key
    return (model.w[...] - 5.0) ** 2 * batch["attention_mask"].mean(), {}


def _batches(epoch):
    return [{"attention_mask": np.ones((2, 4), np.int32), "input_ids": np.zeros((2, 4), np.int32)}
            for _ in range(STEPS_PER_EPOCH)]


def _fit(tmp_path, scores, *, epochs, patience, higher_is_better=True, min_delta=0.0):
    """Fit ``Scalar`` with an evaluator that returns ``scores`` in turn; also record w at each evaluation."""
    seen = []

    def evaluate(model):
        seen.append(float(model.w[...]))
        return scores[len(seen) - 1], {}

    stage = StageConfig(epochs=epochs, lr=0.1, weight_decay=0.0, patience=patience, min_delta=min_delta)
    result = fit(Objective(Scalar(), nnx.Param, _loss), name="toy", stage=stage, optim=OptimConfig(),
                 batches_for_epoch=_batches, evaluate=evaluate, higher_is_better=higher_is_better,
                 checkpoint_dir=tmp_path / "ckpt", seed=0, mesh=make_mesh(MeshConfig()))
    return result, seen


def test_plateau_stops_early_and_restores_the_best_epoch(tmp_path):
    result, seen = _fit(tmp_path, [0.5, 0.7, 0.69, 0.7, 0.9, 0.95], epochs=20, patience=2)
    assert result.stopped == "plateau"
    assert result.epochs_run == 4  # epochs 3 and 4 did not beat 0.7 (a tie is no improvement)
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.7)
    assert result.steps == 4 * STEPS_PER_EPOCH
    assert [h["dev"] for h in result.history] == pytest.approx([0.5, 0.7, 0.69, 0.7])
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    # The returned model is the state evaluated at epoch 2, not the last one.
    assert float(result.model.w[...]) == pytest.approx(seen[1])
    assert seen[1] != pytest.approx(seen[3])


def test_still_improving_run_hits_its_cap_and_says_so(tmp_path):
    result, _ = _fit(tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5], epochs=5, patience=2)
    assert result.stopped == "cap"
    assert result.epochs_run == 5 and result.best_epoch == 5
    assert result.steps == 5 * STEPS_PER_EPOCH


def test_lower_is_better_for_alignment_losses(tmp_path):
    result, _ = _fit(tmp_path, [3.0, 2.0, 2.5, 2.1, 1.0], epochs=10, patience=2, higher_is_better=False)
    assert result.stopped == "plateau" and result.epochs_run == 4 and result.best_epoch == 2


def test_patience_zero_runs_to_the_cap(tmp_path):
    result, _ = _fit(tmp_path, [0.5, 0.4, 0.3], epochs=3, patience=0)
    assert result.stopped == "cap" and result.epochs_run == 3 and result.best_epoch == 1


def test_min_delta_ignores_tiny_gains(tmp_path):
    result, _ = _fit(tmp_path, [0.5, 0.5005, 0.5009, 0.6], epochs=10, patience=2, min_delta=0.001)
    assert result.stopped == "plateau" and result.epochs_run == 3 and result.best_epoch == 1


def test_improves_compares_in_the_stage_direction():
    assert improves(0.5, None, True) and improves(0.5, None, False)
    assert improves(0.6, 0.5, True) and not improves(0.5, 0.5, True)
    assert improves(0.4, 0.5, False) and not improves(0.6, 0.5, False)
    assert not improves(0.5009, 0.5, True, 0.001) and improves(0.502, 0.5, True, 0.001)


def test_resumed_fit_keeps_its_patience_count(tmp_path):
    """A plateau that started before an interruption still counts after resuming."""
    scores = [0.5, 0.7, 0.6, 0.6, 0.6]
    first, _ = _fit(tmp_path, scores, epochs=20, patience=2)
    again, seen = _fit(tmp_path, scores, epochs=20, patience=2)  # same checkpoint dir: already done
    assert seen == [] and again.stopped == first.stopped == "plateau"
    assert again.epochs_run == first.epochs_run == 4 and again.best_epoch == 2
    assert float(again.model.w[...]) == float(first.model.w[...])
