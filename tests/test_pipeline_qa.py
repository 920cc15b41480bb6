"""Extractive QA through the same pipeline: tiny random encoders, the hand-written SQuAD v2 files."""

import json
from pathlib import Path

import pytest
from flax import nnx

from alad_jax.config import load_config
from alad_jax.models.config import EncoderConfig
from alad_jax.models.hub import load_tokenizer, save_encoder
from alad_jax.models.modeling import build_encoder
from train import pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    root = tmp_path_factory.mktemp("tiny_qa")
    tokenizer = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    for name, hidden in (("teacher", 48), ("student", 32)):
        config = EncoderConfig(model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=1,
                               num_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
        save_encoder(build_encoder(config, rngs=nnx.Rngs(2)), root / name, tokenizer=tokenizer)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"sentence number {i} about rivers and mountains ." for i in range(30)) + "\n")
    overrides = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0", "windows=[1]",
        "corpus.format=text", f'corpus.paths=["{corpus}"]', "corpus.max_sentences=20", "corpus.val_sentences=10",
        "adapter_hidden=32", "max_length=128", "stride=32", "max_query_length=32", "eval_batch_size=16",
        "latency_batches=1", "stages.align.epochs=1", "stages.continual.epochs=1",
    ] + [f"stages.{s}.epochs=1" for s in ("teacher", "head", "frozen", "joint", "probe", "student_ft")]
    cfg = load_config(ROOT / "configs" / "qa_squad_v2_tiny.toml", overrides)
    cfg.data.train = str(ROOT / cfg.data.train)
    cfg.data.dev = cfg.data.test = str(ROOT / cfg.data.dev)
    workdir = tmp_path_factory.mktemp("qa_run")
    results = pipeline.run(cfg, workdir)
    yield workdir, results
    jax.config.update("jax_compilation_cache_dir", None)


def test_qa_rows_carry_f1_and_exact(qa_run):
    workdir, results = qa_run
    assert results["task"] == "qa" and results["metric"] == "f1" and results["metric_scale"] == 100
    names = [r["name"] for r in results["rows"]]
    assert names == ["teacher", "student_probe", "student_ft", "alad_w1_head", "alad_w1_frozen", "alad_w1_joint",
                     "alad_w1_noalign_frozen"]
    for row in results["rows"]:
        for split in ("dev", "test"):
            scores = row[f"{split}_metrics"]
            assert row[split] == {"f1": scores["f1"], "exact": scores["exact"]}
            assert 0.0 <= scores["exact"] <= scores["f1"] <= 100.0
            assert scores["HasAns_total"] + scores["NoAns_total"] == scores["total"] == 16
    on_disk = json.loads((workdir / "results.json").read_text())
    assert [r["name"] for r in on_disk["rows"]] == names


def test_qa_dev_doubling_as_test_is_stated(qa_run):
    _, results = qa_run
    assert any("not held out" in note for note in results["notes"])
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["alad_w1_frozen"]["dev"] == rows["alad_w1_frozen"]["test"]  # same file, same tuned threshold
