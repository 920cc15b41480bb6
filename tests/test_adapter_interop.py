"""Reference-layout safetensors interop: round trip, float64 numpy reference, PyTorch reference."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.errors import AladError


def _reference_tensors(window, student_dim, teacher_dim, hidden_dim, seed=0):
    """Weights as the authors' torch code lays them out (nn.Linear: weight [out, in]), float32."""
    rng = np.random.default_rng(seed)
    width = window * student_dim
    return {
        "fc1.weight": (rng.normal(size=(hidden_dim, width)) / math.sqrt(width)).astype(np.float32),
        "fc1.bias": (0.1 * rng.normal(size=hidden_dim)).astype(np.float32),
        "fc2.weight": (rng.normal(size=(teacher_dim, hidden_dim)) / math.sqrt(hidden_dim)).astype(np.float32),
        "fc2.bias": (0.1 * rng.normal(size=teacher_dim)).astype(np.float32),
    }


def _numpy_float64_adapter(tensors, hidden, window):
    """W2 gelu_erf(W1 window_K(S) + b1) + b2 in float64, zeros beyond the sequence edges."""
    t64 = {k: v.astype(np.float64) for k, v in tensors.items()}
    batch, seq, dim = hidden.shape
    r = window // 2
    padded = np.concatenate([np.zeros((batch, r, dim)), hidden.astype(np.float64), np.zeros((batch, r, dim))], 1)
    windows = np.concatenate([padded[:, k : k + seq] for k in range(window)], axis=-1)
    pre = windows @ t64["fc1.weight"].T + t64["fc1.bias"]
    gelu = 0.5 * pre * (1.0 + np.vectorize(math.erf)(pre / math.sqrt(2.0)))
    return gelu @ t64["fc2.weight"].T + t64["fc2.bias"]


@pytest.mark.parametrize("impl", ["explicit", "fused"])
@pytest.mark.parametrize("window,student_dim,teacher_dim", [(1, 12, 20), (3, 16, 24), (5, 8, 8)])
def test_imported_reference_matches_numpy_float64(tmp_path, impl, window, student_dim, teacher_dim):
    tensors = _reference_tensors(window, student_dim, teacher_dim, hidden_dim=64, seed=window)
    path = tmp_path / "adapter.safetensors"
    save_file(tensors, path)  # no metadata, as the authors' code would write it
    adapter = import_reference(path, window=window, impl=impl)
    assert (adapter.student_dim, adapter.teacher_dim, adapter.hidden_dim) == (student_dim, teacher_dim, 64)

    hidden = np.random.default_rng(7).normal(size=(2, 9, student_dim)).astype(np.float32)
    got = adapter(jnp.asarray(hidden), jnp.ones((2, 9), jnp.int32))
    np.testing.assert_allclose(np.asarray(got, np.float64), _numpy_float64_adapter(tensors, hidden, window), atol=1e-5)


@pytest.mark.parametrize("impl", ["explicit", "fused"])
def test_export_import_round_trip_is_exact(tmp_path, impl):
    adapter = AlignmentAdapter(10, 14, 5, 32, impl=impl, rngs=nnx.Rngs(4))
    path = export_reference(adapter, tmp_path / "sub" / "a.safetensors")
    with safe_open(path, framework="np") as f:
        assert {k: f.get_slice(k).get_shape() for k in f.keys()} == {
            "fc1.weight": [32, 50],
            "fc1.bias": [32],
            "fc2.weight": [14, 32],
            "fc2.bias": [14],
        }
        assert f.get_slice("fc1.weight").get_dtype() == "F32"
        assert {k: f.metadata()[k] for k in ("window", "student_dim", "teacher_dim")} == {
            "window": "5",
            "student_dim": "10",
            "teacher_dim": "14",
        }
        # nn.Linear layout: weight is our kernel transposed.
        np.testing.assert_array_equal(f.get_tensor("fc2.weight"), np.asarray(adapter.fc2.kernel[...]).T)

    loaded = import_reference(path, impl=impl)  # geometry from metadata alone
    assert (loaded.window, loaded.student_dim, loaded.teacher_dim, loaded.hidden_dim) == (5, 10, 14, 32)
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 10)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(loaded(hidden, mask)), np.asarray(adapter(hidden, mask)))


