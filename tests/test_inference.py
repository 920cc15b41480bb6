"""Saved aligned models and the word-level Predictor: round trip, equality with direct forwards, no recompiles."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from alad_train import cli
from alad_jax.adapter import AlignmentAdapter
from alad_jax.data import tagging
from alad_jax.data.readers import TaggedSentence, read_conll, read_conllu
from alad_jax.errors import AladError
from alad_jax.inference import Predictor, load_aligned_model, save_aligned_model
from alad_train.cases import model_dir as model_dir_of_workdir
from alad_train.predict import resolve_model
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub
from alad_jax.models.task_model import TaskModel

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURES = Path(__file__).parent / "fixtures" / "data"
LABELS = ("ADJ", "NOUN", "PUNCT", "VERB")
MAX_LENGTH = 32
SENTENCES = [
    ["The", "cat", "sat", "on", "the", "mat", "."],
    ["Hello", "world"],
    ["Tokenization", "splits", "unbelievably", "long", "words", "into", "pieces", "!"],
    ["ok"],
    ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"],
]


def _tiny_model(seed: int, window: int | None = 3) -> TaskModel:
    """Random BERT (hidden 16, vocab of the real MiniLM tokenizer) -> AlAd(K) -> 4-label head."""
    rngs = nnx.Rngs(seed)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=64)
    encoder = build_encoder(config, rngs=rngs)
    adapter = AlignmentAdapter(16, 24, window, 32, rngs=rngs) if window else None
    head = TaggingHead(24 if window else 16, len(LABELS), rngs=rngs)
    return TaskModel(encoder, head, adapter)


def _save(model: TaskModel, path, tokenizer, **kw):
    return save_aligned_model(path, encoder=model.encoder, adapter=model.adapter, head=model.head, labels=LABELS,
                              task="pos", max_length=MAX_LENGTH, tokenizer=tokenizer, stride=8,
                              meta={"teacher": "tiny-teacher", "student": "tiny-student", **kw})


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer(MINILM)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    model = _tiny_model(0)
    return _save(model, tmp_path_factory.mktemp("m") / "alad_w3_frozen", tokenizer), model


@pytest.fixture(scope="module")
def predictor(saved):
    return Predictor.from_dir(saved[0])


def _logits(model, ids, mask):
    return np.asarray(model({"input_ids": np.asarray(ids), "attention_mask": np.asarray(mask)}))


def _alone(model, ids):
    """Label ids of one row run by itself (batch of 1, padded to MAX_LENGTH), jitted once per model."""
    if not hasattr(model, "_reference"):
        graphdef, state = nnx.split(model)
        model._reference = jax.jit(lambda i, m: nnx.merge(graphdef, state)({"input_ids": i, "attention_mask": m}))
    padded = np.zeros((1, MAX_LENGTH), np.int32)
    padded[0, : len(ids)] = ids
    mask = (np.arange(MAX_LENGTH) < len(ids)).astype(np.int32)[None]
    return np.asarray(model._reference(padded, mask)).argmax(-1)[0, : len(ids)]


def _direct_labels(model, tokenizer, words):
    """Reference: the sentence alone, label of each word's first sub-word."""
    enc = tokenizer([words], is_split_into_words=True)
    pred = _alone(model, np.asarray(enc["input_ids"][0], np.int32))
    word_ids = enc.word_ids(0)
    first = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    return [LABELS[pred[i]] for i in first]


def test_saved_model_round_trip_reproduces_logits_exactly(saved, tokenizer):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["adapter.safetensors", "alad.json", "head.safetensors", "student"]
    info = json.loads((path / "alad.json").read_text())
    assert (info["task"], info["labels"], info["window"], info["max_length"], info["stride"]) == (
        "pos", list(LABELS), 3, MAX_LENGTH, 8)
    assert (info["teacher"], info["student"]) == ("tiny-teacher", "tiny-student")
    with safe_open(str(path / "head.safetensors"), framework="np") as f:  # PyTorch nn.Linear layout
        np.testing.assert_array_equal(f.get_tensor("classifier.weight"), np.asarray(model.head.classifier.kernel[...]).T)

    loaded = load_aligned_model(path)
    assert loaded.labels == LABELS
    ids = np.asarray(tokenizer(["a short test sentence"])["input_ids"], np.int32)
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(_logits(loaded.model, ids, mask), _logits(model, ids, mask))


def test_model_without_adapter_round_trips(tmp_path, tokenizer):
    model = _tiny_model(5, window=None)
    loaded = load_aligned_model(_save(model, tmp_path / "probe", tokenizer))
    assert loaded.model.adapter is None and loaded.info["window"] is None
    ids = np.asarray(tokenizer(["no adapter here"])["input_ids"], np.int32)
    np.testing.assert_array_equal(_logits(loaded.model, ids, np.ones_like(ids)), _logits(model, ids, np.ones_like(ids)))


