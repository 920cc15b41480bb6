"""Task metrics: tagging accuracy and entity F1, SQuAD 2.0 exact match and F1."""

from alad_jax.metrics.squad import exact_match, f1, normalize_answer, squad_v2_scores
from alad_jax.metrics.tagging import accuracy, entity_f1, tagging_scores

__all__ = [
    "accuracy",
    "entity_f1",
    "exact_match",
    "f1",
    "normalize_answer",
    "squad_v2_scores",
    "tagging_scores",
]
