"""Adapter weights in the reference PyTorch layout, and parameter accounting.

The authors' adapter is ``fc1 = nn.Linear(K*Ds, 1280)``, ``fc2 =
nn.Linear(1280, Dt)``; its state dict in safetensors holds

    fc1.weight [1280, K*Ds]   fc1.bias [1280]   fc2.weight [Dt, 1280]   fc2.bias [Dt]

``nn.Linear`` stores ``weight`` as ``[out, in]``; an ``nnx.Linear`` kernel is
``[in, out]``, so every weight is transposed on the way in and out. The column
blocks of ``fc1.weight`` follow the window order: block k (columns
k*Ds:(k+1)*Ds) acts on S[t - r + k], oldest neighbour first, in both codes.
"""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alad_jax.adapter.modeling import AlignmentAdapter, _check_window
from alad_jax.errors import AladError
from alad_jax.param_count import count_params

_TENSORS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def export_reference(adapter: AlignmentAdapter, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``adapter`` as a reference-layout safetensors file (float32).

    The header metadata records ``window``, ``student_dim``, ``teacher_dim`` and
    ``hidden_dim`` (as strings, the format's rule) so import needs no hints.
    Returns the path written.
    """
    path = pathlib.Path(path)
    tensors = {
        "fc1.weight": np.asarray(adapter.fc1.kernel[...], np.float32).T,  # [in, out] -> [out, in]
        "fc1.bias": np.asarray(adapter.fc1.bias[...], np.float32),
        "fc2.weight": np.asarray(adapter.fc2.kernel[...], np.float32).T,
        "fc2.bias": np.asarray(adapter.fc2.bias[...], np.float32),
    }
    metadata = {
        "format": "alad-reference",
        "window": str(adapter.window),
        "student_dim": str(adapter.student_dim),
        "teacher_dim": str(adapter.teacher_dim),
        "hidden_dim": str(adapter.hidden_dim),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
    return path


def _read(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads the four adapter tensors (as float32 numpy) and the header metadata of ``path``."""
    if not path.is_file():
        raise AladError(f"adapter file {path} does not exist: pass the path of a .safetensors file")
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            names = set(f.keys())
            # Names first: a whole model checkpoint passed by mistake is rejected without loading it.
            missing = [name for name in _TENSORS if name not in names]
            extra = sorted(names - set(_TENSORS))
            if missing or extra:
                raise AladError(
                    f"{path}: expected exactly the tensors {', '.join(_TENSORS)}; "
                    + (f"missing {', '.join(missing)}; " if missing else "")
                    + (f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; " if extra else "")
                    + "save only the adapter's state dict (strip any prefix such as 'adapter.')"
                )
            tensors = {name: f.get_tensor(name) for name in _TENSORS}
    except SafetensorError as e:
        raise AladError(
            f"{path} is not a readable safetensors file ({e}); convert the adapter's state dict with "
            "safetensors.torch.save_file(model.state_dict(), path)"
        ) from None
    for name, value in tensors.items():
        if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
            raise AladError(f"{path}: tensor {name} has dtype {value.dtype}, expected a floating-point type")
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}, metadata


def _metadata_int(metadata: dict[str, str], key: str, path: pathlib.Path) -> int | None:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise AladError(f"{path}: metadata {key}={metadata[key]!r} is not an integer") from None


def _geometry(width: int, window: int | None, student_dim: int | None, path: pathlib.Path) -> tuple[int, int]:
    """Resolves (window, student_dim) from fc1's input width ``K*Ds`` and the hints."""
    if window is not None:
        try:
            _check_window(window)
        except AladError as e:
            raise AladError(f"{path}: {e}") from None
    if student_dim is not None and student_dim < 1:
        raise AladError(f"{path}: student_dim={student_dim} must be a positive integer")
    if window is not None and student_dim is not None:
        if window * student_dim != width:
            raise AladError(
                f"{path}: fc1.weight has input width {width}, but window={window} x student_dim={student_dim} "
                f"= {window * student_dim}; pass the window and student width the adapter was trained with"
            )
        return window, student_dim
    if window is not None:
        if width % window:
            raise AladError(f"{path}: fc1.weight input width {width} is not a multiple of window={window}")
        return window, width // window
    if student_dim is not None:
        if width % student_dim or (width // student_dim) % 2 == 0:
            raise AladError(
                f"{path}: fc1.weight input width {width} is not an odd multiple of student_dim={student_dim}"
            )
        return width // student_dim, student_dim
    candidates = [k for k in range(1, width + 1, 2) if width % k == 0]
    if len(candidates) > 1:
        options = ", ".join(f"K={k} x Ds={width // k}" for k in candidates[:6]) + (", ..." if len(candidates) > 6 else "")
        raise AladError(
            f"{path}: fc1.weight input width {width} is ambiguous ({options}); "
            "pass window= or student_dim= to import_reference"
        )
    return 1, width


def import_reference(
    path: str | os.PathLike,
    *,
    window: int | None = None,
    student_dim: int | None = None,
    impl: str = "auto",
    seed: int = 0,
) -> AlignmentAdapter:
    """Builds an :class:`AlignmentAdapter` from a reference-layout safetensors file.

    Hidden and teacher widths come from the tensor shapes. ``window`` and
    ``student_dim`` come from the arguments, else the file's metadata (written by
    :func:`export_reference`), else from ``fc1.weight``'s width ``K*Ds`` when
    only one odd K divides it; a given argument must agree with the metadata.
    Parameters are float32. ``seed`` only feeds the initialisation that the
    loaded weights then replace.
    """
    path = pathlib.Path(path)
    tensors, metadata = _read(path)
    for name in _TENSORS:
        expected_rank = 2 if name.endswith("weight") else 1
        if tensors[name].ndim != expected_rank:
            raise AladError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, expected rank {expected_rank}"
            )
    hidden_dim, width = tensors["fc1.weight"].shape
    teacher_dim = tensors["fc2.weight"].shape[0]
    expected = {"fc1.bias": (hidden_dim,), "fc2.weight": (teacher_dim, hidden_dim), "fc2.bias": (teacher_dim,)}
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise AladError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)} "
                f"(fc1.weight is {[hidden_dim, width]}, fc2.weight is [Dt, {hidden_dim}])"
            )

    for key, given in (("window", window), ("student_dim", student_dim)):
        stored = _metadata_int(metadata, key, path)
        if given is not None and stored is not None and given != stored:
            raise AladError(f"{path}: {key}={given} was passed but the file's metadata says {key}={stored}")
    window = window if window is not None else _metadata_int(metadata, "window", path)
    student_dim = student_dim if student_dim is not None else _metadata_int(metadata, "student_dim", path)
    window, student_dim = _geometry(width, window, student_dim, path)

    adapter = AlignmentAdapter(student_dim, teacher_dim, window, hidden_dim, impl=impl, rngs=nnx.Rngs(seed))
    adapter.fc1.kernel[...] = jnp.asarray(tensors["fc1.weight"].T)  # [out, in] -> [in, out]
    adapter.fc1.bias[...] = jnp.asarray(tensors["fc1.bias"])
    adapter.fc2.kernel[...] = jnp.asarray(tensors["fc2.weight"].T)
    adapter.fc2.bias[...] = jnp.asarray(tensors["fc2.bias"])
    return adapter


def adapter_param_report(
    adapter: nnx.Module, *, teacher_params: int | None = None, student_params: int | None = None
) -> dict:
    """Counts the adapter's parameters, and as a percentage (0-100) of the given models.

    Returns ``{"adapter": n, "pct_of_teacher": float | None, "pct_of_student": float | None}``
    (None where that model's count was not given).
    """
    n = count_params(adapter)

    def pct(total: int | None) -> float | None:
        if total is None:
            return None
        if total <= 0:
            raise AladError(f"parameter count {total} is not positive: pass the model's total parameter count")
        return 100.0 * n / total

    return {"adapter": n, "pct_of_teacher": pct(teacher_params), "pct_of_student": pct(student_params)}
