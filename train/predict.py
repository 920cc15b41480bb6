"""``alad predict``: label text (or answer questions) with a saved model, an exported artifact or a run.

A work directory (``--model runs/default``) is resolved through the case table
(:func:`alad_train.cases.model_dir`): ``--case`` names a windowed case, ``--window`` its K.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from alad_jax.errors import AladError
from alad_jax.inference.predictor import Predictor, QAPredictor
from alad_jax.inference.saved_model import MODEL_JSON
from alad_train import cases


def resolve_model(path: str | Path, case: str = cases.DEFAULT.name, window: int | None = None) -> Path:
    """``path`` itself when it holds a saved model or a serving artifact; for a work directory, the
    saved model of ``case`` (and ``window``) in it."""
    from alad_jax.inference.serving import SERVING_JSON

    path = Path(path)
    if (path / MODEL_JSON).is_file() or (path / SERVING_JSON).is_file():
        return path
    if (path / "models").is_dir():
        return cases.model_dir(path, case, window, marker=MODEL_JSON)
    raise AladError(
        f"--model {path}: not a saved aligned model ({MODEL_JSON}), a serving artifact ({SERVING_JSON}) "
        "or an alad run work directory (models/); check the path"
    )


def _write(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], out) -> None:
    for i, (words, labels) in enumerate(pairs):
        if i:
            out.write("\n")
        out.writelines(f"{w}\t{label}\n" for w, label in zip(words, labels))


def _file_format(path: str, fmt: str | None) -> str:
    """--format, else from the suffix: .conllu, .conll, anything else plain text."""
    if fmt:
        return fmt
    return {".conllu": "conllu", ".conll": "conll"}.get(Path(path).suffix.lower(), "text")


def main(args) -> int:
    """word<TAB>label lines, a blank line between sentences (stdout or --out); QA: one answer a line."""
    from alad_jax.inference.serving import SERVING_JSON

    if Path(args.model).suffix == ".onnx":  # an `alad export --format onnx` file, run by onnxruntime
        from alad_jax.inference.onnx_export import onnx_predictor

        onnx_model = onnx_predictor(args.model)
        if args.question or args.context:
            print("\n".join(onnx_model.answer(args.question or [], args.context or [])))
            return 0
        return _label(onnx_model, args)
    model = resolve_model(args.model, args.case, args.window)
    if args.question or args.context:
        qa_model = QAPredictor.from_exported(model) if (model / SERVING_JSON).is_file() else QAPredictor.from_dir(model)
        print("\n".join(qa_model.answer(args.question or [], args.context or [])))
        return 0
    return _label(Predictor.open(model), args)


def _label(predictor, args) -> int:
    """word<TAB>label lines for --text / --words / --file."""
    if not (args.text or args.words or args.file):
        raise AladError('alad predict: nothing to label; give --text "a sentence", --words W1 W2 ... or --file FILE')
    if not hasattr(predictor, "predict_words"):
        raise AladError(f"{args.model} is a QA model; ask it with --question Q --context C")
    pairs: list[tuple[list[str], list[str]]] = []
    if args.text:
        pairs += [(t.split(), labels) for t, labels in zip(args.text, predictor.predict_text(args.text))]
    if args.words:
        pairs += list(zip(args.words, predictor.predict_words(args.words)))
    if args.file:
        pairs += predictor.predict_file(args.file, _file_format(args.file, args.format))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            _write(pairs, f)
    else:
        _write(pairs, sys.stdout)
    return 0
