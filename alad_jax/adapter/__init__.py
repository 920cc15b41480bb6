"""The Alignment Adapter: module, losses and metric, reference-format interop."""

from alad_jax.adapter.interop import adapter_param_report, export_reference, import_reference
from alad_jax.adapter.losses import (
    align_mse,
    align_sq_sum,
    cosine_loss,
    pool_words,
    token_cosine,
    token_cosine_sum,
    word_align_mse,
    word_align_sq_sum,
    word_cosine,
    word_cosine_sum,
)
from alad_jax.adapter.modeling import AlignmentAdapter, extract_windows

__all__ = [
    "AlignmentAdapter",
    "adapter_param_report",
    "align_mse",
    "align_sq_sum",
    "cosine_loss",
    "export_reference",
    "extract_windows",
    "import_reference",
    "pool_words",
    "token_cosine",
    "token_cosine_sum",
    "word_align_mse",
    "word_align_sq_sum",
    "word_cosine",
    "word_cosine_sum",
]
