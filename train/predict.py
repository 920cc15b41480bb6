"""``alad predict``: label text (or answer questions) with a saved model, an exported artifact or a run.

``--model`` may be a saved aligned model, a ``jax.export`` serving directory, an ONNX export (the
``.onnx`` file or the directory holding it and its ``alad.json``), or a work directory, resolved
through the case table (:func:`alad_train.cases.model_dir`): ``--case`` names a windowed case,
``--window`` its K.

Input: ``--text`` (split into words on whitespace), ``--words``, ``--file FILE`` or ``--file -``
(standard input) in plain text, CoNLL (the first column is the word; a file of words alone is fine)
or CoNLL-U. Output: ``conll`` (word<TAB>label, a blank line between sentences), ``conllu`` (the input's
own lines, comments and ids kept, with the predicted column filled) or ``jsonl`` (one
``{"words": [...], "labels": [...]}`` a line).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from alad_jax.data import readers, sources
from alad_jax.errors import AladError
from alad_jax.inference import onnx_export
from alad_jax.inference.predictor import Predictor, QAPredictor
from alad_jax.inference.saved_model import MODEL_JSON
from alad_jax.inference.serving import SERVING_JSON
from alad_train import cases
from alad_train.export import SAVED_MODEL, resolve_saved_model

OUTPUT_FORMATS = ("conll", "conllu", "jsonl")
STDIN = "-"


def resolve_model(path: str | Path, case: str = cases.DEFAULT.name, window: int | None = None) -> Path:
    """The saved model, serving directory or ``.onnx`` file that ``path`` names.

    ``path`` itself when it holds a saved model or a serving artifact or is an ``.onnx`` file; the
    ``.onnx`` file an ONNX export directory's ``alad.json`` names; for a work directory, the saved
    model of ``case`` (and ``window``) in it.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return path
    info_file = path / MODEL_JSON
    if info_file.is_file():
        info = _json_or_none(info_file)
        if isinstance(info, dict) and info.get("format") == onnx_export.FORMAT and isinstance(info.get("onnx"), str):
            return path / info["onnx"]  # an `alad export --format onnx` directory: its model file
    if (path / SERVING_JSON).is_file():
        return path
    return resolve_saved_model(path, case, window,
                               kinds=f"{SAVED_MODEL}, an export (.onnx with {MODEL_JSON}, or {SERVING_JSON})")


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the loader that reads it for real names the problem


def main(args) -> int:
    """Labels (or answers) to stdout or ``--out``; QA: one answer a line."""
    model = resolve_model(args.model, args.case, args.window)
    if model.suffix == ".onnx":  # an `alad export --format onnx` file, run by onnxruntime
        onnx_model = onnx_export.onnx_predictor(model)
        if args.question or args.context:
            print("\n".join(onnx_model.answer(args.question or [], args.context or [])))
            return 0
        return _label(onnx_model, args)
    if args.question or args.context:
        qa_model = QAPredictor.from_exported(model) if (model / SERVING_JSON).is_file() else QAPredictor.from_dir(model)
        print("\n".join(qa_model.answer(args.question or [], args.context or [])))
        return 0
    return _label(Predictor.open(model), args)


@dataclasses.dataclass(frozen=True)
class _Sentence:
    """A sentence to label; ``conllu`` keeps a CoNLL-U input's own lines for writing it back."""

    words: tuple[str, ...]
    conllu: readers.ConlluSentence | None = None


def _file_format(path: str, source: readers.Source, fmt: str | None) -> str:
    """--format, else from the suffix (.conllu, .conll); else CoNLL-U when the lines look like it, else text."""
    if fmt:
        return fmt
    by_suffix = {".conllu": "conllu", ".conll": "conll"}.get(Path(path).suffix.lower()) if path != STDIN else None
    if by_suffix:
        return by_suffix
    return "conllu" if sources.looks_like(source) == "conllu" else "text"


