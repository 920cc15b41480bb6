"""The jax.export serving artifact: same outputs as the in-process predictor, symbolic batch, no model code."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_jax.errors import AladError
from alad_jax.inference import Predictor, export_predictor, load_exported, save_aligned_model
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub
from alad_jax.models.task_model import TaskModel

# jax.export (de)serialization is written with flatbuffers, a dependency of this project.
pytest.importorskip("flatbuffers")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ("B-LOC", "I-LOC", "O")
BUCKETS = (16, 32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """An in-process predictor over a tiny random student -> AlAd(K=5) -> head, from a saved model."""
    rngs = nnx.Rngs(3)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=32)
    model = TaskModel(build_encoder(config, rngs=rngs), TaggingHead(20, len(LABELS), rngs=rngs),
                      AlignmentAdapter(16, 20, 5, 24, rngs=rngs))
    path = save_aligned_model(tmp_path_factory.mktemp("m") / "model", encoder=model.encoder, adapter=model.adapter,
                              head=model.head, labels=LABELS, task="ner", max_length=32,
                              tokenizer=hub.load_tokenizer(MINILM), stride=8)
    return Predictor.from_dir(path, buckets=BUCKETS, row_sizes=(1, 4))


@pytest.fixture(scope="module")
def exported_dir(predictor, tmp_path_factory):
    return export_predictor(predictor, tmp_path_factory.mktemp("e") / "serving")


@pytest.fixture(scope="module")
def exported(exported_dir):
    return load_exported(exported_dir)


def _batch(rows: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (rows, length)).astype(np.int32)
    lengths = rng.integers(2, length + 1, rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask, ids, 0), mask


@pytest.mark.parametrize("rows", [3, 5])
@pytest.mark.parametrize("length", BUCKETS)
def test_exported_outputs_equal_in_process_predictor(predictor, exported, rows, length):
    ids, mask = _batch(rows, length, seed=rows * 100 + length)
    logits, label_ids = exported(ids, mask)
    want_logits, want_ids = predictor.forward(ids, mask)
    assert logits.shape == (rows, length, len(LABELS))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(label_ids), np.asarray(want_ids))


def test_programs_have_a_symbolic_batch_and_one_program_per_bucket(exported_dir):
    info = json.loads((exported_dir / "serving.json").read_text())
    assert info["buckets"] == list(BUCKETS) and info["labels"] == list(LABELS)
    for length in BUCKETS:
        program = jax.export.deserialize(bytearray((exported_dir / info["programs"][str(length)]).read_bytes()))
        *params, ids, mask = program.in_avals
        assert jax.export.is_symbolic_dim(ids.shape[0]) and ids.shape[1] == length
        assert len(params) == len(info["params"]) and mask.shape == ids.shape


def test_length_between_buckets_is_padded_to_the_next_one(predictor, exported):
    ids, mask = _batch(2, 20, seed=1)
    logits, _ = exported(ids, mask)
    padded = np.pad(ids, ((0, 0), (0, 12))), np.pad(mask, ((0, 0), (0, 12)))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(predictor.forward(*padded)[0])[:, :20], atol=1e-6)


def test_exported_predictor_labels_words_like_in_process(predictor, exported_dir):
    sentences = [["Lisbon", "is", "in", "Portugal"], ["x"] * 40, ["New", "York"]]  # the second needs windows
    assert Predictor.from_exported(exported_dir).predict_words(sentences) == predictor.predict_words(sentences)


def test_artifact_runs_in_a_process_without_flax_or_model_code(predictor, exported_dir, tmp_path):
    ids, mask = _batch(4, 16, seed=9)
    np.savez(tmp_path / "batch.npz", ids=ids, mask=mask, want=np.asarray(predictor.forward(ids, mask)[0]))
    script = textwrap.dedent(f"""
        import sys
        for name in ("flax", "transformers", "torch", "alad_jax.models", "alad_jax.adapter", "train"):
            sys.modules[name] = None  # any import of these now fails
        import numpy as np
        from alad_jax.inference.serving import load_exported
        batch = np.load({str(tmp_path / "batch.npz")!r}, allow_pickle=False)
        logits, _ = load_exported({str(exported_dir)!r})(batch["ids"], batch["mask"])
        print(float(np.abs(np.asarray(logits) - batch["want"]).max()))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) <= 1e-6


def test_export_errors_name_the_problem(exported, exported_dir, tmp_path):
    with pytest.raises(AladError, match="serving.json missing"):
        load_exported(tmp_path)
    with pytest.raises(AladError, match="already an export"):
        export_predictor(Predictor.from_exported(exported_dir), tmp_path / "again")
    with pytest.raises(AladError, match="length 40 exceeds max_length 32"):
        exported(*_batch(1, 40, seed=0))
