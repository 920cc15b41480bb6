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


# -- tagging and alignment: the global batch, not the process or device count, defines the run ----------------------

LAYOUTS = [(1, 1), (2, 1), (1, 4), (2, 2)]  # (processes, devices of all processes)


@pytest.fixture(scope="module")
def small_task():
    """The issue's real command's train split: 64 Porttinari sentences, whose packing rounds 16 x 48 / 64 = 12 and
    32 x 48 / 64 = 24 (gap 0) and 23 (gap 1): the counts that broke when the layout rounded them."""
    from alad_train.config import load_config
    from alad_jax.models import hub
    from alad_train import tasks

    overrides = ["data.max_train=64", "data.max_dev=32", "data.max_test=32"]
    return tasks.TaggingTask.load(load_config(None, overrides), hub.load_tokenizer(load_config(None, []).teacher))


def _global_batches(make, layout, monkeypatch) -> list[dict]:
    """``make()``'s batches as every process of ``layout`` builds them, each step's shares joined in process order."""
    import jax

    processes, devices = layout
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    shares = []
    for p in range(processes):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        shares.append(make())
    monkeypatch.undo()
    assert len({len(s) for s in shares}) == 1, "every process must take the same number of steps"
    return [{k: np.concatenate([s[b][k] for s in shares]) for k in shares[0][b]} for b in range(len(shares[0]))]


def _real_rows(batch: dict) -> list:
    """Each row's feature rows in order (packed: its sentences; bucketed: its one row), empty rows dropped."""
    if "packed_index" in batch:
        rows = [tuple(dict.fromkeys(int(i) for i in row if i >= 0)) for row in batch["packed_index"]]
    else:
        rows = [(int(i),) if i >= 0 else () for i in batch["feature_index"]]
    return rows


def _same_run(batches_by_layout: dict) -> None:
    """Every layout: the same number of steps, and each step the same real rows at the same global positions
    (a layout may only add empty rows after them), so dropout masks drawn over the global batch match too."""
    one = batches_by_layout[(1, 1)]
    for layout, batches in batches_by_layout.items():
        processes, devices = layout
        assert len(batches) == len(one), f"{layout}: {len(batches)} steps per epoch, one device takes {len(one)}"
        for step, (mine, reference) in enumerate(zip(batches, one)):
            rows, want = _real_rows(mine), _real_rows(reference)
            assert len(rows) % int(np.lcm(processes, devices)) == 0
            assert rows[:len(want)] == want and not any(rows[len(want):]), f"{layout}, step {step}"
            # The tokens and labels are the one-device batch's, row for row; the added rows are empty.
            for key in ("input_ids", "attention_mask", "labels"):
                assert np.array_equal(mine[key][:len(want)], reference[key]), (layout, step, key)
            assert not mine["attention_mask"][len(want):].any()


def _fresh_train_batches(task, stage, epoch: int, gap: int) -> list[dict]:
    """``task.train_batches`` as a new process computes them (nothing remembered from another layout), for an AlAd
    whose window needs ``gap`` (K = 2 gap + 1)."""
    from alad_train import batches

    batches._rows_per_batch.cache_clear()
    return task.train_batches(stage, epoch, batches.for_finetune(task.cfg, 2 * gap + 1))


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("batch_size,gap", [(16, 0), (32, 0), (32, 1)])
def test_every_process_and_device_layout_trains_on_the_same_global_batches(small_task, monkeypatch, packing,
                                                                             batch_size, gap):
    from alad_train.config import StageConfig

    small_task.cfg.packing = packing
    stage = StageConfig(batch_size=batch_size)
    try:
        for epoch in (0, 3):
            _same_run({layout: _global_batches(lambda: _fresh_train_batches(small_task, stage, epoch, gap), layout,
                                               monkeypatch) for layout in LAYOUTS})
    finally:
        small_task.cfg.packing = True


@pytest.mark.parametrize("gap", [1, None])
def test_every_layout_aligns_on_the_same_global_batches(small_task, monkeypatch, gap):
    from alad_train.config import StageConfig
    from alad_train import batches

    cfg = small_task.cfg
    strategy = batches.bucketed(cfg) if gap is None else batches.Packed(cfg.max_length, cfg.eval_batch_size,
                                                                        cfg.seed, gap)
    stage = StageConfig(batch_size=0, token_budget=700)
    rows = small_task.text_rows("train")
    for epoch in (0, 2):
        _same_run({layout: _global_batches(lambda: strategy.train(rows, stage, epoch, by_tokens=True),
                                           layout, monkeypatch) for layout in LAYOUTS})
