"""Sequence packing (alad_jax.data.batching.make_packed_batches): the packed path against the plain one.

A packed batch must compute every sentence exactly as a padded batch does: the same encoder states
(block-diagonal attention, positions restarting per sentence), the same AlAd outputs (the gap after
each sentence keeps windows inside it), the same loss and gradients, the same cached states and the
same evaluation score. Shapes and bookkeeping (every row once per epoch, one shape, the same batch
count every epoch, process shares) are checked on real Porttinari rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_jax.cache import HiddenCache
from alad_train.batches import Bucketed, Packed, for_alignment, for_finetune
from alad_train.config import load_config
from alad_jax.data import batching
from alad_jax.data.tagging import IGNORE_INDEX, TaggingFeatures
from alad_jax.errors import AladError
from alad_jax.models import hub, load_encoder, truncate
from alad_jax.models.hub import resolve_model_dir
from alad_jax.models.heads import TaggingHead
from alad_jax.models.task_model import TaskModel, hidden_states
from alad_train import models, tasks

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def task():
    cfg = load_config(None, [])  # the embedded default: 400 train, 200 dev sentences
    return tasks.TaggingTask.load(cfg, hub.load_tokenizer(cfg.teacher))


@pytest.fixture(scope="module")
def teacher():
    return load_encoder(MINILM)[0]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return load_encoder(str(truncate(str(resolve_model_dir(MINILM)), 2, tmp_path_factory.mktemp("student"))))[0]


def _subset(features: TaggingFeatures, rows) -> TaggingFeatures:
    rows = list(rows)
    return TaggingFeatures([features.input_ids[i] for i in rows], [features.labels[i] for i in rows],
                           [features.word_index[i] for i in rows], features.sentence_index[rows],
                           features.num_sentences, 0)


def _lengths(features):
    return [len(r) for r in features.input_ids]


def test_pack_rows_places_every_row_once_within_capacity_and_the_count_ignores_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, size=300).tolist()
    for gap in (0, 1, 2):
        bins = batching.pack_rows(lengths, 64, gap=gap)
        assert sorted(r for b in bins for r in b) == list(range(300))
        assert all(sum(lengths[r] + gap for r in b) <= 64 + gap for b in bins)
        # best-fit decreasing: at least as many bins as the volume needs, and close to it
        assert sum(lengths) / 64 <= len(bins) <= 1.1 * sum(lengths) / 64 + 10
        shuffled = batching.pack_rows(lengths, 64, gap=gap, order=rng.permutation(300))
        assert len(shuffled) == len(bins) and shuffled != bins
    with pytest.raises(AladError, match="row 1 has 65 tokens; rows must hold 1 to 64 tokens"):
        batching.pack_rows([3, 65], 64)


def test_packed_batches_hold_every_row_once_in_one_shape(task):
    features = task.features["train"]
    lengths = _lengths(features)
    rows = batching.packed_rows_per_batch(lengths, 16, 64, gap=1)
    plain = -(-len(lengths) // 16)
    counts = set()
    for epoch in (0, 1):
        batches = batching.make_packed_batches(features, rows_per_batch=rows, length=64, gap=1, shuffle=True,
                                               epoch=epoch)
        counts.add(len(batches))
        assert {b["input_ids"].shape for b in batches} == {(rows, 64)}
        assert abs(len(batches) - plain) <= 2  # about as many steps per epoch as batches of 16 sentences
        seen = []
        for batch in batches:
            for r in range(rows):
                segments = batch["segment_ids"][r]
                for k in range(1, segments.max() + 1):
                    at = np.flatnonzero(segments == k)
                    row = int(batch["packed_index"][r, at[0]])
                    assert (batch["packed_index"][r, at] == row).all()
                    np.testing.assert_array_equal(at, at[0] + np.arange(lengths[row]))  # contiguous
                    np.testing.assert_array_equal(batch["input_ids"][r, at], features.input_ids[row])
                    np.testing.assert_array_equal(batch["labels"][r, at], features.labels[row])
                    np.testing.assert_array_equal(batch["position_ids"][r, at], np.arange(lengths[row]))
                    assert (batch["attention_mask"][r, at] == 1).all()
                    if k < segments.max():  # the gap: one empty position before the next sentence
                        assert segments[at[-1] + 1] == 0 and batch["attention_mask"][r, at[-1] + 1] == 0
                    seen.append(row)
                empty = segments == 0
                assert (batch["attention_mask"][r, empty] == 0).all()
                assert (batch["labels"][r, empty] == IGNORE_INDEX).all()
                assert (batch["packed_index"][r, empty] == -1).all()
        assert sorted(seen) == list(range(len(lengths)))
        padding = 1 - sum(b["attention_mask"].sum() for b in batches) / sum(b["attention_mask"].size for b in batches)
        bucketed = batching.make_batches(features, batch_size=16, buckets=batching.length_buckets(64), shuffle=True,
                                         epoch=epoch)
        plain_padding = 1 - sum(b["attention_mask"].sum() for b in bucketed) / sum(
            b["attention_mask"].size for b in bucketed)
        assert padding < 0.13 and padding < plain_padding - 0.04, (padding, plain_padding)
    assert len(counts) == 1  # resume maps a step to (epoch, offset) by a fixed count


def test_packed_process_shares_concatenate_to_the_single_process_batch(task):
    features = task.features["train"]
    whole = batching.make_packed_batches(features, rows_per_batch=8, length=64, gap=1, shuffle=True, epoch=3)
    shares = [batching.make_packed_batches(features, rows_per_batch=8, length=64, gap=1, shuffle=True, epoch=3,
                                           process_index=p, process_count=2) for p in range(2)]
    for b, s0, s1 in zip(whole, *shares, strict=True):
        for key in b:
            np.testing.assert_array_equal(np.concatenate([s0[key], s1[key]]), b[key])
    eval_batches = batching.make_packed_batches(features, rows_per_batch=32, length=64, share_evenly=False)
    assert {b["input_ids"].shape for b in eval_batches} == {(32, 64)}


def _plain_and_packed(features, gap):
    """The same sentences as one bucketed batch (length 64) and as packed rows."""
    plain = batching.make_batches(features, batch_size=len(features), buckets=(64,))
    packed = batching.make_packed_batches(features, rows_per_batch=len(features), length=64, gap=gap)
    assert len(plain) == 1 and len(packed) == 1
    return plain[0], packed[0]


def test_packed_encoder_states_equal_the_padded_batch(task, teacher):
    features = _subset(task.features["dev"], range(24))
    plain, packed = _plain_and_packed(features, gap=0)
    assert len(packed["input_ids"]) < len(plain["input_ids"])  # several sentences share rows
    run = lambda b, **kw: np.asarray(teacher(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]),
                                             **kw).last_hidden_state)
    want = batching.rows_from_batches([plain], [run(plain)], len(features))
    got = batching.rows_from_packed([packed], [run(packed, segment_ids=jnp.asarray(packed["segment_ids"]),
                                                   position_ids=jnp.asarray(packed["position_ids"]))], len(features))
    scale = max(np.abs(w).max() for w in want)
    assert max(np.abs(g - w).max() for g, w in zip(got, want)) < 2e-5 * scale
    # Either half alone is wrong: without segments sentences see each other, without positions they
    # start mid-row.
    for kw in ({"segment_ids": jnp.asarray(packed["segment_ids"])},
               {"position_ids": jnp.asarray(packed["position_ids"])}):
        wrong = batching.rows_from_packed([packed], [run(packed, **kw)], len(features))
        assert max(np.abs(g - w).max() for g, w in zip(wrong, want)) > 1e-2 * scale


def test_packed_mpnet_positions_restart_per_sentence():
    from alad_jax.models.modeling import MPNET_PADDING_IDX
    from pathlib import Path

    tiny = load_encoder(str(Path(__file__).parent / "fixtures" / "mpnet_tiny"))[0]
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 90, size=n).astype(np.int32) for n in (7, 4, 9, 3)]
    features = TaggingFeatures(rows, [np.full(len(r), IGNORE_INDEX, np.int32) for r in rows],
                               [np.full(len(r), -1, np.int32) for r in rows], np.arange(4, dtype=np.int32), 4, 0)
    plain = batching.make_batches(features, batch_size=4, buckets=(16,), pad_id=MPNET_PADDING_IDX)[0]
    packed = batching.make_packed_batches(features, rows_per_batch=2, length=16, pad_id=MPNET_PADDING_IDX)[0]
    run = lambda b, **kw: np.asarray(tiny(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]),
                                          **kw).last_hidden_state)
    want = batching.rows_from_batches([plain], [run(plain)], 4)
    got = batching.rows_from_packed([packed], [run(packed, segment_ids=jnp.asarray(packed["segment_ids"]),
                                                   position_ids=jnp.asarray(packed["position_ids"]))], 4)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-5)


def _task_model(student, window):
    adapter = AlignmentAdapter(384, 384, window, 64, rngs=nnx.Rngs(0))
    return TaskModel(student, TaggingHead(384, 17, 0.0, rngs=nnx.Rngs(1)), adapter)


@pytest.mark.parametrize("window", [3, 5])
def test_packed_alad_outputs_need_the_gap_and_equal_the_padded_batch(task, student, window):
    model = _task_model(student, window)
    graphdef, state = nnx.split(model)
    features = _subset(task.features["dev"], range(24))
    plain, _ = _plain_and_packed(features, gap=window // 2)
    want = batching.rows_from_batches([plain], [np.asarray(hidden_states(graphdef, state, plain))], len(features))
    scale = max(np.abs(w).max() for w in want)
    for gap in (window // 2, window // 2 + 1, window // 2 - 1):
        packed = batching.make_packed_batches(features, rows_per_batch=len(features), length=64, gap=gap)[0]
        got = batching.rows_from_packed([packed], [np.asarray(hidden_states(graphdef, state, packed))], len(features))
        error = max(np.abs(g - w).max() for g, w in zip(got, want))
        if gap >= window // 2:
            assert error < 2e-5 * scale, (gap, error)
        else:  # a window reaches into the next sentence
            assert error > 1e-3 * scale, (gap, error)
    # the strategy a case of window K trains and evaluates with carries that gap; without an AlAd, none
    assert for_finetune(task.cfg, window) == Packed(task.cfg.max_length, task.cfg.eval_batch_size, task.cfg.seed,
                                                    gap=window // 2)
    assert for_finetune(task.cfg, None).gap == 0


def test_packed_loss_and_gradients_equal_the_padded_batch(task, student):
    model = _task_model(student, 3)
    features = _subset(task.features["train"], range(16))
    plain, packed = _plain_and_packed(features, gap=1)

    def loss(m, batch):  # models.tagging_loss without dropout: the two layouts draw different masks
        logits = m(batch)
        labels = batch["labels"]
        valid = labels != IGNORE_INDEX
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
        return (ce * valid).sum() / valid.sum()

    value_and_grad = nnx.jit(nnx.value_and_grad(loss))
    (l_plain, g_plain), (l_packed, g_packed) = (value_and_grad(model, b) for b in (plain, packed))
    np.testing.assert_allclose(float(l_packed), float(l_plain), rtol=1e-6)
    g_plain, g_packed = (jax.tree_util.tree_leaves(nnx.state(g)) for g in (g_plain, g_packed))
    scale = max(float(jnp.abs(g).max()) for g in g_plain)
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(g_packed, g_plain))
    assert worst < 1e-4 * scale, (worst, scale)
    # The training loss reads the same batch keys (with dropout on both layouts it stays finite).
    value, _ = models.tagging_loss(model, {k: jnp.asarray(v) for k, v in packed.items()}, jax.random.key(0))
    assert np.isfinite(float(value))


def test_cache_gathers_packed_positions(task, teacher, student, tmp_path):
    features = _subset(task.features["dev"], range(20))
    cache = HiddenCache.build(tmp_path, features.input_ids, student, teacher, buckets=(32, 48, 64))
    plain, packed = _plain_and_packed(features, gap=1)
    want = cache.gather(plain)
    got = cache.gather(packed)
    for name in ("student_hidden", "teacher_hidden"):
        a = batching.rows_from_batches([plain], [want[name].astype(np.float32)], len(features))
        b = batching.rows_from_packed([packed], [got[name].astype(np.float32)], len(features))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert (got[name][packed["attention_mask"] == 0] == 0).all()
    wrong = dict(packed, packed_index=np.where(packed["packed_index"] >= 0, 0, -1))  # every token of sequence 0
    with pytest.raises(AladError, match="hidden cache: packed batch position .* the cache holds"):
        cache.gather(wrong)


def test_packed_evaluation_scores_equal_the_bucketed_ones(task, student):
    model = _task_model(student, 3)
    packed = for_finetune(task.cfg, 3)
    packed_score, packed_metrics = task.evaluate(model, "dev", packed)
    plain_cfg = load_config(None, ["packing=false"])
    plain = for_finetune(plain_cfg, 3)
    assert isinstance(packed, Packed) and isinstance(plain, Bucketed)
    plain_task = tasks.TaggingTask(plain_cfg, task.tokenizer, task.sentences, task.features, task.vocab, [])
    plain_score, plain_metrics = plain_task.evaluate(model, "dev", plain)
    assert packed_metrics == plain_metrics and 0 < packed_score < 1
    assert {b["input_ids"].shape for b in task.eval_batches("dev", packed)} == {(32, 64)}
    assert len(plain_task.eval_batches("dev", plain)) > len(task.eval_batches("dev", packed))


def test_packed_cached_alignment_loss_and_sums_equal_the_padded_batch(task, teacher, student, tmp_path):
    features = _subset(task.features["train"], range(40))
    cache = HiddenCache.build(tmp_path, features.input_ids, student, teacher, buckets=(32, 48, 64))
    adapter = AlignmentAdapter(384, 384, 3, 64, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(adapter)
    plain, packed = (cache.gather(b) for b in _plain_and_packed(features, gap=1))
    jnp_batch = lambda b: {k: jnp.asarray(v) for k, v in b.items()}
    (l_plain, m_plain), (l_packed, m_packed) = (models.cached_align_loss(adapter, jnp_batch(b), None)
                                                for b in (plain, packed))
    np.testing.assert_allclose(float(l_packed), float(l_plain), rtol=1e-5)
    np.testing.assert_allclose(float(m_packed["cosine"]), float(m_plain["cosine"]), rtol=1e-5)
    sums_plain, sums_packed = (models.align_eval(graphdef, state, jnp_batch(b)) for b in (plain, packed))
    np.testing.assert_allclose(np.asarray(sums_packed), np.asarray(sums_plain), rtol=1e-5)
    # The stages pack only what the cache can gather by position: token-level targets.
    cfg = load_config(None, [])
    assert for_alignment(cfg, 3, "same") == for_alignment(cfg, 3, "token") == Packed(
        cfg.max_length, cfg.eval_batch_size, cfg.seed, gap=1)
    assert isinstance(for_alignment(cfg, 3, "word"), Bucketed)
    assert isinstance(for_alignment(load_config(None, ["cache_features=false"]), 3, "same"), Bucketed)
    assert isinstance(for_alignment(load_config(None, ["packing=false"]), 3, "same"), Bucketed)
    budget = cfg.stages.continual.token_budget
    packed_batches = for_alignment(cfg, 3, "same").train(task.features["train"], cfg.stages.continual, 0,
                                                          by_tokens=True)
    (shape,) = {b["input_ids"].shape for b in packed_batches}  # one shape, at most token_budget positions
    assert shape[1] == 64 and budget // 128 < shape[0] <= budget // 64
