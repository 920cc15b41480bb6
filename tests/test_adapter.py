"""AlignmentAdapter windows, fused/explicit equality, padding correctness, losses, accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_jax.adapter import (
    AlignmentAdapter,
    adapter_param_report,
    align_mse,
    cosine_loss,
    extract_windows,
    token_cosine,
    token_cosine_sum,
)
from alad_jax.errors import AladError


def _lengths_mask(lengths, seq):
    return (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def _numpy_windows(hidden, mask, window):
    """The definition, loop by loop: neighbours outside the sequence or with mask 0 are zeros."""
    batch, seq, dim = hidden.shape
    r = window // 2
    out = np.zeros((batch, seq, window * dim), hidden.dtype)
    for b in range(batch):
        for t in range(seq):
            for k in range(window):
                s = t - r + k
                if 0 <= s < seq and mask[b, s]:
                    out[b, t, k * dim : (k + 1) * dim] = hidden[b, s]
    return out


def _pair(student_dim, teacher_dim, window, hidden_dim=24, seed=0):
    """Two adapters with identical parameters, one per implementation."""
    explicit = AlignmentAdapter(student_dim, teacher_dim, window, hidden_dim, impl="explicit", rngs=nnx.Rngs(seed))
    fused = AlignmentAdapter(student_dim, teacher_dim, window, hidden_dim, impl="fused", rngs=nnx.Rngs(seed))
    return explicit, fused


@pytest.mark.parametrize("window", [1, 3, 5])
def test_extract_windows_matches_definition_with_padding(window):
    rng = np.random.default_rng(window)
    hidden = rng.normal(size=(3, 7, 4)).astype(np.float32)
    mask = _lengths_mask([7, 4, 1], 7)
    got = np.asarray(extract_windows(jnp.asarray(hidden), jnp.asarray(mask), window))
    assert got.shape == (3, 7, window * 4)
    np.testing.assert_array_equal(got, _numpy_windows(hidden, mask, window))


def test_window_edges_are_zeros_and_order_is_oldest_first():
    hidden = jnp.arange(1.0, 5.0).reshape(1, 4, 1)  # tokens 1, 2, 3, 4
    windows = extract_windows(hidden, jnp.ones((1, 4)), 3)
    np.testing.assert_array_equal(np.asarray(windows[0]), [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]])


@pytest.mark.parametrize("window", [1, 3, 5, 7])
@pytest.mark.parametrize("student_dim,teacher_dim", [(8, 12), (12, 6)])
def test_fused_equals_explicit(window, student_dim, teacher_dim):
    explicit, fused = _pair(student_dim, teacher_dim, window, seed=window)
    rng = np.random.default_rng(10 * window + student_dim)
    hidden = jnp.asarray(rng.normal(size=(3, 9, student_dim)), jnp.float32)
    mask = jnp.asarray(_lengths_mask([9, 6, 2], 9))
    want, got = explicit(hidden, mask), fused(hidden, mask)
    assert got.shape == (3, 9, teacher_dim)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_fused_gradients_equal_explicit():
    explicit, fused = _pair(6, 10, 5)
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 8, 6)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(2, 8, 10)), jnp.float32)
    mask = jnp.asarray(_lengths_mask([8, 5], 8))

    def loss(model, hidden):
        return align_mse(model(hidden, mask), target, mask)

    grads = [nnx.grad(loss, argnums=(0, 1))(model, hidden) for model in (explicit, fused)]
    want, got = jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])
    assert len(want) == len(got) == 5  # fc1/fc2 kernel+bias, and d/d hidden
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    # Padded hidden states get no gradient: they never reach the output.
    np.testing.assert_array_equal(np.asarray(got[-1])[1, 5:], 0.0)


@pytest.mark.parametrize("impl", ["explicit", "fused"])
def test_output_ignores_padding_and_batch_company(impl):
    adapter = AlignmentAdapter(5, 7, 3, 16, impl=impl, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(1)
    short = rng.normal(size=(4, 5)).astype(np.float32)
    alone = adapter(jnp.asarray(short[None]), jnp.ones((1, 4), jnp.int32))[0]

    batch = rng.normal(size=(3, 9, 5)).astype(np.float32)
    batch[1, :4] = short
    batch[1, 4:] = 1e6  # garbage in the short sentence's PAD states
    batch[1, 6] = np.nan
    batch[2, 7:] = -np.inf
    mask = _lengths_mask([9, 4, 7], 9)
    padded = adapter(jnp.asarray(batch), jnp.asarray(mask))

    assert np.isfinite(np.asarray(padded)).all()
    np.testing.assert_allclose(np.asarray(padded[1, :4]), np.asarray(alone), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [0, -1, -3, 2, 4, 3.0, True, "3"])
def test_invalid_window_raises_naming_value(window):
    with pytest.raises(AladError, match=f"window={window!r}"):
        AlignmentAdapter(4, 4, window, 8, rngs=nnx.Rngs(0))
    with pytest.raises(AladError, match=f"window={window!r}"):
        extract_windows(jnp.zeros((1, 2, 4)), jnp.ones((1, 2)), window)


def test_numpy_integer_window_is_accepted():
    adapter = AlignmentAdapter(np.int64(4), 4, np.int64(5), 8, rngs=nnx.Rngs(0))
    assert (adapter.window, adapter.student_dim) == (5, 4) and type(adapter.window) is int
    assert adapter.fc1.kernel.shape == (20, 8)


def test_invalid_impl_raises():
    with pytest.raises(AladError, match="impl='conv'"):
        AlignmentAdapter(4, 4, 3, 8, impl="conv", rngs=nnx.Rngs(0))


def test_constructor_keeps_geometry_and_reference_param_paths():
    adapter = AlignmentAdapter(16, 24, 5, 32, rngs=nnx.Rngs(0))
    assert (adapter.student_dim, adapter.teacher_dim, adapter.window, adapter.hidden_dim) == (16, 24, 5, 32)
    assert adapter.impl in ("fused", "explicit")
    shapes = {"/".join(map(str, path)): v.shape for path, v in nnx.to_flat_state(nnx.state(adapter, nnx.Param))}
    assert shapes == {"fc1/kernel": (80, 32), "fc1/bias": (32,), "fc2/kernel": (32, 24), "fc2/bias": (24,)}


def test_bfloat16_compute_tracks_float32():
    explicit32 = AlignmentAdapter(8, 8, 3, 32, impl="explicit", rngs=nnx.Rngs(0))
    fused16 = AlignmentAdapter(8, 8, 3, 32, impl="fused", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 8)), jnp.float32)
    mask = jnp.asarray(_lengths_mask([6, 3], 6))
    got = fused16(hidden, mask)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(explicit32(hidden, mask)), atol=5e-2)


# --- losses and metric ---------------------------------------------------------------------------


def _loss_inputs(seed=0):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(2, 5, 4)).astype(np.float32)
    target = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = _lengths_mask([5, 3], 5)
    return pred, target, mask


def test_align_mse_counts_tokens_not_elements():
    pred = np.zeros((2, 3, 4), np.float32)
    target = np.ones((2, 3, 4), np.float32)
    mask = _lengths_mask([3, 1], 3)
    # 4 real tokens, each at squared distance 4 (dim 4): 16 / 4 tokens = 4, not 16 / 16 elements = 1.
    assert float(align_mse(pred, target, mask)) == pytest.approx(4.0)


def test_align_mse_matches_numpy_and_ignores_pad_garbage():
    pred, target, mask = _loss_inputs()
    want = sum(((pred[b, t] - target[b, t]) ** 2).sum() for b in range(2) for t in range(5) if mask[b, t]) / mask.sum()
    pred[1, 3:] = np.nan
    target[1, 4] = 1e30
    assert float(align_mse(pred, target, mask)) == pytest.approx(float(want), rel=1e-6)


def test_alignment_eval_sums_ignore_pad_garbage_and_add_up_to_the_mse():
    from alad_train.models import alignment_sums

    pred, target, mask = _loss_inputs()
    want_sq = sum(((pred[b, t] - target[b, t]) ** 2).sum() for b in range(2) for t in range(5) if mask[b, t])
    pred[1, 3:] = np.nan
    sq, _, count = alignment_sums(pred, target, {"attention_mask": mask})
    assert float(count) == mask.sum()
    assert float(sq) == pytest.approx(float(want_sq), rel=1e-6)
    assert float(sq) / float(count) == pytest.approx(float(align_mse(pred, target, mask)), rel=1e-6)


def test_losses_are_zero_not_nan_without_tokens():
    pred, target, _ = _loss_inputs()
    empty = np.zeros((2, 5), np.int32)
    assert float(align_mse(pred, target, empty)) == 0.0
    assert float(token_cosine(pred, target, empty)) == 0.0
    assert [float(x) for x in token_cosine_sum(pred, target, empty)] == [0.0, 0.0]


def test_token_cosine_matches_numpy_and_accumulates():
    pred, target, mask = _loss_inputs(1)
    cosines = [
        pred[b, t] @ target[b, t] / (np.linalg.norm(pred[b, t]) * np.linalg.norm(target[b, t]))
        for b in range(2)
        for t in range(5)
        if mask[b, t]
    ]
    pred[1, 4] = np.nan
    assert float(token_cosine(pred, target, mask)) == pytest.approx(np.mean(cosines), rel=1e-5)
    assert float(cosine_loss(pred, target, mask)) == pytest.approx(1 - np.mean(cosines), rel=1e-5)
    # Per-batch sums add up to the data-set mean (not a mean of batch means).
    sums = [token_cosine_sum(pred[i : i + 1], target[i : i + 1], mask[i : i + 1]) for i in range(2)]
    total, count = (sum(float(s[j]) for s in sums) for j in (0, 1))
    assert count == 8.0
    assert total / count == pytest.approx(np.mean(cosines), rel=1e-5)


def test_token_cosine_of_aligned_and_opposite_vectors():
    target = np.random.default_rng(2).normal(size=(1, 3, 6)).astype(np.float32)
    mask = np.ones((1, 3), np.int32)
    assert float(token_cosine(2.5 * target, target, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(cosine_loss(-target, target, mask)) == pytest.approx(2.0, abs=1e-6)


def test_cosine_loss_gradient_is_finite_at_zero_prediction():
    target = jnp.ones((1, 2, 3))
    grad = jax.grad(cosine_loss)(jnp.zeros((1, 2, 3)), target, jnp.ones((1, 2)))
    assert np.isfinite(np.asarray(grad)).all()


# --- parameter accounting ------------------------------------------------------------------------


def test_param_report_counts_and_percentages():
    adapter = AlignmentAdapter(16, 24, 3, 40, rngs=nnx.Rngs(0))
    n = (3 * 16 + 1) * 40 + (40 + 1) * 24
    report = adapter_param_report(adapter, teacher_params=10 * n, student_params=4 * n)
    assert report == {"adapter": n, "pct_of_teacher": pytest.approx(10.0), "pct_of_student": pytest.approx(25.0)}
    assert adapter_param_report(adapter) == {"adapter": n, "pct_of_teacher": None, "pct_of_student": None}


def test_paper_geometry_param_count():
    # BERT-Mini (Ds=256) -> BERT-base (Dt=768), K=3, hidden 1280: the paper's adapter size.
    adapter = nnx.eval_shape(lambda: AlignmentAdapter(256, 768, 3, rngs=nnx.Rngs(0)))
    assert adapter_param_report(adapter)["adapter"] == 768 * 1280 + 1280 + 1280 * 768 + 768