def test_predict_words_equals_each_sentence_alone_unpadded(predictor, saved, tokenizer):
    _, model = saved
    got = predictor.predict_words(SENTENCES)
    assert got == [_direct_labels(model, tokenizer, s) for s in SENTENCES]


def test_long_sentence_is_windowed_and_stitched(predictor, saved, tokenizer):
    _, model = saved
    words = [f"w{i}" for i in range(70)]
    features = tagging.encode_tagging([TaggedSentence(tuple(words), None)], tokenizer, None,
                                      max_length=MAX_LENGTH, stride=8)
    assert len(features) >= 3  # several overlapping windows
    rows = [_alone(model, r) for r in features.input_ids]
    expected = [LABELS[i] for i in tagging.stitch_predictions(features, rows)[0]]
    assert predictor.predict_words([words, ["short"]])[0] == expected
    assert len(expected) == 70


def test_repeated_calls_compile_once_per_bucket_shape(saved):
    predictor = Predictor.from_dir(saved[0], buckets=(16, 32), row_sizes=(1, 4))
    forward, seen = predictor.forward, []

    def spy(ids, mask):
        seen.append(ids.shape)
        return forward(ids, mask)

    predictor.forward = spy
    short, long = ["a", "b"], ["word"] * 20  # 4 and 22 sub-words: buckets 16 and 32
    for sentences in ([short], [long], [short] * 3, [long, long]):
        predictor.predict_words(sentences)
    assert set(seen) == {(1, 16), (1, 32), (4, 16), (4, 32)}
    assert forward.num_compilations == 4
    # Other sentence counts and lengths land on the same shapes: nothing new compiles.
    for sentences in (SENTENCES, SENTENCES * 3, [long] * 7 + [short], SENTENCES[1:3], [["x"] * 13]):
        predictor.predict_words(sentences)
    assert set(seen) == {(1, 16), (1, 32), (4, 16), (4, 32)}
    assert forward.num_compilations == 4


def test_predict_text_splits_on_whitespace(predictor):
    assert predictor.predict_text(["The  cat\tsat on the mat ."]) == predictor.predict_words([SENTENCES[0]])


def test_predict_file_reads_text_conll_and_conllu(predictor, tmp_path):
    sentences = SENTENCES[:2]
    expected = predictor.predict_words(sentences)
    (tmp_path / "in.txt").write_text("\n".join(" ".join(s) for s in sentences) + "\n")
    (tmp_path / "in.conll").write_text("\n\n".join("\n".join(f"{w}\tX" for w in s) for s in sentences) + "\n")
    (tmp_path / "in.conllu").write_text("\n\n".join(
        "\n".join(f"{i + 1}\t{w}\t_\tX\t_\t_\t_\t_\t_\t_" for i, w in enumerate(s)) for s in sentences) + "\n")
    for name, fmt in (("in.txt", "text"), ("in.conll", "conll"), ("in.conllu", "conllu")):
        got = predictor.predict_file(tmp_path / name, fmt)
        assert [w for w, _ in got] == sentences
        assert [labels for _, labels in got] == expected


def test_from_workdir_finds_the_case_and_window(tmp_path, tokenizer, saved):
    models = tmp_path / "work" / "models"
    w5 = _tiny_model(7, window=5)
    _save(w5, models / "alad_w5_frozen", tokenizer)
    _save(saved[1], models / "alad_w3_frozen", tokenizer)
    got = Predictor.open(resolve_model(tmp_path / "work", "frozen", window=5)).predict_words(SENTENCES[:2])
    assert got == [_direct_labels(w5, tokenizer, s) for s in SENTENCES[:2]]
    with pytest.raises(AladError, match="pass --window K"):
        resolve_model(tmp_path / "work", "frozen")
    with pytest.raises(AladError, match=r"--case joint: .* has no saved model for it \(finished: frozen\)"):
        resolve_model(tmp_path / "work", "joint")


def test_frozen_case_is_not_confused_with_noalign_frozen(tmp_path, tokenizer, saved):
    models = tmp_path / "work" / "models"
    _save(saved[1], models / "alad_w3_frozen", tokenizer)
    _save(_tiny_model(8, window=3), models / "alad_w3_noalign_frozen", tokenizer)
    assert model_dir_of_workdir(tmp_path / "work", "frozen") == models / "alad_w3_frozen"
    assert model_dir_of_workdir(tmp_path / "work", "noalign_frozen") == models / "alad_w3_noalign_frozen"


