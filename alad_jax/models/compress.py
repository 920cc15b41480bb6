"""Compression recipes that make a student checkpoint from a larger encoder.

`truncate` is layer dropping: keep the embeddings and the first N layers, the
way DistilBERT initialised its student from BERT. The output is a plain HF
directory (config.json, model.safetensors, tokenizer files) that our loader
and transformers' BertModel / DistilBertModel both load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil

from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models import params as params_lib

logger = logging.getLogger(__name__)

# Written into every truncate output, so a re-run may overwrite its own earlier result.
MARKER = "alad_compress.json"


def truncate(source: str, num_layers: int, out_dir: str | pathlib.Path, *, cache_dir=None) -> pathlib.Path:
    """Writes the first `num_layers` layers of `source` (local dir or Hub id) to `out_dir`.

    Raises:
      AladError: num_layers < 1 or more than the source has; out_dir exists, is
        not empty and is not a previous truncate output.
    """
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise AladError(
            f"output directory {out} exists and is not a previous truncate output (no {MARKER}); "
            "choose a new or empty directory"
        )
    if num_layers < 1:
        raise AladError(f"truncate: --layers must be at least 1, got {num_layers}")
    config, loaded, source_dir = hub.load_params(source, cache_dir=cache_dir)
    if num_layers > config.num_layers:
        raise AladError(
            f"truncate: --layers {num_layers} exceeds the {config.num_layers} layers of {source}; "
            f"choose 1..{config.num_layers}"
        )

    student_config = dataclasses.replace(config, num_layers=num_layers)
    kept = {
        path: array for path, array in loaded.params.items()
        if path[0] != "layers" or path[1] < num_layers
    }
    student = params_lib.create_encoder(student_config, kept)

    if out.exists():
        shutil.rmtree(out)  # a previous truncate output (checked above)
    hub.save_encoder(student, out)
    copied = [name for name in hub.TOKENIZER_FILES if (source_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(source_dir / name, out / name)
    if not copied:
        logger.warning("truncate: %s has no tokenizer files; %s has weights and config only", source_dir, out)
    (out / MARKER).write_text(
        json.dumps({"recipe": "truncate", "source": source, "num_layers": num_layers,
                    "source_layers": config.num_layers}, indent=2) + "\n"
    )
    return out
