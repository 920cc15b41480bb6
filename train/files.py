"""Writing the work directory's files so that a reader, or a run killed mid-write, never sees half of one."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str]) -> Path:
    """Write ``text`` (a string, or lines already ending in newlines) to ``path`` in UTF-8.

    The text goes to a temporary file beside ``path`` (named per process, so two processes never
    share one), is flushed to disk, and replaces ``path`` in one rename: readers see the old file
    or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines([text] if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def jsonable(value):
    """``value`` in plain JSON types: metrics may come back as numpy scalars."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
