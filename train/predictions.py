"""A row's predictions on a split, saved so that any comparison can be recomputed without retraining.

``WORKDIR/predictions/<row>.<split>.jsonl`` (docs/statistics.md): a header line, then one line per
unit the metric averages over, in the split's order.

- header: ``{"format": "alad-predictions/1", "row", "split", "task", "metric", "score", "meta"}``
  (``score``: the row's headline number on that split; ``meta``: e.g. QA's ``null_threshold``);
- tagging (pos, ner), one line per sentence: ``{"words": [..], "gold": [..], "pred": [..]}``, a gold
  and a predicted label per word;
- qa, one line per question: ``{"id", "pred": answer text ("" = no answer), "answers": [gold texts]}``.

:func:`score_records` is the one scorer: the task's evaluation scores its records with it before the
file is written, so the file and the row's number cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from alad_jax.data.readers import Answer, QAExample
from alad_jax.errors import AladError
from alad_jax.metrics import squad_v2_scores, tagging_scores
from alad_train.files import atomic_write_text

FORMAT = "alad-predictions/1"
HEADLINE = {"pos": "accuracy", "ner": "f1", "qa": "f1"}


def score_records(task: str, records: list[dict]) -> dict:
    """Every metric of ``task`` on ``records`` (the per-unit lines above); the headline is ``HEADLINE[task]``."""
    if task == "qa":
        return squad_v2_scores(qa_examples(records), {r["id"]: r["pred"] for r in records})
    return tagging_scores(task, [r["gold"] for r in records], [r["pred"] for r in records])


def qa_examples(records: list[dict]) -> list[QAExample]:
    """The records' questions as the SQuAD scorer reads them (id and gold answer texts only)."""
    return [QAExample(r["id"], "", "", tuple(Answer(text, -1) for text in r["answers"])) for r in records]


def path(workdir: str | Path, row: str, split: str) -> Path:
    return Path(workdir) / "predictions" / f"{row}.{split}.jsonl"


def write(workdir: str | Path, row: str, split: str, *, task: str, records: list[dict], score: float,
          meta: dict | None = None) -> Path:
    """Write a row's records on ``split`` atomically (a reader sees the old file or the new one)."""
    out = path(workdir, row, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "row": row, "split": split, "task": task, "metric": HEADLINE[task],
              "score": score, "meta": meta or {}}
    return atomic_write_text(out, (json.dumps(line, ensure_ascii=False) + "\n" for line in (header, *records)))


def read(file: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a predictions file; a missing, foreign or malformed file is one clear error."""
    file = Path(file)
    if not file.is_file():
        raise AladError(f"{file}: no predictions file; rows finished before predictions were saved have none: "
                        "re-run that stage (alad run --restart) to write it")
    lines = file.read_text(encoding="utf-8").splitlines()
    try:
        parsed = [json.loads(line) for line in lines]
    except json.JSONDecodeError as error:
        bad = next(i for i, line in enumerate(lines, 1) if not _is_json(line))
        raise AladError(f"{file}:{bad}: not JSON ({error.msg}); the file is damaged: re-run the row") from None
    if not parsed or not isinstance(parsed[0], dict) or parsed[0].get("format") != FORMAT:
        raise AladError(f"{file}:1: not a predictions file (header 'format' should be {FORMAT!r})")
    return parsed[0], parsed[1:]


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
