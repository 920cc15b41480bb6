"""Inference: saved aligned models, the jitted word-level predictor, and the serving export.

- :mod:`~alad_jax.inference.saved_model`: ``save_aligned_model`` / ``load_aligned_model``
  (the one directory format every run hands over and serves);
- :mod:`~alad_jax.inference.predictor`: :class:`Predictor` (words in, labels out, bucketed
  shapes) and :class:`QAPredictor`;
- :mod:`~alad_jax.inference.export`: ``export_predictor`` / ``export_model`` (write a
  ``jax.export`` StableHLO artifact);
- :mod:`~alad_jax.inference.serving`: ``load_exported`` (read it back with jax alone).

Names resolve on first use, so ``import alad_jax.inference.serving`` (a server
that only runs the artifact) does not import flax or the model code.
"""

import importlib

_EXPORTS = {
    "CompiledTagger": "predictor",
    "LoadedModel": "saved_model",
    "Predictor": "predictor",
    "QAPredictor": "predictor",
    "load_aligned_model": "saved_model",
    "load_info": "saved_model",
    "save_aligned_model": "saved_model",
    "ExportedTagger": "serving",
    "export_model": "export",
    "export_predictor": "export",
    "load_exported": "serving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
