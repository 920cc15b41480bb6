"""``results.json``: the contract's checks (docs/method.md, section 3) and the atomic write of both files.

A row's ``dev`` / ``test`` is either one number or a dict of metrics (QA:
``{"f1": .., "exact": ..}``); the top-level ``metric`` names the headline
number either way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alad_jax.errors import AladError

TOP_KEYS = ("task", "metric", "teacher", "student", "rows")
ROW_KEYS = ("name", "dev", "test", "params", "latency_ms", "cosine")
PARAM_KEYS = ("total", "trainable", "adapter")


def _plain(value: Any, where: str, strict: bool) -> Any:
    """``value`` as JSON-ready Python (numpy / jax scalars -> float/int).

    JSON has no NaN: a non-finite float is an error where ``strict`` (the
    contract's fields), and ``null`` elsewhere (extras such as a loss that was
    never computed).
    """
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}", strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # numpy / jax scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if strict:
            raise AladError(f"results {where} is {value}: the contract needs a finite number; "
                            "check the stage that produced it (a diverged loss or an empty eval set)")
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise AladError(f"results {where} holds a {type(value).__name__}, which JSON cannot store; "
                    "pass numbers, strings, lists or dicts")


def headline(value: Any, metric: str, where: str) -> float:
    """The ``metric`` number of a row's ``dev`` / ``test`` (a number or a dict of metrics)."""
    if isinstance(value, dict):
        if metric not in value:
            raise AladError(f"results {where} has metrics {sorted(value)} but not the headline "
                            f"'{metric}'; add it or set results['metric'] to one of them")
        value = value[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AladError(f"results {where} is {value!r}, not a number; fill it from the stage's evaluation")
    return float(value)


def validated(results: dict) -> dict:
    """``results`` as plain JSON data, after checking the section 4 contract's keys and types."""
    for key in TOP_KEYS:
        if key not in results:
            raise AladError(f"results: top-level key '{key}' missing; the contract needs {list(TOP_KEYS)}")
    rows = results["rows"]
    if not isinstance(rows, (list, tuple)) or not rows:
        raise AladError("results['rows'] must be a non-empty list of row dicts")
    plain_rows = []
    for i, row in enumerate(rows):
        name = row.get("name", f"#{i}") if isinstance(row, dict) else f"#{i}"
        where = f"row '{name}'"
        if not isinstance(row, dict):
            raise AladError(f"results {where} is a {type(row).__name__}, not a dict")
        for key in ROW_KEYS:
            if key not in row:
                raise AladError(f"results {where} lacks '{key}'; every row needs {list(ROW_KEYS)}")
        params = row["params"]
        if not isinstance(params, dict) or any(k not in params for k in PARAM_KEYS):
            raise AladError(f"results {where} params must be a dict with {list(PARAM_KEYS)}, got {params!r}")
        contract = {k: _plain(row[k], f"{where}.{k}", strict=True) for k in ROW_KEYS}
        extras = {k: _plain(v, f"{where}.{k}", strict=False) for k, v in row.items() if k not in ROW_KEYS}
        for key in ("dev", "test"):
            headline(contract[key], results["metric"], f"{where}.{key}")
        plain_rows.append({**contract, **extras})
    top = {k: _plain(v, k, strict=False) for k, v in results.items() if k != "rows"}
    return {**top, "rows": plain_rows}
