"""Your own fine-tuned teacher, used as it is: a token-classification checkpoint's encoder and head.

With ``teacher_finetuned = true`` the run trains no teacher (no stage 0). A
checkpoint in the Hugging Face token-classification layout (``bert.*`` encoder
tensors beside ``classifier.weight`` / ``classifier.bias``, ``config.json``
with ``id2label``, e.g. what ``BertForTokenClassification.save_pretrained``
writes) keeps its head (``teacher_classifier = "keep"``, or ``"auto"`` when the
checkpoint has one); the teacher row is then the checkpoint evaluated on the
run's dev and test data. Its labels must be the data's: the head's rows are
put in the data's label order by name, and a label one side has and the other
lacks is one error line. Without a classifier (or ``teacher_classifier = "train"``)
a new head trains on the frozen teacher (:data:`cases.TEACHER_HEAD`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_train.config import Config
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models.heads import TaggingHead
from alad_jax.param_count import count_params
from alad_train import cases
from alad_train.cases import Case

# A label of the data's vocabulary that occurs in none of its sentences and that the teacher lacks gets a
# row that never wins the argmax (UD's 17 UPOS ids, of which a corpus may use 16).
NEVER = -1e4


def _classifier(model_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight [labels, hidden], bias [labels]) of the checkpoint's token classifier, or None without one."""
    tensors, layout, _ = hub.read_checkpoint(model_dir)
    names = set(tensors)
    if layout == "torch" and {"classifier.weight", "classifier.bias"} <= names:
        return np.asarray(tensors["classifier.weight"], np.float32), np.asarray(tensors["classifier.bias"], np.float32)
    if layout == "flax" and {"classifier.kernel", "classifier.bias"} <= names:
        return np.asarray(tensors["classifier.kernel"], np.float32).T, np.asarray(tensors["classifier.bias"], np.float32)
    return None


def _id2label(model_dir: Path, count: int) -> list[str]:
    """The classifier's label names by output index, from ``config.json``'s ``id2label``."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label")
    where = model_dir / "config.json"
    if not isinstance(id2label, dict) or sorted(map(str, id2label)) != sorted(str(i) for i in range(count)):
        raise AladError(f"{where}: 'id2label' must map each of the classifier's {count} outputs (0..{count - 1}) "
                        f"to a label name, found {id2label!r}; add it, or set teacher_classifier = \"train\"")
    labels = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(count)]
    if any(name == f"LABEL_{i}" for i, name in enumerate(labels)):
        raise AladError(f"{where}: 'id2label' holds placeholder names (LABEL_0, ...); save the model with its real "
                        f"label names (id2label), or set teacher_classifier = \"train\"")
    return labels


def teacher_case(cfg: Config) -> Case:
    """The teacher row's case: stage 0 (a full fine-tune), a new head on a fine-tuned teacher, or the
    checkpoint as it is (its own classifier)."""
    if not cfg.teacher_finetuned:
        if cfg.teacher_classifier == "keep":
            raise AladError("config key 'teacher_classifier' is \"keep\" but teacher_finetuned = false (the run "
                            "fine-tunes the teacher); set teacher_finetuned = true to use the checkpoint as it is")
        return cases.TEACHER_FT
    if cfg.teacher_classifier == "train":
        return cases.TEACHER_HEAD
    model_dir = hub.resolve_model_dir(cfg.teacher, cache_dir=cfg.cache_dir or None)
    has_head = _classifier(model_dir) is not None
    if cfg.teacher_classifier == "keep" and (cfg.task == "qa" or not has_head):
        why = "task qa has no token classifier to keep" if cfg.task == "qa" else \
            f"{model_dir} has no classifier.weight / classifier.bias"
        raise AladError(f"config key 'teacher_classifier' is \"keep\" but {why}; "
                        "set teacher_classifier = \"train\" (a new head trains on the frozen teacher)")
    return cases.TEACHER_GIVEN if has_head and cfg.task != "qa" else cases.TEACHER_HEAD


def load_head(cfg: Config, labels: tuple[str, ...], used: set[str], width: int) -> tuple[TaggingHead, str]:
    """The teacher checkpoint's classifier as a :class:`TaggingHead` over the data's ``labels``, and a note.

    ``used``: the labels the data's sentences carry. Each of the head's rows is
    placed at its label's position in ``labels`` (by name); a label of ``used``
    that the head lacks, or a head label outside ``labels``, is an error.
    """
    model_dir = hub.resolve_model_dir(cfg.teacher, cache_dir=cfg.cache_dir or None)
    weight, bias = _classifier(model_dir)
    names = _id2label(model_dir, weight.shape[0])
    if weight.shape[1] != width:
        raise AladError(f"{model_dir}: classifier.weight is {list(weight.shape)} but the encoder's hidden size is "
                        f"{width}; the checkpoint's head does not belong to its encoder")
    missing = sorted(used - set(names))
    extra = sorted(set(names) - set(labels))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)} (in the data, not in the teacher's head)"] if missing else []) + \
                ([f"extra {', '.join(extra)} (in the teacher's head, not in the data's labels)"] if extra else [])
        raise AladError(f"teacher {cfg.teacher}: its classifier's labels (config.json id2label) differ from the "
                        f"data's: {'; '.join(parts)}; use a teacher fine-tuned on these labels, or set "
                        f"teacher_classifier = \"train\" to train a new head on it")
    index = {name: i for i, name in enumerate(names)}
    kernel = np.zeros((width, len(labels)), np.float32)
    full_bias = np.full(len(labels), NEVER, np.float32)
    for j, label in enumerate(labels):
        if label in index:
            kernel[:, j], full_bias[j] = weight[index[label]], bias[index[label]]
    head = TaggingHead(width, len(labels), cfg.head_dropout, rngs=nnx.Rngs(0))
    head.classifier.kernel[...] = jnp.asarray(kernel)
    head.classifier.bias[...] = jnp.asarray(full_bias)
    reordered = names != [label for label in labels if label in index]
    absent = [label for label in labels if label not in index]
    note = (f"teacher: {cfg.teacher} used as it is (its own classifier over {len(names)} labels"
            + (", rows put in the data's label order" if reordered else "")
            + (f"; {', '.join(absent)} never predicted, as the data never uses them" if absent else "")
            + "); no stage 0")
    return head, note


def score_as_is(name: str, model: nnx.Module, task, strategy) -> dict:
    """A results row for a model that trains nothing: its dev and test scores (batched by ``strategy``,
    :mod:`alad_train.batches`), no history."""
    dev, dev_metrics = task.evaluate(model, "dev", strategy)
    test, test_metrics = task.evaluate(model, "test", strategy)
    return {
        "name": name, "dev": dev, "test": test,
        "params": {"total": count_params(model), "trainable": 0, "adapter": 0}, "cosine": None,
        "dev_metrics": dev_metrics, "test_metrics": test_metrics, "train_seconds": 0.0, "steps": 0,
        "tokens_per_s": 0.0, "epochs_run": 0, "best_epoch": 0, "stopped": "given", "padding": None,
        "positions": 0, "history": [],
    }
