"""The loop's rules a user relies on: when a stage stops, and what learning rate and gradient each step applies.

- Stopping: ``patience`` counts evaluations *in a row* without improvement; an improvement starts the count
  again, so a curve that improves, stalls once, improves again runs on.
- Schedule: ``warmup_fraction`` of the steps ramp the learning rate linearly up from 0, then it decays linearly
  to 0 at the last step (``schedule="linear"``, the HF Trainer default) or stays (``"constant"``).
- Clipping: a gradient whose global norm exceeds ``clip_norm`` enters AdamW scaled down to that norm.

The schedule is read off the updates themselves: with weight decay 0 and a constant gradient, every AdamW
update of a parameter is ``-lr_t`` (first and second moments agree after bias correction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alad_jax import sharding
from alad_train.config import OptimConfig, StageConfig
from alad_train.loop import Objective, fit, make_optimizer

LR = 1e-3


def _applied_lrs(stage: StageConfig, total_steps: int) -> np.ndarray:
    """The learning rate each of ``total_steps`` steps applies, measured as the update of a constant gradient."""
    optimizer = make_optimizer(stage, OptimConfig(eps=0.0), total_steps)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    lrs = []
    for _ in range(total_steps):
        updates, state = optimizer.update({"w": jnp.asarray(0.5)}, state, params)
        params = optax.apply_updates(params, updates)
        lrs.append(-float(updates["w"]))
    return np.asarray(lrs)


def test_the_first_steps_learning_rate_rises_as_the_warmup_says_then_decays_linearly_to_zero():
    stage = StageConfig(lr=LR, weight_decay=0.0, warmup_fraction=0.25, schedule="linear")
    lrs = _applied_lrs(stage, 20)  # 5 warmup steps, then 15 of decay
    warmup = LR * np.arange(5) / 5  # 0, lr/5, ..., 4 lr/5: rising from 0
    decay = LR * (1 - np.arange(15) / 15)  # lr at the end of warmup, down towards 0 at step 20
    np.testing.assert_allclose(lrs, np.concatenate([warmup, decay]), rtol=1e-5, atol=1e-9)
    assert np.all(np.diff(lrs[:6]) > 0), "the warmup must ramp the learning rate up"


def test_without_warmup_the_linear_schedule_starts_at_the_full_rate_and_constant_stays_there():
    linear = _applied_lrs(StageConfig(lr=LR, weight_decay=0.0, schedule="linear"), 10)
    np.testing.assert_allclose(linear, LR * (1 - np.arange(10) / 10), rtol=1e-5, atol=1e-9)
    constant = _applied_lrs(StageConfig(lr=LR, weight_decay=0.0, warmup_fraction=0.2, schedule="constant"), 10)
    np.testing.assert_allclose(constant, np.concatenate([LR * np.arange(2) / 2, np.full(8, LR)]), rtol=1e-5,
                               atol=1e-9)


@pytest.mark.parametrize("norm", [0.5, 50.0])
def test_a_gradient_above_the_clip_norm_enters_adamw_scaled_to_that_norm(norm):
    optim = OptimConfig(clip_norm=1.0)
    optimizer = make_optimizer(StageConfig(lr=LR, weight_decay=0.0), optim, 10)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
    direction = {"a": jnp.arange(1.0, 4.0), "b": -jnp.arange(1.0, 5.0)}
    length = float(optax.tree.norm(direction))
    grads = jax.tree.map(lambda g: g * norm / length, direction)
    _, state = optimizer.update(grads, optimizer.init(params), params)
    (mu,) = [s.mu for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    entered = jax.tree.map(lambda m: m / (1 - optim.b1), mu)  # the first moment after one step: (1 - b1) g
    np.testing.assert_allclose(float(optax.tree.norm(entered)), min(norm, optim.clip_norm), rtol=1e-5)
    for key in grads:  # scaled, not turned
        np.testing.assert_allclose(entered[key], grads[key] * min(1.0, optim.clip_norm / norm), rtol=1e-5)


def _fit_to_curve(curve: list[float], tmp_path, patience: int = 2):
    """``fit`` on a one-weight model whose dev scores (higher is better) are ``curve``, epoch by epoch."""
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    batch = {"x": np.ones((1, 2), np.float32), "attention_mask": np.ones((1, 2), np.int32)}
    scores = iter(curve)
    return fit(
        Objective(model, nnx.Param, lambda m, b, key: (jnp.mean(m(b["x"]) ** 2), {})),
        name="curve", stage=StageConfig(epochs=len(curve), patience=patience, min_delta=0.0),
        optim=OptimConfig(), batches_for_epoch=lambda epoch: [batch], evaluate=lambda m: (next(scores), {}),
        higher_is_better=True, checkpoint_dir=tmp_path / "checkpoints", seed=0,
        mesh=sharding.make_mesh(devices=jax.devices()[:1]),
    )


def test_a_curve_that_improves_stalls_improves_stalls_does_not_stop_under_patience_2(tmp_path):
    curve = [0.50, 0.50, 0.60, 0.60, 0.70, 0.70, 0.80, 0.80]  # never two stalls in a row
    result = _fit_to_curve(curve, tmp_path)
    assert result.epochs_run == len(curve) and result.stopped == "cap"
    assert result.best_epoch == 7 and result.best_score == pytest.approx(0.80)
    assert [h["dev"] for h in result.history] == curve


def test_two_stalls_in_a_row_stop_under_patience_2(tmp_path):
    result = _fit_to_curve([0.50, 0.60, 0.60, 0.70, 0.65, 0.69, 0.90, 0.95], tmp_path)
    assert result.epochs_run == 6 and result.stopped == "plateau"  # epochs 5 and 6 did not beat 0.70
    assert result.best_epoch == 4 and result.best_score == pytest.approx(0.70)