def _read_file(path: str, fmt: str | None) -> tuple[list[_Sentence], str]:
    """The sentences of ``--file`` (``-``: standard input) and the format they were read in."""
    if path != STDIN and not Path(path).is_file():
        raise AladError(f"--file {path}: no such file; give the path of a text, CoNLL or CoNLL-U file, or - for "
                        "standard input")
    source: readers.Source = readers.InMemoryFile("<stdin>", sys.stdin.buffer.read()) if path == STDIN else path
    fmt = _file_format(path, source, fmt)
    if fmt == "conllu":
        return [_Sentence(s.words, s) for s in sources.read_conllu_to_label(source)], fmt
    return [_Sentence(s.words) for s in sources.read_sentences(source, fmt)], fmt


def _inputs(args) -> tuple[list[_Sentence], str | None]:
    """Every sentence of --text, --words and --file, in that order, and --file's format."""
    sentences = []
    for i, text in enumerate(args.text or [], 1):
        if not text.split():
            raise AladError(f"--text number {i} is empty; give at least one word")
        sentences.append(_Sentence(tuple(text.split())))
    sentences += [_Sentence(tuple(words)) for words in args.words or []]
    file_format = None
    if args.file:
        from_file, file_format = _read_file(args.file, args.format)
        sentences += from_file
    return sentences, file_format


def _conllu_lines(sentence: _Sentence, labels: Sequence[str], column: str) -> list[str]:
    """CoNLL-U lines: the input's own with ``column`` filled, or new ones (id, form, the label, '_')."""
    if sentence.conllu is not None:
        return sentence.conllu.filled(labels, column)
    index = {"upos": 3, "xpos": 4}[column]
    lines = []
    for i, (word, label) in enumerate(zip(sentence.words, labels), 1):
        fields = [str(i), word] + ["_"] * 8
        fields[index] = label
        lines.append("\t".join(fields))
    return lines


def _write(sentences: Sequence[_Sentence], labels: Sequence[Sequence[str]], fmt: str, out, *,
                      column: str = "upos") -> None:
    """``conll``: word<TAB>label lines, a blank line between sentences; ``conllu``: every sentence's
    lines and a blank line after each; ``jsonl``: one JSON object a line."""
    for i, (sentence, sentence_labels) in enumerate(zip(sentences, labels)):
        if fmt == "jsonl":
            record = {"words": list(sentence.words), "labels": list(sentence_labels)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif fmt == "conllu":
            out.writelines(line + "\n" for line in _conllu_lines(sentence, sentence_labels, column))
            out.write("\n")
        else:
            if i:
                out.write("\n")
            out.writelines(f"{w}\t{label}\n" for w, label in zip(sentence.words, sentence_labels))


def _label(predictor, args) -> int:
    """Labels for --text / --words / --file, written as --output-format (default: by the suffix of --out,
    .conll/.conllu/.jsonl; else CoNLL-U for CoNLL-U input, else word<TAB>label)."""
    if not (args.text or args.words or args.file):
        raise AladError('alad predict: nothing to label; give --text "a sentence", --words W1 W2 ..., '
                        "--file FILE or --file - (standard input)")
    if not hasattr(predictor, "predict_words"):
        raise AladError(f"{args.model} is a QA model; ask it with --question Q --context C")
    sentences, file_format = _inputs(args)
    by_suffix = {f".{name}": name for name in OUTPUT_FORMATS}.get(Path(args.out).suffix.lower()) if args.out else None
    fmt = args.output_format or by_suffix or ("conllu" if file_format == "conllu" else "conll")
    labels = predictor.predict_words([list(s.words) for s in sentences])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            _write(sentences, labels, fmt, f, column=args.column)
        print(f"wrote {len(sentences)} sentences to {args.out}", file=sys.stderr)
    else:
        _write(sentences, labels, fmt, sys.stdout, column=args.column)
    return 0