def test_cli_predict_prints_word_tab_label_lines(saved, predictor, tmp_path, capsys):
    path = str(saved[0])
    assert cli.main(["predict", "--model", path, "--text", "Hello world", "--words", "ok"]) == 0
    out = capsys.readouterr().out
    labels = predictor.predict_words([["Hello", "world"], ["ok"]])
    assert out == f"Hello\t{labels[0][0]}\nworld\t{labels[0][1]}\n\nok\t{labels[1][0]}\n"
    (tmp_path / "s.conllu").write_text("1\tok\t_\tX\t_\t_\t_\t_\t_\t_\n")
    assert cli.main(["predict", "--model", path, "--file", str(tmp_path / "s.conllu"), "--out",
                     str(tmp_path / "o.txt")]) == 0
    assert (tmp_path / "o.txt").read_text() == f"1\tok\t_\t{labels[1][0]}\t_\t_\t_\t_\t_\t_\n\n"  # CoNLL-U in, out


def test_predicted_conll_reads_back_with_multiword_tokens_intact(saved, predictor, tmp_path, capsys):
    """UD words may hold spaces ("100 000"): --out must read back as the same words and labels."""
    source = FIXTURES / "ud_sample.conllu"
    out = tmp_path / "predicted.conll"
    assert cli.main(["predict", "--model", str(saved[0]), "--file", str(source), "--out", str(out)]) == 0
    words = [list(s.words) for s in read_conllu(source)]
    assert ["100 000"] in [[w for w in s if " " in w] for s in words]
    back = read_conll(out, scheme="none")
    assert [list(s.words) for s in back] == words
    assert [list(s.tags) for s in back] == predictor.predict_words(words)
    assert predictor.predict_file(out, "conll") == [(w, list(s.tags)) for w, s in zip(words, back)]


def test_bad_inputs_are_one_line_errors(saved, predictor, tmp_path, capsys):
    with pytest.raises(AladError, match="input text 2 is empty"):
        predictor.predict_text(["fine", "   "])
    with pytest.raises(AladError, match="input sentence 1"):
        predictor.predict_words(["not a list of words"])
    assert cli.main(["predict", "--model", str(tmp_path / "missing"), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model") and err.count("\n") == 1
    assert cli.main(["predict", "--model", str(saved[0])]) == 2
    assert "nothing to label" in capsys.readouterr().err
    assert cli.main(["predict", "--model", str(saved[0]), "--file", str(tmp_path / "missing.conllu")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --file ") and "missing.conllu: no such file" in err and "config" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "alad.json").write_text("{not json")
    with pytest.raises(AladError, match=r"alad.json:1: invalid JSON"):
        load_aligned_model(bad)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x.txt").write_text("keep me")
    with pytest.raises(AladError, match="not a saved aligned model"):
        _save(saved[1], tmp_path / "occupied", None)
    with pytest.raises(AladError, match="4 outputs but 2 labels"):
        save_aligned_model(tmp_path / "m2", encoder=saved[1].encoder, adapter=saved[1].adapter, head=saved[1].head,
                           labels=["A", "B"], task="pos", max_length=MAX_LENGTH, tokenizer=None)


def test_predictions_do_not_depend_on_batch_company(predictor):
    alone = [predictor.predict_words([s])[0] for s in SENTENCES]
    assert predictor.predict_words(SENTENCES[::-1]) == alone[::-1]


def test_qa_predictor_answers_like_direct_span_decoding(tmp_path, tokenizer):
    from alad_jax.data import qa
    from alad_jax.data.readers import QAExample
    from alad_jax.inference.predictor import QAPredictor
    from alad_jax.models.heads import QAHead
    from alad_jax.models.task_model import predict_spans

    rngs = nnx.Rngs(5)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=64)
    model = TaskModel(build_encoder(config, rngs=rngs), QAHead(24, rngs=rngs), AlignmentAdapter(16, 24, 3, 32, rngs=rngs))
    path = save_aligned_model(tmp_path / "alad_w3_frozen", encoder=model.encoder, adapter=model.adapter,
                              head=model.head, labels=(), task="qa", max_length=64, tokenizer=tokenizer, stride=16,
                              meta={"null_threshold": 1e9})  # "" only if null beats the best span by 1e9: always answer
    questions = ["Where did the cat sit?", "Who wrote it?"]
    contexts = ["The cat sat on the mat near the door of the old house by the river. " * 6,
                "It was written by a careful engineer."]
    got = QAPredictor.from_dir(path).answer(questions, contexts)
    examples = [QAExample(str(i), q, c, ()) for i, (q, c) in enumerate(zip(questions, contexts))]
    features = qa.encode_qa(examples, tokenizer, max_length=64, doc_stride=16)
    graphdef, state = nnx.split(model)
    start, end = predict_spans(graphdef, state, {"input_ids": features.input_ids,
                                                 "attention_mask": features.attention_mask,
                                                 "token_type_ids": features.token_type_ids})
    want, _ = qa.postprocess_qa(examples, features, np.asarray(start), np.asarray(end), null_threshold=1e9)
    assert got == [want["0"], want["1"]]
    assert all(answer and answer in context for answer, context in zip(got, contexts))
    with pytest.raises(AladError, match="as many --question as --context"):
        QAPredictor.from_dir(path).answer(["q"], [])
