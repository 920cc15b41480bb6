"""Discoverable configuration: docs/config.md is generated from train/config.py (every key, its default and
its meaning) and up to date; ``alad run --help`` points to it; ``alad --version``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from alad_train.config import Config
from alad_train import cli

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
config_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_reference)


def _keys(obj, prefix: str = "") -> list[str]:
    """Every leaf key of the config by dotted path (stages.teacher.lr, ...)."""
    keys = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        key = f"{prefix}{field.name}"
        keys += _keys(value, f"{key}.") if dataclasses.is_dataclass(value) else [key]
    return keys


def test_committed_reference_equals_the_generated_one():
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == config_reference.render(), "docs/config.md is stale: run python scripts/config_reference.py"


def test_every_key_appears_with_its_default():
    text = config_reference.render()
    config = Config()
    for key in _keys(config):
        parts = key.split(".")
        if parts[0] == "stages":  # one table for every stage: a row per field, a column per stage
            assert f"| `{parts[2]}` |" in text and f"| `{parts[1]}` |" in text, key
            continue
        value = config
        for part in parts:
            value = getattr(value, part)
        assert f"| `{key}` | `{config_reference._toml(value)}` |" in text, key
    assert "| `lr` | peak learning rate (AdamW) | `0.0002` | `0.0005` |" in text  # teacher, align


def test_a_field_comment_becomes_its_meaning():
    docs = config_reference._field_docs(type(Config().data))
    assert docs["tag_col"] == "conll: the tag column (-1 = last)"  # on its line
    assert docs["skip_malformed"].startswith("A malformed sentence of a real corpus stops the run")  # above it


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"alad {importlib.metadata.version('alad-jax')}\n"


def test_run_help_names_the_config_reference(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "docs/config.md" in help_text
    assert (Path(__file__).parents[1] / "docs" / "config.md").is_file()
