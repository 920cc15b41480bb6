"""The saved aligned model: one directory, loadable without the training config.

    student/              the encoder in HF layout (config.json, model.safetensors, tokenizer files);
                          for a run's teacher row, the fine-tuned teacher
    adapter.safetensors   AlAd in the reference PyTorch layout (fc1/fc2 weight [out, in]); absent
                          for a model without adapter (a student baseline, the teacher)
    head.safetensors      the task head in PyTorch layout, as transformers' *ForTokenClassification
                          names it: classifier.weight [num_labels, D], classifier.bias [num_labels]
                          (QA: qa_outputs.weight [2, D], qa_outputs.bias [2])
    alad.json             task, labels, window, max_length, stride, teacher/student names, meta

Every hand-over between ``alad run``'s stages and every served model uses this format.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models.heads import QAHead, TaggingHead
from alad_jax.models.task_model import TaskModel

FORMAT = "alad-aligned-model"
VERSION = 1
MODEL_JSON = "alad.json"
STUDENT_DIR = "student"
ADAPTER_FILE = "adapter.safetensors"
HEAD_FILE = "head.safetensors"
TASKS = ("pos", "ner", "qa")


def _head_tensors(head: nnx.Module) -> tuple[str, dict[str, np.ndarray]]:
    """(PyTorch name prefix, tensors in nn.Linear layout) of a tagging or QA head."""
    name = "classifier" if isinstance(head, TaggingHead) else "qa_outputs"
    linear = getattr(head, name)
    return name, {
        f"{name}.weight": np.ascontiguousarray(np.asarray(linear.kernel[...], np.float32).T),  # [in, out] -> [out, in]
        f"{name}.bias": np.asarray(linear.bias[...], np.float32),
    }


def save_aligned_model(
    out_dir: str | os.PathLike,
    *,
    encoder: nnx.Module,
    adapter: AlignmentAdapter | None,
    head: nnx.Module,
    labels: Sequence[str],
    task: str,
    max_length: int,
    tokenizer,
    stride: int = 32,
    meta: dict | None = None,
) -> Path:
    """Writes encoder (+ AlAd) + head as one directory (layout in the module docstring).

    ``meta`` is any JSON-able dict; its ``teacher`` and ``student`` entries
    (model names) are also lifted to the top of ``alad.json``. The directory is
    written next to ``out_dir`` and renamed into place, so a reader never sees
    half a model; an existing ``out_dir`` is replaced only if it is a previous
    saved model (holds ``alad.json``) or empty.
    """
    out = Path(out_dir)
    if task not in TASKS:
        raise AladError(f"save_aligned_model: task {task!r} is unknown; use one of {', '.join(TASKS)}")
    if not isinstance(head, (TaggingHead, QAHead)):
        raise AladError(f"save_aligned_model: head is a {type(head).__name__}; pass a TaggingHead or QAHead")
    if (task == "qa") != isinstance(head, QAHead):
        raise AladError(f"save_aligned_model: task {task!r} does not match a {type(head).__name__}")
    width = adapter.teacher_dim if adapter is not None else encoder.config.hidden_size
    if head.in_features != width:
        raise AladError(f"save_aligned_model: head takes width {head.in_features} but the model feeds it {width}")
    if adapter is not None and adapter.student_dim != encoder.config.hidden_size:
        raise AladError(
            f"save_aligned_model: adapter expects student width {adapter.student_dim}, "
            f"the encoder has {encoder.config.hidden_size}"
        )
    head_name, head_tensors = _head_tensors(head)
    if isinstance(head, TaggingHead) and head_tensors[f"{head_name}.bias"].shape[0] != len(labels):
        raise AladError(
            f"save_aligned_model: the head has {head_tensors[f'{head_name}.bias'].shape[0]} outputs "
            f"but {len(labels)} labels were given"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MODEL_JSON).is_file())):
        raise AladError(f"{out} exists and is not a saved aligned model (no {MODEL_JSON}); choose a new directory")

    meta = dict(meta or {})
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted save of this same model
    tmp.mkdir(parents=True)
    hub.save_encoder(encoder, tmp / STUDENT_DIR, tokenizer=tokenizer)
    if adapter is not None:
        export_reference(adapter, tmp / ADAPTER_FILE)
    save_file(head_tensors, str(tmp / HEAD_FILE), metadata={"format": "pt"})
    info = {
        "format": FORMAT,
        "version": VERSION,
        "task": task,
        "labels": list(labels),
        "window": adapter.window if adapter is not None else None,
        "max_length": int(max_length),
        "stride": int(stride),
        "student_dim": encoder.config.hidden_size,
        "output_dim": width,
        "head": head_name,
        "teacher": meta.get("teacher"),
        "student": meta.get("student"),
        "meta": meta,
    }
    (tmp / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class LoadedModel(NamedTuple):
    """A saved aligned model in memory: the TaskModel, its label names, and ``alad.json``."""

    model: TaskModel
    labels: tuple[str, ...]
    info: dict


def load_info(path: str | os.PathLike) -> dict:
    """A saved aligned model's ``alad.json``, checked (the model itself is not loaded)."""
    return _read_info(Path(path))


