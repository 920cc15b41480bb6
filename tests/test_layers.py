"""Layers point one way: the library never imports the application, and cases are named in one module."""

import re
from pathlib import Path

from alad_train import cases

REPO = Path(__file__).resolve().parents[1]


def _sources(*folders):
    for folder in folders:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_the_library_never_imports_the_application():
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in _sources("alad_jax")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"^\s*(from|import)\s+(alad_train|train)\b", line)]
    assert offenders == []


def test_case_names_are_string_literals_only_in_the_case_table():
    names = {case.name for case in cases.CASES} | {case.row_name() for case in cases.CASES if not case.windowed}
    # "teacher" is also the encoder role and a results.json key; "head" the task head's name in models
    # and in alad.json: neither is a case there.
    names -= {cases.TEACHER, cases.HEAD.name}
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, sorted(names))))
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in _sources("alad_jax", "train", "scripts")
                 if path.name != "cases.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []
