"""The one train-state factory: fit builds its state with it, and its step equals a plain jitted step."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_jax.config import OptimConfig, StageConfig
from alad_jax.sharding import MeshConfig, make_mesh
from alad_train import loop, state

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import tiny_task_model as tiny  # noqa: E402  (a helper module, not a package)


def test_the_factory_step_equals_the_plain_jitted_step_on_one_device():
    reference, ref_trainable, _ = tiny.train_single_device(3)
    history, trainable, _, _, _ = tiny.train_sharded(make_mesh(MeshConfig()), 3)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in reference], rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(trainable), jax.tree_util.tree_leaves(ref_trainable)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class _Scalar(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))


def test_fit_trains_through_the_factory_state(monkeypatch, tmp_path):
    built = []

    def spy(*args, **kwargs):
        built.append(state.create_train_state(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "create_train_state", spy)
    batches = [{"attention_mask": np.ones((2, 2), np.int32)}] * 2
    result = loop.fit(
        loop.Objective(_Scalar(), nnx.Param, lambda m, b, k: ((m.w[...] - 3.0) ** 2, {})), name="toy",
        stage=StageConfig(epochs=1, lr=0.1, weight_decay=0.0), optim=OptimConfig(),
        batches_for_epoch=lambda epoch: batches, evaluate=lambda m: (float(m.w[...]), {}), higher_is_better=True,
        checkpoint_dir=tmp_path / "ckpt", seed=0, mesh=make_mesh(MeshConfig()))
    assert len(built) == 1 and result.steps == 2
    # The state the factory built is the one that trained: its trainable w moved from 0 towards 3.
    assert float(built[0].trainable["w"][...]) == pytest.approx(float(result.model.w[...]))
    assert 0.0 < float(result.model.w[...]) < 3.0
