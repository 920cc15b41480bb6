"""Writing a run's report: ``results.json`` (the contract, :mod:`.contract`) and ``results.md`` rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

from alad_train.files import atomic_write_text
from alad_train.report.contract import validated
from alad_train.report.markdown import render_markdown


def write_results(workdir: Path, results: dict) -> None:
    """Write ``workdir/results.json`` (contract, indent 2) and ``workdir/results.md``.

    ``results``: ``task``, ``metric``, ``teacher``, ``student``, optional
    ``notes`` (list of lines) and ``metric_scale``, and ``rows``, each with
    ``name``, ``dev``, ``test`` (number or dict of metrics), ``params``
    (``total``, ``trainable``, ``adapter``), ``latency_ms``, ``cosine``
    (``None`` without an adapter); extra keys are kept. Raises ``AladError``
    naming the row and key when the contract's part is missing or not finite;
    then neither file is touched.
    """
    data = validated(results)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(data)
    atomic_write_text(workdir / "results.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(workdir / "results.md", markdown)

