"""The one train-state factory: fit builds its state with it, and its step equals a plain jitted step."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_train.config import OptimConfig, StageConfig
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


class _Tiny(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.3)
        self.out = nnx.Linear(16, 3, rngs=rngs)
        self.frozen = nnx.Linear(3, 3, rngs=rngs)


def _tiny_loss(model, batch, key):
    h = model.drop(jax.nn.gelu(model.hidden(model.embed(batch["input_ids"]))), rngs=nnx.Rngs(dropout=key))
    logits = model.frozen(model.out(h))
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["labels"][..., None], -1))
    return loss, {"mean_logit": logits.mean()}


def test_the_flat_dispatch_step_equals_the_tree_step_bit_for_bit():
    """TrainState.step (flat lists of arrays) is a speed path: it must train exactly as step_fn on trees."""
    mesh = make_mesh(MeshConfig())
    optimizer = loop.make_optimizer(StageConfig(epochs=1, lr=1e-2), OptimConfig(), 10)
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("frozen")))
    flat, tree = (state.train_state_of(_Tiny(), trainable, _tiny_loss, optimizer, mesh) for _ in range(2))
    rng = np.random.default_rng(0)
    for i in range(4):
        batch = {"input_ids": rng.integers(0, 11, (4, 5)).astype(np.int32),
                 "labels": rng.integers(0, 3, (4, 5)).astype(np.int32)}
        key = jax.random.key(i)
        got = flat.step(batch, key)
        tree.trainable, tree.opt_state, want = tree.step_fn(tree.trainable, tree.frozen, tree.opt_state, batch, key)
        assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}
    for a, b in zip(jax.tree_util.tree_leaves((flat.trainable, flat.opt_state)),
                    jax.tree_util.tree_leaves((tree.trainable, tree.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the frozen part did not move, and the trees read back with their structure
    np.testing.assert_array_equal(np.asarray(flat.frozen["frozen"]["kernel"][...]),
                                  np.asarray(_Tiny().frozen.kernel[...]))
    assert float(flat.model().out.kernel[...].sum()) == float(tree.model().out.kernel[...].sum())
    # an ahead-of-time executable of the same step gives the same next step
    more = {"input_ids": np.ones((4, 5), np.int32), "labels": np.zeros((4, 5), np.int32)}
    got = flat.run(flat.lower(more, jax.random.key(9)).compile(), more, jax.random.key(9))
    tree.trainable, tree.opt_state, want = tree.step_fn(tree.trainable, tree.frozen, tree.opt_state, more,
                                                        jax.random.key(9))
    assert float(got["loss"]) == float(want["loss"])


def test_a_tree_of_another_structure_is_refused():
    mesh = make_mesh(MeshConfig())
    optimizer = loop.make_optimizer(StageConfig(epochs=1, lr=1e-2), OptimConfig(), 10)
    built = state.train_state_of(_Tiny(), nnx.Param, _tiny_loss, optimizer, mesh)
    with pytest.raises(ValueError, match="a trainable tree of another structure"):
        built.trainable = {"w": jnp.zeros(())}


def test_fit_reports_the_padding_share_of_the_positions_it_trained_on(tmp_path):
    # two batches of 2 x 4 positions with 6 and 3 real tokens: 16 positions, 7 of them padding
    batches = [{"attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)},
               {"attention_mask": np.array([[1, 1, 1, 0], [0, 0, 0, 0]], np.int32)}]
    result = loop.fit(
        loop.Objective(_Scalar(), nnx.Param, lambda m, b, k: ((m.w[...] - 3.0) ** 2, {})), name="toy",
        stage=StageConfig(epochs=1, lr=0.1, weight_decay=0.0), optim=OptimConfig(),
        batches_for_epoch=lambda epoch: batches, evaluate=lambda m: (float(m.w[...]), {}), higher_is_better=True,
        checkpoint_dir=tmp_path / "ckpt", seed=0, mesh=make_mesh(MeshConfig()))
    assert result.positions == 16
    assert result.padding == pytest.approx(7 / 16)
