"""Writes docs/config.md: every config key of ``alad run``, its default and its meaning.

The reference is generated from the dataclasses in ``train/config.py``, never written by hand:
a field's meaning is its ``metadata["doc"]``, else the comment on its line(s), else the comment
lines right above it; a section's is its class docstring. A key without any is an error naming
it, so a new key cannot reach the reference undocumented. ``tests/test_config_reference.py``
checks that the committed file equals what this script writes.

    python scripts/config_reference.py            # rewrite docs/config.md
    python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import tokenize
from pathlib import Path

from alad_train import config as config_module

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "config.md"


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on it (without ``#``)."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def _field_docs(cls) -> dict[str, str]:
    """Each field of dataclass ``cls``: its metadata doc, its own comment(s), or the comment block above it."""
    source = inspect.getsource(config_module)
    comments = _comments(source)
    lines = source.splitlines()
    (node,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    docs = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        own = [comments[i] for i in range(item.lineno, item.end_lineno + 1) if i in comments]
        above, i = [], item.lineno - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, comments[i])
            i -= 1
        docs[item.target.id] = " ".join(own or above)
    for field in dataclasses.fields(cls):
        if field.metadata.get("doc"):
            docs[field.name] = field.metadata["doc"]
    return docs


def _summary(cls) -> str:
    """A class docstring's paragraphs, joined into lines of prose (RST ``code`` -> Markdown `code`)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n")).replace("``", "`")


def _toml(value) -> str:
    """A default as it is written in a TOML file or a KEY=VALUE override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("``", "`")


def _missing(key: str) -> SystemExit:
    return SystemExit(f"error: config key '{key}' has no meaning; add a comment on its line in train/config.py "
                      "(or metadata={'doc': ...}), then run python scripts/config_reference.py")


def _section(prefix: str, cls, default) -> list[str]:
    """Markdown of one dataclass: a table of its plain keys, then its sub-sections."""
    docs = _field_docs(cls)
    fields = dataclasses.fields(cls)
    plain = [f for f in fields if not dataclasses.is_dataclass(getattr(default, f.name))]
    nested = [f for f in fields if dataclasses.is_dataclass(getattr(default, f.name))]
    out = [f"## {f'`[{prefix}]`' if prefix else 'Top level'}", "", _summary(cls), ""]
    if plain:
        out += ["| key | default | meaning |", "|---|---|---|"]
        for f in plain:
            key = f"{prefix}.{f.name}" if prefix else f.name
            if not docs.get(f.name):
                raise _missing(key)
            out.append(f"| `{key}` | `{_toml(getattr(default, f.name))}` | {_cell(docs[f.name])} |")
        out.append("")
    for f in nested:
        key = f"{prefix}.{f.name}" if prefix else f.name
        child = getattr(default, f.name)
        kinds = {type(getattr(child, g.name)) for g in dataclasses.fields(child)}
        if len(kinds) == 1 and dataclasses.is_dataclass(next(iter(kinds))):
            out += _matrix(key, type(child), child)  # a table of same-shaped sections: stages
        else:
            out += _section(key, type(child), child)
    return out


def _matrix(prefix: str, cls, default) -> list[str]:
    """Sections that share one dataclass (``stages.teacher``, ``stages.align``, ...): one table, a column each."""
    names = [f.name for f in dataclasses.fields(cls)]
    docs = _field_docs(cls)
    inner = type(getattr(default, names[0]))
    inner_docs = _field_docs(inner)
    out = [f"## `[{prefix}.NAME]`", "", _summary(cls), "", _summary(inner), "",
           "| NAME | what it optimises |", "|---|---|"]
    for name in names:
        if not docs.get(name):
            raise _missing(f"{prefix}.{name}")
        out.append(f"| `{name}` | {_cell(docs[name])} |")
    out += ["", "| key | meaning | " + " | ".join(f"`{n}`" for n in names) + " |",
            "|---|---|" + "---:|" * len(names)]
    for f in dataclasses.fields(inner):
        if not inner_docs.get(f.name):
            raise _missing(f"{prefix}.NAME.{f.name}")
        values = " | ".join(f"`{_toml(getattr(getattr(default, n), f.name))}`" for n in names)
        out.append(f"| `{f.name}` | {_cell(inner_docs[f.name])} | {values} |")
    return out + [""]


def render() -> str:
    """The whole of docs/config.md."""
    head = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python scripts/config_reference.py` from `train/config.py`; do not edit by hand. -->",
        "",
        "`alad run` starts from the embedded default (these defaults: the POS experiment), then applies a TOML",
        "file (`--config FILE`, sections as below), then `KEY=VALUE` overrides by dotted path:",
        "",
        "```bash",
        "alad run --config configs/ner_wnut16.toml seed=1 stages.align.lr=3e-4 'windows=[1,3,5]'",
        "```",
        "",
        "Values are TOML literals (`3`, `1e-4`, `true`, `[1, 3]`, `\"text\"`); a bare word is a string. An",
        "unknown key or a value of the wrong type stops the run with one line naming the key. The resolved",
        "config of a run is written to its work directory as `config.toml`.",
        "",
    ]
    return "\n".join(head + _section("", config_module.Config, config_module.Config())).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
