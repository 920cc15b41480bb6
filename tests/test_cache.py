"""The frozen-feature cache of stages 1-2: right values, reuse, invalidation, and training equal to the uncached path."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from alad_jax import cache as cache_lib
from alad_jax.adapter import AlignmentAdapter
from alad_jax.cache import HiddenCache
from alad_train.config import OptimConfig, StageConfig
from alad_jax.data import batching, tagging
from alad_jax.errors import AladError
from alad_jax.models import EncoderConfig, build_encoder
from alad_train import cases, models
from alad_train.loop import make_optimizer
from alad_train.state import make_train_step

VOCAB = 120


def _encoder(seed: int, hidden: int, layers: int):
    config = EncoderConfig(model_type="bert", vocab_size=VOCAB, hidden_size=hidden, num_layers=layers, num_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=64)
    return build_encoder(config, rngs=nnx.Rngs(seed))


def _rows(seed: int = 0, n: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[101], rng.integers(5, VOCAB, rng.integers(1, 40)), [102]]).astype(np.int32)
            for _ in range(n)]


def _features(rows) -> tagging.TaggingFeatures:
    return tagging.TaggingFeatures(
        input_ids=rows, labels=[np.full(len(r), -100, np.int32) for r in rows],
        word_index=[np.full(len(r), -1, np.int32) for r in rows],
        sentence_index=np.arange(len(rows), dtype=np.int32), num_sentences=len(rows), num_truncated_words=0)


def _batches(rows, epoch=0):
    """Shuffled batches of 2 rows x 64 tokens (one shape: one compilation per path)."""
    return batching.make_batches(_features(rows), token_budget=128, buckets=(64,), shuffle=True, epoch=epoch)


@pytest.fixture(scope="module")
def student():
    return _encoder(1, 16, 1)


@pytest.fixture(scope="module")
def teacher():
    return _encoder(2, 24, 2)


@pytest.fixture(scope="module")
def rows():
    return _rows()


@nnx.jit
def _encode_alone(encoder, ids):
    return encoder(ids, jax.numpy.ones_like(ids)).last_hidden_state


def _alone(encoder, row):
    """Reference: the row encoded by itself, no padding, float32."""
    return np.asarray(_encode_alone(encoder, row[None])[0])


@nnx.jit
def _encode_with_types(encoder, ids, types):
    return encoder(ids, jax.numpy.ones_like(ids), types).last_hidden_state


def test_cached_states_see_each_rows_segment_ids(tmp_path, rows, student, teacher):
    """QA rows are [CLS] question [SEP] context [SEP] with segment 1 on the context: the cache must encode
    them so, as the model does outside the cache, and not reuse a cache built with other segment ids."""
    types = [(np.arange(len(r)) >= len(r) // 2).astype(np.int32) for r in rows]
    with_types = HiddenCache.build(tmp_path, rows, student, teacher, token_types=types, batch_size=4)
    without = HiddenCache.build(tmp_path, rows, student, teacher, batch_size=4)
    assert len(list(tmp_path.iterdir())) == 2  # different keys
    i = 9
    lo, hi = with_types.offsets[i], with_types.offsets[i + 1]
    for table, encoder in ((with_types.student, student), (with_types.teacher, teacher)):
        want = np.asarray(_encode_with_types(encoder, rows[i][None], types[i][None])[0])
        np.testing.assert_allclose(table[lo:hi].astype(np.float32), want, rtol=8e-3, atol=8e-3)
    second = slice(lo + len(rows[i]) // 2, hi)
    gap = np.abs(with_types.student[second].astype(np.float32) - without.student[second].astype(np.float32))
    assert gap.max(axis=-1).min() > 0.05  # every segment-1 token differs by far more than bf16 rounding


def test_cached_states_equal_each_row_encoded_alone(tmp_path, rows, student, teacher):
    cache = HiddenCache.build(tmp_path, rows, student, teacher, batch_size=4)
    assert cache.student.dtype == cache_lib.BF16 and cache.offsets[-1] == sum(len(r) for r in rows)
    for i in (0, 9):
        lo, hi = cache.offsets[i], cache.offsets[i + 1]
        for table, encoder in ((cache.student, student), (cache.teacher, teacher)):
            # Bounds of bfloat16 rounding (8 significant bits) on LayerNorm-scale values.
            np.testing.assert_allclose(table[lo:hi].astype(np.float32), _alone(encoder, rows[i]), rtol=8e-3, atol=8e-3)


def test_gather_zero_pads_positions_and_padding_rows(tmp_path, rows, student, teacher):
    cache = HiddenCache.build(tmp_path, rows, student, teacher)
    batch = {"input_ids": np.zeros((3, 48), np.int32), "feature_index": np.array([2, -1, 5], np.int32),
             "attention_mask": np.zeros((3, 48), np.int32)}
    batch["attention_mask"][0, : len(rows[2])] = 1
    batch["attention_mask"][2, : len(rows[5])] = 1
    got = cache.gather(batch)
    for r, i in ((0, 2), (2, 5)):
        n = len(rows[i])
        np.testing.assert_array_equal(got["teacher_hidden"][r, :n], cache.teacher[cache.offsets[i]:cache.offsets[i + 1]])
        np.testing.assert_array_equal(got["student_hidden"][r, :n], cache.student[cache.offsets[i]:cache.offsets[i + 1]])
        assert not got["student_hidden"][r, n:].any() and not got["teacher_hidden"][r, n:].any()
    assert not got["student_hidden"][1].any() and not got["teacher_hidden"][1].any()
    assert got["student_hidden"].shape == (3, 48, 16) and got["teacher_hidden"].shape == (3, 48, 24)
    batch["attention_mask"][2, 0] = 0  # a batch made from other rows than the cache's
    with pytest.raises(AladError, match="batch row 2 .* has .* tokens, the cache holds"):
        cache.gather(batch)


def test_cache_is_reused_when_nothing_changed(tmp_path, rows, student, teacher, monkeypatch):
    first = HiddenCache.build(tmp_path, rows, student, teacher)

    def fail(*args):
        raise AssertionError("the cache was recomputed")

    monkeypatch.setattr(cache_lib, "_encode", fail)
    again = HiddenCache.build(tmp_path, [r.copy() for r in rows], student, teacher)
    assert isinstance(again.student.base, np.memmap) or isinstance(again.student, np.memmap)
    np.testing.assert_array_equal(again.student, first.student)
    np.testing.assert_array_equal(again.teacher, first.teacher)
    assert len([p for p in tmp_path.iterdir()]) == 1


def test_cache_is_invalidated_by_student_teacher_rows_and_architecture(tmp_path, rows, student, teacher):
    base = HiddenCache.build(tmp_path, rows, student, teacher)
    changed_student = _encoder(1, 16, 1)
    changed_student.embeddings.word_embeddings.embedding[...] *= -1
    new = HiddenCache.build(tmp_path, rows, changed_student, teacher)
    assert np.abs(new.student.astype(np.float32) - base.student.astype(np.float32)).max() > 0.1
    np.testing.assert_array_equal(new.teacher, base.teacher)

    changed_teacher = _encoder(3, 24, 2)
    assert not np.array_equal(HiddenCache.build(tmp_path, rows, student, changed_teacher).teacher, base.teacher)

    retokenized = [r.copy() for r in rows]
    retokenized[4][1] = (retokenized[4][1] + 1) % VOCAB  # another tokenizer or data: other ids
    moved = HiddenCache.build(tmp_path, retokenized, student, teacher)
    lo, hi = base.offsets[4], base.offsets[5]
    assert not np.array_equal(moved.student[lo:hi], base.student[lo:hi])

    relu = build_encoder(dataclasses.replace(student.config, hidden_act="relu"), rngs=nnx.Rngs(1))
    HiddenCache.build(tmp_path, rows, relu, teacher)  # same parameters, other activation
    assert len(list(tmp_path.iterdir())) == 5


def test_training_from_cache_matches_uncached_path(tmp_path, rows, student, teacher):
    """A few AdamW steps of the pipeline's step function: same losses and parameters within bf16 noise."""
    stage = StageConfig(epochs=1, lr=1e-3, weight_decay=0.01, batch_size=0, token_budget=128, schedule="constant")
    batches = _batches(rows, epoch=0) + _batches(rows, epoch=1)
    optimizer = make_optimizer(stage, OptimConfig(), total_steps=len(batches))
    cache = HiddenCache.build(tmp_path, rows, student, teacher)

    def train(model, trainable, loss_fn, prepare):
        graphdef, params, frozen = nnx.split(model, trainable, ...)
        step = jax.jit(make_train_step(graphdef, loss_fn, optimizer))
        opt_state, losses = optimizer.init(params), []
        for i, batch in enumerate(batches):
            params, opt_state, metrics = step(params, frozen, opt_state, prepare(batch), jax.random.key(i))
            losses.append(float(metrics["loss"]))
        return np.asarray(losses), nnx.merge(graphdef, params, frozen)

    def adapter():
        return AlignmentAdapter(16, 24, 3, 32, rngs=nnx.Rngs(7))

    start = adapter()
    uncached_losses, align_model = train(models.AlignModel(student, teacher, adapter()), cases.ALIGNMENT_TRAINS,
                                         models.align_loss, lambda b: b)
    cached_losses, cached_adapter = train(adapter(), nnx.Param, models.cached_align_loss, cache.gather)

    assert len(batches) >= 4
    np.testing.assert_allclose(cached_losses, uncached_losses, rtol=3e-3)  # measured: 4e-4
    assert uncached_losses[-1] < uncached_losses[0]  # it trains: the comparison is not between two still models
    for name in ("fc1", "fc2"):
        want = np.asarray(getattr(align_model.adapter, name).kernel[...])
        got = np.asarray(getattr(cached_adapter, name).kernel[...])
        moved = np.abs(want - np.asarray(getattr(start, name).kernel[...])).mean()
        assert np.abs(got - want).mean() < 0.01 * moved, name  # measured: 8e-4 of the distance moved


