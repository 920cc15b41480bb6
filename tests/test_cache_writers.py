"""Several processes finishing the same feature cache at once: the first copy wins, nobody collides."""

import numpy as np
import pytest

from alad_jax import cache


def _parts(value: float):
    hidden = np.full((5, 4), value, cache.BF16)
    return {"student": hidden, "teacher": hidden}, np.array([0, 2, 5])


def test_a_second_writer_of_the_same_cache_keeps_the_first_copy(tmp_path):
    path = tmp_path / "key"
    cache._publish(path, *_parts(1.0), num_rows=2)
    cache._publish(path, *_parts(1.0), num_rows=2)  # another process, same content: its copy is dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
    loaded = cache.HiddenCache._load(path)
    assert np.array_equal(np.asarray(loaded.student, np.float32), np.ones((5, 4), np.float32))


def test_writers_use_their_own_temporary_directories_and_clean_up_dead_ones(tmp_path, monkeypatch):
    path = tmp_path / "key"
    dead = tmp_path / f"key.tmp-{cache.socket.gethostname()}-999999999"  # no such pid
    other_host = tmp_path / "key.tmp-elsewhere-1"
    old_style = tmp_path / "key.tmp"
    for leftover in (dead, other_host, old_style):
        leftover.mkdir()
        (leftover / "student.npy").write_bytes(b"half")
    cache._publish(path, *_parts(2.0), num_rows=2)
    # dead writers of this host and the old shared name are gone; another host's writer may be alive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "key.tmp-elsewhere-1"]


def test_a_failed_rename_without_a_finished_copy_is_an_error(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        cache._publish(tmp_path / "key", *_parts(1.0), num_rows=2)
