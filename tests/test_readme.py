"""The README's Python blocks run as written, against a small work directory laid out as `alad run` leaves it.

The models are tiny and random (the real MiniLM tokenizer, real file layouts):
what is proved is that the snippet's calls, paths and shapes are right, so it
cannot rot again.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.data.tagging import UPOS_LABELS
from alad_jax.errors import AladError
from alad_jax.inference import save_aligned_model
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "jax2onnx"))
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.S | re.M)


def _encoder(hidden: int, seed: int):
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=hidden, num_layers=1, num_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=64)
    return build_encoder(config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A directory holding runs/default with what the snippet reads: teacher (H24), student (H16), adapters, a saved model."""
    root = tmp_path_factory.mktemp("readme")
    workdir = root / "runs" / "default"
    tokenizer = hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    save_aligned_model(workdir / "models" / "teacher", encoder=_encoder(24, 0), adapter=None,
                       head=TaggingHead(24, len(UPOS_LABELS), rngs=nnx.Rngs(4)), labels=UPOS_LABELS, task="pos",
                       max_length=32, stride=8, tokenizer=tokenizer, meta={"teacher": "t", "student": "t"})
    student = _encoder(16, 1)
    hub.save_encoder(student, workdir / "models" / "student", tokenizer=tokenizer)
    adapter = AlignmentAdapter(16, 24, 3, 32, rngs=nnx.Rngs(2))
    export_reference(adapter, workdir / "adapters" / "w3_continual.safetensors")
    save_aligned_model(workdir / "models" / "alad_w3_frozen", encoder=student, adapter=adapter,
                       head=TaggingHead(24, len(UPOS_LABELS), rngs=nnx.Rngs(3)), labels=UPOS_LABELS, task="pos",
                       max_length=32, stride=8, tokenizer=tokenizer, meta={"teacher": "t", "student": "s"})
    if HAS_ONNX:  # what `alad export --model runs/default --format onnx --out served/frozen.onnx` writes
        (root / "served").mkdir()
        from alad_jax.inference.onnx_export import export_onnx

        export_onnx(workdir / "models" / "alad_w3_frozen", root / "served" / "frozen.onnx")
    return root


def test_readme_has_a_python_block():
    assert PYTHON_BLOCKS and any("import_reference" in block for block in PYTHON_BLOCKS)


@pytest.mark.slow  # a fresh interpreter imports jax, flax and transformers
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs_as_written(run_root, tmp_path, index):
    if "onnxruntime" in PYTHON_BLOCKS[index] and not HAS_ONNX:
        pytest.skip("the onnx extra is not installed (bash scripts/setup.sh onnx)")
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(PYTHON_BLOCKS[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(script)], cwd=run_root, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if "token cosine to the teacher" in PYTHON_BLOCKS[index]:
        cosine_line, labels_line = out.stdout.strip().splitlines()[-2:]
        assert -1.0 <= float(cosine_line.rsplit(":", 1)[1]) <= 1.0
        (labels,) = _printed_lists(labels_line)
        assert len(labels) == 6 and set(labels) <= set(UPOS_LABELS)  # one label per word of the sentence
    if "onnxruntime" in PYTHON_BLOCKS[index]:
        first, second = (_printed_lists(line)[0] for line in out.stdout.strip().splitlines()[-2:])
        assert len(first) == 6 and len(second) == 3 and set(first + second) <= set(UPOS_LABELS)


def _printed_lists(text: str) -> list[list[str]]:
    """``[['DET', 'NOUN']]`` printed by Python -> the nested list, parsed without eval."""
    return [re.findall(r"'([^']*)'", inner) for inner in re.findall(r"\[([^\[\]]*)\]", text)]


def test_an_authors_adapter_file_needs_the_argument_the_readme_names(tmp_path):
    """The reference code saves a bare state dict: fc1 [1280, 3*384] is ambiguous without window= or student_dim=."""
    rng = np.random.default_rng(0)
    tensors = {"fc1.weight": rng.normal(size=(1280, 1152)).astype(np.float32), "fc1.bias": np.zeros(1280, np.float32),
               "fc2.weight": rng.normal(size=(384, 1280)).astype(np.float32), "fc2.bias": np.zeros(384, np.float32)}
    path = tmp_path / "theirs.safetensors"
    save_file(tensors, str(path))  # no metadata, as torch's save_file(state_dict) writes it
    with pytest.raises(AladError, match=r"input width 1152 is ambiguous .*K=3 x Ds=384.*K=9 x Ds=128.*window="):
        import_reference(path)
    assert "import_reference(path, window=3)" in README and "import_reference(path, student_dim=384)" in README
    for adapter in (import_reference(path, window=3), import_reference(path, student_dim=384)):
        assert (adapter.window, adapter.student_dim, adapter.teacher_dim) == (3, 384, 384)
