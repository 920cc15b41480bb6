"""Each process's share of a QA global batch: P shares in process order are the one-process batch."""

import numpy as np
import pytest

from alad_jax.data.qa import QAFeatures, make_qa_batches, process_share
from alad_jax.errors import AladError


def _features(n: int = 37, length: int = 12) -> QAFeatures:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (n, length)).astype(np.int32)
    return QAFeatures(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
                      start_positions=rng.integers(0, length, n).astype(np.int32),
                      end_positions=rng.integers(0, length, n).astype(np.int32),
                      offsets=np.zeros((n, length, 2), np.int32), example_index=np.arange(n, dtype=np.int32))


@pytest.mark.parametrize("processes", [2, 4])
def test_qa_process_shares_concatenate_to_the_one_process_batch(processes):
    features, size = _features(), 8
    whole = make_qa_batches(features, batch_size=size, shuffle=True, seed=3, epoch=1)
    shares = [make_qa_batches(features, batch_size=size, process_index=p, process_count=processes,
                              shuffle=True, seed=3, epoch=1) for p in range(processes)]
    assert {len(s) for s in shares} == {len(whole)} == {5}
    for b, batch in enumerate(whole):
        for key, value in batch.items():
            assert np.array_equal(np.concatenate([s[b][key] for s in shares]), value)
    # every feature once per epoch, whatever the process count
    rows = np.concatenate([s[b]["feature_index"] for s in shares for b in range(len(whole))])
    assert sorted(rows[rows >= 0].tolist()) == list(range(37))


def test_qa_share_on_one_process_is_the_whole_batch_and_must_divide_over_devices():
    assert process_share(8, 1) == {"batch_size": 8, "process_index": 0, "process_count": 1}
    assert process_share(8, 4)["batch_size"] == 8
    with pytest.raises(AladError, match="QA batch_size=6 does not divide over the 4 devices.*multiple of 4"):
        process_share(6, 4)
