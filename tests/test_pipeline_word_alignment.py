"""End to end: `alad run` with a teacher that cuts words into other pieces than the student.

The teacher is a tiny random MPNet reading characters (`<s> c a s a </s>`), the
student a tiny random BERT with the real MiniLM WordPiece tokenizer, on real
Porttinari sentences. Token-level alignment cannot pair their positions: the
run refuses in one line naming the first sentence. With `alignment.level =
"word"` every stage runs: stage 0 fine-tunes the teacher on its own
characters, stages 1-2 align per word, the cosine is per word.
"""

import json
import math
import subprocess
import sys

import pytest
import transformers
from flax import nnx
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from alad_train.config import load_config
from alad_jax.errors import AladError
from alad_jax.models.config import EncoderConfig
from alad_jax.models.hub import load_tokenizer, save_encoder
from alad_jax.models.modeling import build_encoder
from alad_train import pipeline
import tiny_inputs  # tests/helpers, on the path through tests/conftest.py

CHARACTERS = "abcdefghijklmnopqrstuvwxyzáàâãéêíóôõúüç0123456789.,;:!?()\"'-%$/"
ROWS = ["teacher", "student_probe", "student_ft", "alad_w3_head", "alad_w3_frozen", "alad_w3_joint",
        "alad_w3_noalign_frozen"]


def _characters():
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", *CHARACTERS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
        bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    minilm = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    student = EncoderConfig(model_type="bert", vocab_size=minilm.vocab_size, hidden_size=32, num_layers=1,
                            num_heads=2, intermediate_size=64, max_position_embeddings=128)
    save_encoder(build_encoder(student, rngs=nnx.Rngs(1)), root / "student", tokenizer=minilm)
    characters = _characters()
    teacher = EncoderConfig(model_type="mpnet", vocab_size=len(characters), hidden_size=48, num_layers=1,
                            num_heads=2, intermediate_size=96, max_position_embeddings=320, type_vocab_size=0,
                            pad_token_id=1, relative_attention_num_buckets=32)
    save_encoder(build_encoder(teacher, rngs=nnx.Rngs(2)), root / "teacher", tokenizer=characters)
    tiny_inputs.write_ud_splits(root, {"train": (0, 32), "dev": (32, 44), "test": (44, 56)}, corpus=(0, 32))
    overrides = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0",
        f"data.train={root / 'train.conllu'}", f"data.dev={root / 'dev.conllu'}", f"data.test={root / 'test.conllu'}",
        "data.max_train=0", "data.max_dev=0", "data.max_test=0",
        f'corpus.paths=["{root / "corpus.conllu"}"]', "corpus.max_sentences=24", "corpus.val_sentences=8",
        "adapter_hidden=32", "max_length=64", "eval_batch_size=16", "latency_batches=2",
        "stages.align.token_budget=1024", "stages.continual.token_budget=1024",
        "stages.align.epochs=3", "stages.align.lr=3e-3", "stages.align.patience=0", "stages.continual.epochs=1",
    ] + [f"stages.{s}.batch_size=16" for s in ("teacher", "head", "frozen", "joint", "probe", "student_ft")] \
      + [f"stages.{s}.epochs=1" for s in ("teacher", "head", "frozen", "joint", "probe", "student_ft")]
    return root, overrides


def test_the_pair_is_refused_at_token_level_in_one_line(tiny, tmp_path):
    _, overrides = tiny
    with pytest.raises(AladError, match=r"cut sentence 0 \('.*'\) into different word pieces") as error:
        pipeline.run(load_config(None, overrides), tmp_path / "w")
    assert "\n" not in str(error.value) and 'alignment.level = "word"' in str(error.value)
    out = subprocess.run([sys.executable, "-m", "alad_train.cli", "run", "--workdir", str(tmp_path / "cli"), *overrides],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "into different word pieces" in out.stderr


@pytest.mark.slow
def test_word_level_runs_every_stage_and_aligns_per_word(tiny, tmp_path):
    _, overrides = tiny
    results = pipeline.run(load_config(None, overrides + ['alignment.level="word"']), tmp_path / "w")
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ROWS
    for name, row in rows.items():
        assert 0.0 <= row["test"] <= 1.0 and row["latency_ms"] > 0, name
    for name in ("alad_w3_head", "alad_w3_frozen", "alad_w3_joint", "alad_w3_noalign_frozen"):
        assert -1.0 <= rows[name]["cosine"] <= 1.0, name
    progress = json.loads((tmp_path / "w" / "progress.json").read_text())
    stage1 = progress["align_w3"]
    curve = [h["dev"] for h in stage1["history"]]
    assert len(curve) == 3 and all(math.isfinite(x) for x in curve)
    assert curve[-1] < curve[0]  # the per-word alignment loss falls
    assert stage1["train_rows"] >= 24 and stage1["cached"]
