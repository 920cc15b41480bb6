"""Layers point one way: the library never imports the application, and cases are named in one module."""

import ast
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


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (top level or inside a function), relative imports resolved."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_the_library_is_config_free():
    """No library module imports the application or the experiment config, however it spells the import
    (absolute, relative, inside a function): model code must not depend on run configuration."""
    experiment_config = re.compile(r"^(alad_train|train)(\.|$)|^alad_jax\.config(\.|$)")
    offenders = [f"{path.relative_to(REPO)}:{n}: {name}" for path in _sources("alad_jax")
                 for n, name in _imported_modules(path) if experiment_config.search(name)]
    assert offenders == []
    assert not (REPO / "alad_jax" / "config.py").exists(), "the experiment config lives in the app (train/config.py)"


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
