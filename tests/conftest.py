"""Fixtures shared by several test files."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import tiny_inputs  # noqa: E402  (tests/helpers, shared with the worker scripts)


@pytest.fixture(scope="session")
def packaged_blocks():
    """``packaged_blocks(name, start, stop)``: sentences ``start:stop`` of a packaged CoNLL-U corpus, as the
    text of a CoNLL-U file (small real train/dev/test splits for end-to-end runs)."""
    return tiny_inputs.packaged_blocks


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A persistent compilation cache for this module's in-process runs and its `alad` / worker subprocesses:
    yields the environment the subprocesses get, so they skip recompiling what another run compiled."""
    import jax

    path = tmp_path_factory.mktemp("xla")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "PYTHONUNBUFFERED": "1"}
    jax.config.update("jax_compilation_cache_dir", None)
