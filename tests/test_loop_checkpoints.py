"""The loop's resumable checkpoints store every tensor under its name, and restore by name."""

import jax.numpy as jnp
import numpy as np
import pytest

from alad_jax.errors import AladError
from alad_jax.checkpoints import Checkpoints, named


def _tree(query, key):
    state = {"attention": {"query": {"kernel": query}, "key": {"kernel": key}}}
    return {"trainable": state, "opt_state": (), "best": state}


def test_tensors_are_saved_under_their_paths_and_restored_by_name(tmp_path):
    query, key = jnp.full((2, 2), 1.0), jnp.full((2, 2), 2.0)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(3, _tree(query, key), {"step": 3})
    names = set(named(_tree(query, key)))
    assert "trainable/attention/query/kernel" in names and "best/attention/key/kernel" in names
    restored, meta = Checkpoints(tmp_path).restore(_tree(jnp.zeros((2, 2)), jnp.zeros((2, 2))))
    assert meta == {"step": 3}
    np.testing.assert_array_equal(restored["trainable"]["attention"]["query"]["kernel"], query)
    np.testing.assert_array_equal(restored["trainable"]["attention"]["key"]["kernel"], key)


def test_a_renamed_tensor_is_an_error_not_a_silent_swap(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, _tree(jnp.ones((2, 2)), jnp.zeros((2, 2))), {})
    renamed = {"attention": {"q": {"kernel": jnp.zeros((2, 2))}, "key": {"kernel": jnp.zeros((2, 2))}}}
    with pytest.raises(AladError, match="does not match this state"):
        Checkpoints(tmp_path).restore({"trainable": renamed, "opt_state": (), "best": renamed})
