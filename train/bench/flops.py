"""Matmul FLOP counts per token: what every MFU in ``alad bench`` divides by a measured rate."""

from __future__ import annotations


def encoder_flops_per_token(config, seq: int) -> float:
    """Forward matmul FLOPs per token of a BERT-family encoder at sequence length ``seq``."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h  # projections + MLP, scores + context
    return float(config.num_layers * per_layer)


def adapter_flops_per_token(window: int, student_dim: int, hidden: int, teacher_dim: int, *, train: bool) -> float:
    """Matmul FLOPs per token of AlAd: forward, or forward + backward of a step on frozen inputs.

    Backward computes both weight gradients and the gradient into fc2's input;
    none flows into the (frozen, data) student states, so fc1 has no input gradient.
    """
    fc1, fc2 = window * student_dim * hidden, hidden * teacher_dim
    forward = 2 * (fc1 + fc2)
    return float(forward + (2 * fc1 + 4 * fc2 if train else 0))


def finetune_flops_per_token(encoder_forward: float, head_in: int, num_labels: int, adapter_forward: float = 0.0) -> float:
    """Matmul FLOPs per token of one full fine-tune step: 3 x forward.

    Every weight trains and every activation needs its gradient (all layers
    train), so backward runs two matmuls per forward one (input and weight
    gradient); the embedding lookup is a gather, not a matmul.
    """
    return 3.0 * (encoder_forward + adapter_forward + 2 * head_in * num_labels)
