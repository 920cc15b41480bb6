"""What the stages train: parameter filters, pure losses, and the alignment model.

The task model itself (encoder -> optional AlAd -> head) and its jitted
forwards live in the library (:mod:`alad_jax.models.task_model`); which parts
move in a stage is the loop's parameter filter (each case's ``trainable`` in
:mod:`alad_train.cases`).
``AlignModel`` is student -> AlAd against a frozen teacher (stages 1-2
without the feature cache).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from alad_jax.adapter import (AlignmentAdapter, align_mse, align_sq_sum, token_cosine_sum, word_align_mse,
                              word_align_sq_sum, word_cosine_sum)
from alad_jax.data.tagging import IGNORE_INDEX
from alad_jax.models.task_model import TaskModel


def new_adapter(cfg, student_dim: int, teacher_dim: int, window: int, rngs: nnx.Rngs,
                impl: str | None = None) -> AlignmentAdapter:
    """A freshly initialised AlAd of ``window`` as the config shapes it (``adapter_hidden``, ``adapter_impl``
    unless ``impl`` is given): the one constructor call of the stages, the cases and ``alad bench``."""
    return AlignmentAdapter(student_dim, teacher_dim, window, cfg.adapter_hidden,
                            impl=impl or cfg.adapter_impl, rngs=rngs)


class AlignModel(nnx.Module):
    """student -> AlAd, aligned to a frozen teacher's last hidden states."""

    def __init__(self, student: nnx.Module, teacher: nnx.Module, adapter: AlignmentAdapter):
        self.student = student
        self.teacher = teacher
        self.adapter = adapter

    def __call__(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(AlAd(student), teacher) hidden states, both [batch, seq, Dt].

        A packed batch (``segment_ids``, ``position_ids``: several sentences per row) is read as such
        by both encoders (block-diagonal attention, positions per sentence)."""
        args = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        packed = {k: batch[k] for k in ("segment_ids", "position_ids") if k in batch}
        student = jax.lax.stop_gradient(self.student(*args, **packed).last_hidden_state)
        if "teacher_input_ids" in batch:  # a teacher with its own tokenizer (alad_jax.data.teacher_inputs)
            args, packed = (batch["teacher_input_ids"], batch.get("teacher_attention_mask", batch["attention_mask"]),
                            None), {}
        teacher = jax.lax.stop_gradient(self.teacher(*args, **packed).last_hidden_state)
        return self.adapter(student, batch["attention_mask"]), teacher


def _word_args(pred: jax.Array, target: jax.Array, batch: dict) -> tuple | None:
    """Word level (the batch carries word ids): the arguments of the word losses; token level: None.

    ``target`` is the teacher on its own tokens (``teacher_word_ids``) or, from
    the cache, word means at the student's tokens (``target_word_ids``).
    """
    if "word_ids" not in batch:
        return None
    target_ids = batch["teacher_word_ids"] if "teacher_word_ids" in batch else batch["target_word_ids"]
    return pred, target, batch["word_ids"], target_ids, pred.shape[1]


def alignment_objective(pred: jax.Array, target: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Alignment MSE (per token, or per word at word level) and the mean cosine."""
    words = _word_args(pred, target, batch)
    if words is None:
        mask = batch["attention_mask"]
        total, count = token_cosine_sum(pred, target, mask)
        return align_mse(pred, target, mask), {"cosine": total / jnp.maximum(count, 1)}
    total, count = word_cosine_sum(*words)
    return word_align_mse(*words), {"cosine": total / jnp.maximum(count, 1)}


def alignment_sums(pred: jax.Array, target: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(squared-distance sum, cosine sum, count) over tokens, or over words at word level."""
    words = _word_args(pred, target, batch)
    if words is None:
        mask = batch["attention_mask"]
        sq, _ = align_sq_sum(pred, target, mask)
        cos, count = token_cosine_sum(pred, target, mask)
        return sq, cos, count
    sq, _ = word_align_sq_sum(*words)
    cos, count = word_cosine_sum(*words)
    return sq, cos, count


def tagging_loss(model: TaskModel, batch: dict, key: jax.Array):
    """Token cross-entropy on labelled sub-words (first sub-word of each word), mean over them."""
    logits = model(batch, deterministic=False, key=key)
    labels = batch["labels"]
    valid = labels != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    count = jnp.maximum(valid.sum(), 1)
    return (ce * valid).sum() / count, {"labelled_tokens": valid.sum()}


def qa_loss(model: TaskModel, batch: dict, key: jax.Array):
    """Mean of start and end cross-entropies over real rows (padding rows carry feature_index -1)."""
    start_logits, end_logits = model(batch, deterministic=False, key=key)
    mask = batch["attention_mask"].astype(bool)
    neg = jnp.finfo(jnp.float32).min
    start_logits = jnp.where(mask, start_logits.astype(jnp.float32), neg)
    end_logits = jnp.where(mask, end_logits.astype(jnp.float32), neg)
    real = (batch["feature_index"] >= 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels
    per_row = 0.5 * (ce(start_logits, batch["start_positions"]) + ce(end_logits, batch["end_positions"]))
    return (per_row * real).sum() / jnp.maximum(real.sum(), 1.0), {}


def align_loss(model: AlignModel, batch: dict, key: jax.Array):
    """Alignment MSE (reference scale: per-token squared distance) from raw tokens."""
    del key
    pred, target = model(batch)
    return alignment_objective(pred, target, batch)


def cached_align_loss(adapter: AlignmentAdapter, batch: dict, key: jax.Array):
    """Alignment MSE from cached student/teacher hidden states (bf16 on disk, f32 here)."""
    del key
    mask = batch["attention_mask"]
    pred = adapter(batch["student_hidden"].astype(jnp.float32), mask)
    target = batch["teacher_hidden"].astype(jnp.float32)
    return alignment_objective(pred, target, batch)


@functools.partial(jax.jit, static_argnums=0)
def align_eval(graphdef, state, batch):
    """Masked squared-error sum, cosine sum and token count for one alignment batch."""
    model = nnx.merge(graphdef, state)
    mask = batch["attention_mask"]
    if isinstance(model, AlignModel):
        pred, target = model(batch)
    else:
        pred = model(batch["student_hidden"].astype(jnp.float32), mask)
        target = batch["teacher_hidden"].astype(jnp.float32)
    return alignment_sums(pred, target, batch)
