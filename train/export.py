"""``alad export``: a saved model (or a work directory's case) as one ONNX file or a jax.export artifact."""

from __future__ import annotations

from pathlib import Path

from alad_jax.errors import AladError
from alad_jax.inference import export, onnx_export
from alad_jax.inference.saved_model import MODEL_JSON
from alad_train import cases


SAVED_MODEL = f"a saved aligned model ({MODEL_JSON})"


def resolve_saved_model(model: str | Path, case: str, window: int | None, *, kinds: str = SAVED_MODEL) -> Path:
    """A saved aligned model directory, or the ``case`` model of a work directory (through the case table).

    The one resolution of ``--model`` for ``alad export`` and ``alad predict``; ``kinds`` names what else
    the caller accepts, for the error lines."""
    path = Path(model)
    if (path / MODEL_JSON).is_file():
        return path
    if not path.exists():
        raise AladError(f"--model {path}: no such directory; pass {kinds} or an alad run work directory")
    if not (path / "models").is_dir():
        raise AladError(f"--model {path}: not {kinds} or an alad run work directory (models/); check the path")
    return cases.model_dir(path, case, window, marker=MODEL_JSON)


def main(args) -> int:
    """``alad export --model DIR_OR_WORKDIR [--case frozen] [--window K] --format onnx|jax --out PATH``."""
    out = Path(args.out)
    model_dir = resolve_saved_model(args.model, args.case, args.window)
    if args.format == "onnx":
        onnx_export.export_onnx(model_dir, out)
        print(f"wrote {out} (+ {onnx_export.INFO_JSON} and the tokenizer in {out.parent})")
        return 0
    onnx_export.check_out(out, None)
    export.export_model(model_dir, out)
    print(f"wrote {out} (jax.export serving artifact)")
    return 0