def _read_info(path: Path) -> dict:
    file = path / MODEL_JSON
    if not file.is_file():
        raise AladError(f"{path} is not a saved aligned model ({MODEL_JSON} missing); pass a directory save_aligned_model wrote")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AladError(f"{file}:{e.lineno}: invalid JSON ({e.msg}); the saved model is damaged, save it again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise AladError(f"{file}: not an {FORMAT} file (format={info.get('format') if isinstance(info, dict) else None!r})")
    if info.get("version") != VERSION:
        raise AladError(f"{file}: version {info.get('version')!r} is not supported (this alad reads version {VERSION})")
    for key in ("task", "labels", "window", "max_length", "stride", "head"):
        if key not in info:
            raise AladError(f"{file}: key {key!r} is missing; the saved model is damaged, save it again")
    if info["task"] not in TASKS:
        raise AladError(f"{file}: key 'task' is {info['task']!r}; expected one of {', '.join(TASKS)}")
    return info


def _load_head(file: Path, info: dict, width: int) -> nnx.Module:
    name = info["head"]
    try:
        with safe_open(str(file), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, FileNotFoundError) as e:
        raise AladError(f"{file}: cannot read the head ({e}); the saved model is damaged, save it again") from None
    weight, bias = tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias")
    if weight is None or bias is None:
        raise AladError(f"{file}: expected tensors {name}.weight and {name}.bias, found {sorted(tensors)}")
    outputs = 2 if info["task"] == "qa" else len(info["labels"])
    if weight.shape != (outputs, width) or bias.shape != (outputs,):
        raise AladError(
            f"{file}: {name}.weight is {list(weight.shape)}, expected {[outputs, width]} "
            f"({outputs} outputs on width {width})"
        )
    rngs = nnx.Rngs(0)  # initial values are replaced below
    head = QAHead(width, rngs=rngs) if info["task"] == "qa" else TaggingHead(width, outputs, rngs=rngs)
    linear = getattr(head, name)
    linear.kernel[...] = jnp.asarray(weight.T)  # [out, in] -> [in, out]
    linear.bias[...] = jnp.asarray(bias)
    return head


def load_aligned_model(path: str | os.PathLike, *, impl: str = "auto") -> LoadedModel:
    """Reads a directory written by :func:`save_aligned_model` (params float32)."""
    path = Path(path)
    info = _read_info(path)
    encoder, config = hub.load_encoder(str(path / STUDENT_DIR))
    adapter = None
    if info["window"] is not None:
        adapter = import_reference(path / ADAPTER_FILE, window=info["window"], impl=impl)
        if adapter.student_dim != config.hidden_size:
            raise AladError(
                f"{path / ADAPTER_FILE}: adapter takes student width {adapter.student_dim}, "
                f"but {path / STUDENT_DIR} has hidden size {config.hidden_size}"
            )
    width = adapter.teacher_dim if adapter is not None else config.hidden_size
    head = _load_head(path / HEAD_FILE, info, width)
    return LoadedModel(TaskModel(encoder, head, adapter), tuple(info["labels"]), info)