def test_geometry_inferred_from_either_hint(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file(_reference_tensors(3, 8, 6, 16), path)
    by_window = import_reference(path, window=3)
    by_dim = import_reference(path, student_dim=8)
    assert (by_window.window, by_window.student_dim) == (by_dim.window, by_dim.student_dim) == (3, 8)
    with pytest.raises(AladError, match=r"width 24 is ambiguous .*K=1 x Ds=24, K=3 x Ds=8.*pass window="):
        import_reference(path)
    with pytest.raises(AladError, match="not a multiple of window=5"):
        import_reference(path, window=5)
    with pytest.raises(AladError, match="window=2"):
        import_reference(path, window=2)
    with pytest.raises(AladError, match=r"window=3 x student_dim=6 = 18"):
        import_reference(path, window=3, student_dim=6)


def test_unambiguous_width_needs_no_hint(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file(_reference_tensors(1, 16, 6, 16), path)  # 16 has no odd divisor but 1
    adapter = import_reference(path)
    assert (adapter.window, adapter.student_dim) == (1, 16)


def test_hint_contradicting_metadata_raises(tmp_path):
    path = export_reference(AlignmentAdapter(4, 6, 3, 8, rngs=nnx.Rngs(0)), tmp_path / "a.safetensors")
    with pytest.raises(AladError, match="window=1 was passed but the file's metadata says window=3"):
        import_reference(path, window=1)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.pop("fc2.bias"), "missing fc2.bias"),
        (lambda t: t.update({"adapter.extra": np.zeros(3, np.float32)}), "unexpected adapter.extra"),
        (lambda t: t.update({"fc2.weight": np.zeros((6, 15), np.float32)}), r"fc2.weight has shape \[6, 15\]"),
        (lambda t: t.update({"fc1.bias": np.zeros((16, 1), np.float32)}), r"fc1.bias has shape \[16, 1\]"),
        (lambda t: t.update({"fc2.bias": np.zeros(6, np.int32)}), "fc2.bias has dtype int32"),
    ],
)
def test_malformed_reference_file_raises_naming_tensor(tmp_path, edit, message):
    tensors = _reference_tensors(3, 8, 6, 16)
    edit(tensors)
    path = tmp_path / "a.safetensors"
    save_file(tensors, path)
    with pytest.raises(AladError, match=message):
        import_reference(path, window=3)


def test_non_safetensors_and_missing_files_raise(tmp_path):
    junk = tmp_path / "adapter.bin"
    junk.write_bytes(b"PK\x03\x04 a zip archive, not safetensors")
    with pytest.raises(AladError, match="adapter.bin is not a readable safetensors file"):
        import_reference(junk, window=3)
    with pytest.raises(AladError, match="does not exist"):
        import_reference(tmp_path / "nope.safetensors", window=3)


# --- the authors' PyTorch adapter, built from the same file ----------------------------------------


def _torch_reference_adapter(torch, tensors, window):
    """The reference module: nn.Linear fc1/fc2, exact nn.GELU, windows padded at the batch edges only."""
    nn = torch.nn

    class ReferenceAdapter(nn.Module):
        def __init__(self):
            super().__init__()
            hidden_dim, width = tensors["fc1.weight"].shape
            self.window = window
            self.fc1 = nn.Linear(width, hidden_dim)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden_dim, tensors["fc2.weight"].shape[0])

        def forward(self, x):
            r = self.window // 2
            seq = x.shape[1]
            padded = nn.functional.pad(x, (0, 0, r, r))  # zeros before/after the batch tensor's sequence
            windows = torch.cat([padded[:, k : k + seq] for k in range(self.window)], dim=-1)
            return self.fc2(self.act(self.fc1(windows)))

    return ReferenceAdapter()


@pytest.mark.parametrize("window", [1, 3, 5])
def test_matches_pytorch_reference_on_unpadded_input(tmp_path, window):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    path = tmp_path / "reference.safetensors"
    save_file(_reference_tensors(window, 12, 20, 48, seed=window), path)
    reference = _torch_reference_adapter(torch, load_file(path), window)
    reference.load_state_dict(load_file(path), strict=True)
    ours = import_reference(path, window=window)

    hidden = np.random.default_rng(3).normal(size=(2, 7, 12)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(hidden)).numpy()
    got = np.asarray(ours(jnp.asarray(hidden), jnp.ones((2, 7), jnp.int32)))
    np.testing.assert_allclose(got, want, atol=1e-5)

    # And back: our export loads into the reference module and gives the same outputs.
    export_reference(ours, tmp_path / "ours.safetensors")
    reference.load_state_dict(load_file(tmp_path / "ours.safetensors"), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(reference(torch.from_numpy(hidden)).numpy(), got, atol=1e-5)


def test_pytorch_reference_leaks_pad_states_ours_does_not(tmp_path):
    """The documented difference: the reference's short sentence sees its PAD neighbours."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    path = tmp_path / "reference.safetensors"
    save_file(_reference_tensors(3, 6, 5, 16), path)
    reference = _torch_reference_adapter(torch, load_file(path), 3)
    reference.load_state_dict(load_file(path), strict=True)
    ours = import_reference(path, window=3)

    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 6, 6)).astype(np.float32)  # sentence 1 has 4 real tokens, PAD states nonzero
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        reference_padded = reference(torch.from_numpy(batch)).numpy()[1, :4]
        reference_alone = reference(torch.from_numpy(batch[1:2, :4])).numpy()[0]
    ours_padded = np.asarray(ours(jnp.asarray(batch), jnp.asarray(mask)))[1, :4]

    np.testing.assert_allclose(ours_padded, reference_alone, atol=1e-5)
    # Only the last real token has a PAD neighbour in a K=3 window; that is where the reference differs.
    np.testing.assert_allclose(reference_padded[:3], reference_alone[:3], atol=1e-5)
    assert np.abs(reference_padded[3] - reference_alone[3]).max() > 1e-2
