"""BERT-family encoders (BERT, DistilBERT, MPNet; Flax NNX), task heads, and HF checkpoint loading/saving.

modeling.py holds the modules, params.py the HF <-> nnx name tables, hub.py
finds/reads/writes checkpoints, split_archive.py extracts checkpoints shipped
as split zips, compress.py makes students by layer dropping.
"""

from alad_jax.models.compress import truncate
from alad_jax.models.config import EncoderConfig
from alad_jax.models.heads import QAHead, TaggingHead
from alad_jax.models.hub import (
    PACKAGED_ARCHIVES,
    PACKAGED_MODELS,
    load_encoder,
    load_tokenizer,
    resolve_model_dir,
    save_encoder,
)
from alad_jax.models.modeling import BertEncoder, DistilBertEncoder, EncoderOutput, MPNetEncoder, build_encoder
from alad_jax.param_count import count_params

__all__ = [
    "PACKAGED_ARCHIVES",
    "PACKAGED_MODELS",
    "BertEncoder",
    "DistilBertEncoder",
    "EncoderConfig",
    "EncoderOutput",
    "MPNetEncoder",
    "QAHead",
    "TaggingHead",
    "build_encoder",
    "count_params",
    "load_encoder",
    "load_tokenizer",
    "resolve_model_dir",
    "save_encoder",
    "truncate",
]
