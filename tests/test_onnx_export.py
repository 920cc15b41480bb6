"""`alad export`: one ONNX file per saved model, equal to the JAX predictor in onnxruntime; QA in jax.export too."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_train.cli import main as alad
from alad_jax.errors import AladError
from alad_jax.inference import Predictor, save_aligned_model
from alad_jax.inference.export import export_model
from alad_jax.inference.serving import load_exported
from alad_jax.inference.predictor import QAPredictor, load_aligned_model
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub
from alad_jax.models.heads import QAHead
from alad_jax.models.task_model import TaskModel, predict_spans

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")
from alad_jax.inference.onnx_export import OnnxForward, export_onnx, onnx_predictor  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ("B-LOC", "I-LOC", "O", "B-PER")
ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [["Lisbon", "is", "in", "Portugal", "."], ["x"] * 45, ["New", "York"],
             "the quick brown fox jumps over the lazy dog near the old mill".split()]
QUESTIONS = ["Where did the cat sit?", "Who wrote it?", "What colour was the door?"]
CONTEXTS = ["The cat sat on the mat near the door of the old house by the river. " * 5,
            "It was written by a careful engineer.", "The door was painted a deep green last spring."]


def _tiny(head, width: int, max_positions: int, seed: int) -> TaskModel:
    rngs = nnx.Rngs(seed)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=2, num_heads=2,
                           intermediate_size=32, max_position_embeddings=max_positions)
    return TaskModel(build_encoder(config, rngs=rngs), head(rngs), AlignmentAdapter(16, width, 3, 24, rngs=rngs))


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer(MINILM)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory, tokenizer):
    model = _tiny(lambda rngs: TaggingHead(20, len(LABELS), rngs=rngs), 20, 32, seed=3)
    return save_aligned_model(tmp_path_factory.mktemp("tag") / "alad_w3_frozen", encoder=model.encoder,
                              adapter=model.adapter, head=model.head, labels=LABELS, task="ner", max_length=32,
                              tokenizer=tokenizer, stride=8)


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory, tokenizer):
    model = _tiny(lambda rngs: QAHead(24, rngs=rngs), 24, 64, seed=5)
    return save_aligned_model(tmp_path_factory.mktemp("qa") / "alad_w3_frozen", encoder=model.encoder,
                              adapter=model.adapter, head=model.head, labels=(), task="qa", max_length=64,
                              tokenizer=tokenizer, stride=16, meta={"null_threshold": 0.25})


@pytest.fixture(scope="module")
def tagger_onnx(tagger_dir, tmp_path_factory):
    return export_onnx(tagger_dir, tmp_path_factory.mktemp("o") / "frozen.onnx")


@pytest.fixture(scope="module")
def qa_onnx(qa_dir, tmp_path_factory):
    return export_onnx(qa_dir, tmp_path_factory.mktemp("oq") / "qa.onnx")


def _padded(rows: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, rows)
    lengths[0] = length  # one full row, the rest padded to it
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    return np.where(mask, rng.integers(1000, 30000, (rows, length)), 0), mask


@pytest.mark.parametrize("rows,length", [(1, 7), (3, 16), (5, 32)])
def test_onnx_tagging_logits_equal_jax_predictor(tagger_dir, tagger_onnx, rows, length):
    """Dynamic batch and length: any (rows, length) runs, within 1e-4 of the jitted forward, same labels."""
    ids, mask = _padded(rows, length, seed=rows * 10 + length)
    logits, label_ids = OnnxForward(tagger_onnx)(ids, mask)
    want_logits, want_ids = Predictor.from_dir(tagger_dir).forward(ids.astype(np.int32), mask.astype(np.int32))
    assert logits.shape == (rows, length, len(LABELS)) and label_ids.dtype == np.int64
    np.testing.assert_allclose(logits, np.asarray(want_logits), rtol=0, atol=1e-4)
    real = mask.astype(bool)
    np.testing.assert_array_equal(label_ids[real], np.asarray(want_ids)[real])


def test_tokenizer_output_feeds_the_session_as_is(tagger_dir, tagger_onnx, tokenizer):
    """`session.run(None, dict(tokenizer(..., return_tensors="np")))` on a padded batch of varied lengths."""
    session = ort.InferenceSession(str(tagger_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits", "label_ids"]
    assert all(i.type == "tensor(int64)" and i.shape == ["batch", "sequence"] for i in session.get_inputs())
    encoded = tokenizer([" ".join(s) for s in SENTENCES[:1] + SENTENCES[2:]], padding=True, return_tensors="np")
    assert len(set(encoded["attention_mask"].sum(1))) == 3  # three lengths, padded
    logits, label_ids = session.run(None, dict(encoded))
    want_logits, want_ids = Predictor.from_dir(tagger_dir).forward(encoded["input_ids"].astype(np.int32),
                                                                   encoded["attention_mask"].astype(np.int32))
    real = encoded["attention_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], np.asarray(want_logits)[real], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(label_ids[real], np.asarray(want_ids)[real])


def test_onnx_word_labels_equal_jax_predictor(tagger_dir, tagger_onnx):
    """Same words -> same labels, long sentences (windows) included, batched together."""
    assert onnx_predictor(tagger_onnx).predict_words(SENTENCES) == Predictor.from_dir(tagger_dir).predict_words(SENTENCES)


def test_sidecar_holds_labels_lengths_and_the_tokenizer(tagger_onnx, qa_onnx):
    info = json.loads((tagger_onnx.parent / "alad.json").read_text())
    assert info["format"] == "alad-onnx" and info["onnx"] == "frozen.onnx" and info["task"] == "ner"
    assert info["labels"] == list(LABELS) and info["max_length"] == 32 and info["stride"] == 8
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (tagger_onnx.parent / "tokenizer.json").is_file()
    qa_info = json.loads((qa_onnx.parent / "alad.json").read_text())
    assert qa_info["null_threshold"] == 0.25 and qa_info["outputs"] == ["start_logits", "end_logits"]
    assert not list(tagger_onnx.parent.glob("*.data")) and not list(tagger_onnx.parent.glob("*.tmp"))


def test_onnx_qa_logits_and_answers_equal_jax(qa_dir, qa_onnx, tokenizer):
    from alad_jax.data import qa
    from alad_jax.data.readers import QAExample

    examples = [QAExample(str(i), q, c, ()) for i, (q, c) in enumerate(zip(QUESTIONS, CONTEXTS))]
    features = qa.encode_qa(examples, tokenizer, max_length=64, doc_stride=16)
    batch = {"input_ids": features.input_ids, "attention_mask": features.attention_mask,
             "token_type_ids": features.token_type_ids}
    assert features.token_type_ids.any()  # the segment ids matter and reach the graph
    start, end = OnnxForward(qa_onnx)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    want_start, want_end = predict_spans(*nnx.split(load_aligned_model(qa_dir).model), batch)
    np.testing.assert_allclose(start, np.asarray(want_start), rtol=0, atol=1e-4)
    np.testing.assert_allclose(end, np.asarray(want_end), rtol=0, atol=1e-4)
    assert onnx_predictor(qa_onnx).answer(QUESTIONS, CONTEXTS) == QAPredictor.from_dir(qa_dir).answer(QUESTIONS, CONTEXTS)


def test_jax_export_covers_qa(qa_dir, tmp_path):
    out = export_model(qa_dir, tmp_path / "serving")
    exported = load_exported(out)
    assert json.loads((out / "serving.json").read_text())["null_threshold"] == 0.25
    assert QAPredictor.from_exported(out).answer(QUESTIONS, CONTEXTS) == QAPredictor.from_dir(qa_dir).answer(
        QUESTIONS, CONTEXTS)
    ids = np.zeros((3, 64), np.int32)
    ids[:, :5] = 1012
    batch = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "token_type_ids": np.zeros_like(ids)}
    got = exported(batch)
    want = predict_spans(*nnx.split(load_aligned_model(qa_dir).model), batch)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=1e-6)


def test_a_student_without_segments_takes_no_token_type_ids_and_mpnet_says_use_jax():
    from alad_jax.inference.onnx_export import convert
    from alad_jax.inference.predictor import CompiledTagger

    def tiny(model_type, **extra):
        rngs = nnx.Rngs(0)
        config = EncoderConfig(model_type=model_type, vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                               intermediate_size=32, max_position_embeddings=64, type_vocab_size=0, **extra)
        return TaskModel(build_encoder(config, rngs=rngs), TaggingHead(20, 3, rngs=rngs),
                         AlignmentAdapter(16, 20, 3, 24, rngs=rngs))

    model = tiny("distilbert")
    proto = convert(model, "ner")
    assert [value.name for value in proto.graph.input] == ["input_ids", "attention_mask"]  # DistilBERT's tokenizer's
    ids, mask = _padded(2, 20, seed=4)
    logits, _ = OnnxForward(proto.SerializeToString())(ids, mask)
    want, _ = CompiledTagger(model)(ids.astype(np.int32), mask.astype(np.int32))
    np.testing.assert_allclose(logits, np.asarray(want), rtol=0, atol=1e-4)
    with pytest.raises(AladError, match="cannot convert this mpnet student .* use --format jax"):
        convert(tiny("mpnet", relative_attention_num_buckets=32), "ner")


def test_cli_exports_from_a_work_directory_and_predicts(tagger_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    (workdir / "models").mkdir(parents=True)
    os.symlink(tagger_dir, workdir / "models" / "alad_w3_frozen")
    out = tmp_path / "served" / "frozen.onnx"  # the directory is created
    assert alad(["export", "--model", str(workdir), "--case", "frozen", "--format", "onnx", "--out", str(out)]) == 0
    assert alad(["predict", "--model", str(out), "--words", *SENTENCES[0]]) == 0
    printed = capsys.readouterr().out.split("wrote", 1)[1].splitlines()[1:]
    want = Predictor.from_dir(tagger_dir).predict_words([SENTENCES[0]])[0]
    assert [line.split("\t") for line in printed if line] == [[w, label] for w, label in zip(SENTENCES[0], want)]
    assert alad(["export", "--model", str(workdir), "--format", "jax", "--out", str(tmp_path / "jax")]) == 0
    assert Predictor.from_exported(tmp_path / "jax").predict_words(SENTENCES) == Predictor.from_dir(
        tagger_dir).predict_words(SENTENCES)


def test_bad_export_requests_get_one_clear_line(tagger_dir, tmp_path, capsys):
    def check(argv, message):
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "m.onnx")]
        assert alad(["export", "--format", "onnx", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(message, err), (message, err)

    workdir = tmp_path / "run"
    (workdir / "models").mkdir(parents=True)
    (workdir / "models" / "alad_w3_frozen.tmp").mkdir()  # an interrupted save, not a finished case
    check(["--model", str(workdir), "--case", "frozen"], r"--case frozen: .* no saved model .*finished: none")
    os.symlink(tagger_dir, workdir / "models" / "alad_w3_joint")
    check(["--model", str(workdir), "--case", "frozen"], r"--case frozen: .* no saved model .*finished: joint\)")
    check(["--model", str(workdir), "--case", "bogus"], r"--case 'bogus' is not a case .* use one of head, frozen")
    check(["--model", str(tagger_dir.parent)], "not a saved aligned model .* or an alad run work directory")
    check(["--model", str(tmp_path / "nope")], "no such directory")
    check(["--model", str(tagger_dir), "--out", "/proc/frozen.onnx"], "--out /proc/frozen.onnx: cannot write in")
    (tmp_path / "a_file").write_text("")
    check(["--model", str(tagger_dir), "--out", str(tmp_path / "a_file" / "m.onnx")], "cannot create directory")
    check(["--model", str(tagger_dir), "--out", str(tmp_path / "m.bin")], r"ending in \.onnx")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "alad.json").write_text(json.dumps({"format": "alad-onnx", "onnx": "other.onnx"}))
    with pytest.raises(AladError, match="already describes another model"):
        export_onnx(tagger_dir, tmp_path / "taken" / "mine.onnx")


# `alad run` work directories: runs/ of this checkout, or ALAD_RUNS=DIR holding default/ and qa_squad_v2_tiny/.
RUNS = Path(os.environ.get("ALAD_RUNS") or ROOT / "runs")
REAL = [(RUNS / "default", SENTENCES[:1] + SENTENCES[2:]), (RUNS / "qa_squad_v2_tiny", None)]


@pytest.mark.slow
@pytest.mark.parametrize("workdir,sentences", REAL, ids=["default", "qa_squad_v2_tiny"])
def test_real_saved_models_when_present(workdir, sentences, tmp_path):
    """The real runs' frozen models (when an `alad run` left them here): ORT labels/answers equal JAX's."""
    from alad_train.export import resolve_saved_model as resolve_model_dir

    if not (workdir / "models").is_dir():
        pytest.skip(f"{workdir} has no saved models (run alad run first)")
    model_dir = resolve_model_dir(workdir, "frozen", None)
    out = export_onnx(model_dir, tmp_path / "frozen.onnx")
    if sentences is None:
        ours, theirs = onnx_predictor(out), QAPredictor.from_dir(model_dir)
        assert ours.null_threshold == theirs.null_threshold
        assert ours.answer(QUESTIONS, CONTEXTS) == theirs.answer(QUESTIONS, CONTEXTS)
        ours.null_threshold = theirs.null_threshold = float("inf")  # always answer: the best spans themselves
        assert ours.answer(QUESTIONS, CONTEXTS) == theirs.answer(QUESTIONS, CONTEXTS)
    else:
        assert onnx_predictor(out).predict_words(sentences) == Predictor.from_dir(model_dir).predict_words(sentences)