def test_qa_rows_are_cached_with_their_segment_ids(tmp_path):
    """A question/context pair's cached states equal the encoders run with its token_type_ids (not segment 0)."""
    from alad_jax.data import qa, readers
    from alad_jax.models import hub

    tokenizer = hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    context = "The boy ate the apple in the garden behind the old house."
    example = readers.QAExample(id="q1", question="Where did the boy eat the apple?", context=context,
                                answers=(readers.Answer("in the garden", context.index("in the garden")),))
    feats = qa.encode_qa([example], tokenizer, max_length=48, doc_stride=16, max_query_length=16)
    n = int(feats.attention_mask[0].sum())
    ids, segments = feats.input_ids[0, :n] % VOCAB, feats.token_type_ids[0, :n]  # ids fit the tiny encoders
    assert segments.max() == 1 and segments.min() == 0
    student, teacher = _encoder(3, 16, 1), _encoder(4, 24, 1)
    cache = HiddenCache.build(tmp_path, [ids], student, teacher, token_types=[segments], buckets=(48,))
    batch = {"input_ids": ids[None], "attention_mask": np.ones((1, n), np.int32), "feature_index": np.array([0])}
    gathered = cache.gather(batch)
    for name, encoder in (("student_hidden", student), ("teacher_hidden", teacher)):
        direct = encoder(ids[None], np.ones((1, n), np.int32), segments[None]).last_hidden_state
        segment0 = encoder(ids[None], np.ones((1, n), np.int32)).last_hidden_state
        cached = np.asarray(gathered[name], np.float32)
        np.testing.assert_allclose(cached, np.asarray(direct), atol=2e-2)  # bf16 storage
        assert np.abs(np.asarray(segment0) - np.asarray(direct)).max() > 0.1  # the segments matter here
    # A different segmentation of the same ids is another cache entry, never a stale hit.
    other = HiddenCache.build(tmp_path, [ids], student, teacher, buckets=(48,))
    assert np.abs(np.asarray(other.student, np.float32) - np.asarray(cache.student, np.float32)).max() > 0.1
