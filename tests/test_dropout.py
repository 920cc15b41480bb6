"""The encoders' dropout (alad_jax.models.dropout): four 16-bit draws per Threefry evaluation, with the
statistics of nnx.Dropout's masks. Across devices, tests/test_sharding.py runs it sharded (the tiny model's
head) against one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_jax.models.dropout import Dropout, draws16, drop_threshold

RATE = 0.1
SHAPE = (32, 12, 64, 64)  # an attention-probabilities shape: 1.57 M elements


def _dropped(key, shape=SHAPE, rate=RATE) -> np.ndarray:
    return np.asarray(Dropout(rate)(jnp.ones(shape), deterministic=False, rngs=key) == 0)


def test_drops_the_rate_and_keeps_the_expected_value():
    x = jax.random.normal(jax.random.key(1), SHAPE)
    y = np.asarray(Dropout(RATE)(x, deterministic=False, rngs=jax.random.key(0)))
    dropped = y == 0
    rate = drop_threshold(RATE) / 2 ** 16
    assert abs(rate - RATE) < 1e-5
    sigma = np.sqrt(rate * (1 - rate) / dropped.size)
    assert abs(dropped.mean() - rate) < 5 * sigma, (dropped.mean(), rate)
    # survivors are scaled so that E[y] = x, exactly as nnx.Dropout scales them
    np.testing.assert_allclose(y[~dropped], np.asarray(x)[~dropped] / (1 - rate), rtol=1e-6)


def test_each_of_the_four_draws_of_an_evaluation_is_fair_and_independent_of_the_others():
    dropped = _dropped(jax.random.key(2))
    quarters = np.split(dropped, 4, axis=-1)  # quarter j holds draw j of every evaluation
    n = quarters[0].size
    sigma1 = np.sqrt(RATE * (1 - RATE) / n)
    sigma2 = np.sqrt(RATE ** 2 * (1 - RATE ** 2) / n)
    for j, q in enumerate(quarters):
        assert abs(q.mean() - RATE) < 5 * sigma1, (j, q.mean())
        for k in range(j + 1, 4):  # two draws of one evaluation dropped together as often as chance says
            both = (q & quarters[k]).mean()
            assert abs(both - RATE ** 2) < 5 * sigma2, (j, k, both)


def test_the_same_key_gives_the_same_mask_and_another_key_another():
    a, b = _dropped(jax.random.key(3)), _dropped(jax.random.key(3))
    c = _dropped(jax.random.key(4))
    assert np.array_equal(a, b)
    agreement = (a == c).mean()  # independent masks agree on 1 - 2 p (1 - p) of the elements
    assert abs(agreement - (1 - 2 * RATE * (1 - RATE))) < 0.01, agreement


def test_a_rows_mask_depends_on_its_place_in_the_global_batch_not_on_the_rows_after_it():
    # what lets every layout draw the one-device masks: a layout only adds rows after the real ones
    key = jax.random.key(5)
    ten = draws16(key, (10, 12, 64, 64))
    five = draws16(key, (5, 12, 64, 64))
    assert np.array_equal(np.asarray(ten[:5]), np.asarray(five))
    assert not np.array_equal(np.asarray(ten[5:]), np.asarray(five))


@pytest.mark.parametrize("shape, rngs_of", [
    ((4, 6, 30), lambda: jax.random.key(6)),  # a last axis that is not a multiple of 4
    ((4, 6, 32), lambda: jax.random.key(6, impl="rbg")),  # a key that is not Threefry's
])
def test_where_four_draws_cannot_apply_the_draw_is_nnx_dropouts_own(shape, rngs_of):
    x = jax.random.normal(jax.random.key(7), shape)
    ours = Dropout(RATE)(x, deterministic=False, rngs=rngs_of())
    theirs = nnx.Dropout(RATE)(x, deterministic=False, rngs=rngs_of())
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_deterministic_and_rate_zero_are_the_identity_and_it_is_still_an_nnx_dropout():
    x = jax.random.normal(jax.random.key(8), (4, 8))
    assert np.array_equal(np.asarray(Dropout(RATE)(x, deterministic=True, rngs=jax.random.key(0))), np.asarray(x))
    assert np.array_equal(np.asarray(Dropout(0.0)(x, deterministic=False, rngs=jax.random.key(0))), np.asarray(x))
    assert isinstance(Dropout(RATE), nnx.Dropout)  # the ONNX export finds and removes dropout modules by type
