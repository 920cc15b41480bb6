"""The Alignment Adapter: module, losses and metric, reference-format interop."""

from alad_jax.adapter.interop import adapter_param_report, export_reference, import_reference
from alad_jax.adapter.losses import align_mse, cosine_loss, token_cosine, token_cosine_sum
from alad_jax.adapter.modeling import AlignmentAdapter, extract_windows

__all__ = [
    "AlignmentAdapter",
    "adapter_param_report",
    "align_mse",
    "cosine_loss",
    "export_reference",
    "extract_windows",
    "import_reference",
    "token_cosine",
    "token_cosine_sum",
]
