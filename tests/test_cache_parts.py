"""The feature cache with several processes: each encodes only its own share of the rows into its part of the
cache, and every process reads the whole cache, the same states as one process builds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))

import cache_worker  # noqa: E402
import multihost_run  # noqa: E402
from alad_jax.cache import BF16, HiddenCache, PartedRows, shares  # noqa: E402


def test_shares_are_contiguous_disjoint_and_cover_the_rows():
    assert shares(11, 2).tolist() == [0, 6, 11]
    assert shares(3, 4).tolist() == [0, 1, 2, 2, 3]  # fewer rows than processes: some shares are empty
    assert shares(8, 1).tolist() == [0, 8]


def test_parted_rows_read_as_the_concatenated_table():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)).astype(BF16) for n in (4, 0, 5, 2)]
    whole = np.concatenate(parts)
    table = PartedRows(parts)
    index = rng.integers(0, len(whole), 40)
    assert table.shape == whole.shape and len(table) == 11
    np.testing.assert_array_equal(table[index], whole[index])
    np.testing.assert_array_equal(np.asarray(table), whole)


@pytest.mark.slow
def test_two_processes_each_encode_their_share_and_read_the_one_process_cache(tmp_path):
    env = multihost_run.environment(tmp_path / "xla")
    port = multihost_run.free_port()
    workers = [subprocess.Popen([sys.executable, str(HELPERS / "cache_worker.py"), str(tmp_path / "two")],
                                env={**env, "ALAD_COORDINATOR": f"127.0.0.1:{port}", "ALAD_NUM_PROCESSES": "2",
                                     "ALAD_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    student, teacher = cache_worker.encoders()
    rows = cache_worker.rows()
    one = cache_worker.read_all(HiddenCache.build(tmp_path / "one", rows, student, teacher, batch_size=4))
    (directory,) = [p for p in (tmp_path / "two" / "cache").iterdir()]
    assert json.loads((directory / "done.json").read_text())["parts"] == 2
    lengths = [len(r) for r in rows]
    for i, (lo, hi) in enumerate(zip(shares(len(rows), 2)[:-1], shares(len(rows), 2)[1:])):
        # process i encoded its own rows, and only them
        part = np.load(directory / f"part{i}" / "student.npy", mmap_mode="r")
        assert part.shape == (sum(lengths[lo:hi]), 16)
    for i in range(2):
        with np.load(tmp_path / "two" / f"p{i}.npz") as two:
            for name in ("student", "teacher", "offsets"):
                np.testing.assert_array_equal(two[name], one[name], err_msg=f"process {i}: {name}")
    assert not [p for p in (tmp_path / "two" / "cache").rglob("*") if ".tmp" in p.name or ".part" in p.name]
