"""``alad predict`` on real inputs: stdin, word-only CoNLL, CoNLL-U round trip, JSON lines, export
directories as ``--model``; every input's encoding checked before its format is guessed.

A tiny random tagger (real MiniLM tokenizer) stands in for a trained model: what is proved is the I/O,
so every expected label comes from the same predictor called directly.
"""

from __future__ import annotations

import importlib.util
import io
import json
import types
from pathlib import Path

import pytest
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_train.config import load_config
from alad_jax.data import readers, sources
from alad_jax.errors import AladError
from alad_jax.inference import Predictor, export_predictor, save_aligned_model
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub
from alad_train import cli

FIXTURES = Path(__file__).parent / "fixtures" / "data"
UD_SAMPLE = FIXTURES / "ud_sample.conllu"
LABELS = ("ADJ", "NOUN", "PUNCT", "VERB")
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "jax2onnx"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved aligned model: random BERT (hidden 16) -> AlAd(K=3) -> 4-label head."""
    rngs = nnx.Rngs(0)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=64)
    return save_aligned_model(tmp_path_factory.mktemp("m") / "alad_w3_frozen", encoder=build_encoder(config, rngs=rngs),
                              adapter=AlignmentAdapter(16, 24, 3, 32, rngs=rngs), head=TaggingHead(24, 4, rngs=rngs),
                              labels=LABELS, task="pos", max_length=32, stride=8,
                              tokenizer=hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def predictor(saved):
    return Predictor.from_dir(saved)


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))


def _conll_output(text: str) -> list[list[str]]:
    """word<TAB>label output -> the labels of each sentence."""
    return [[line.split("\t")[1] for line in block.splitlines()] for block in text.strip().split("\n\n")]


def test_stdin_text_is_labelled_like_the_same_file(saved, predictor, tmp_path, monkeypatch, capsys):
    text = "O menino comeu a maçã .\nEle saiu .\n"
    _stdin(monkeypatch, text.encode("utf-8"))
    assert cli.main(["predict", "--model", str(saved), "--file", "-"]) == 0
    from_stdin = capsys.readouterr().out
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    assert cli.main(["predict", "--model", str(saved), "--file", str(tmp_path / "in.txt")]) == 0
    assert capsys.readouterr().out == from_stdin
    assert _conll_output(from_stdin) == predictor.predict_words([s.split() for s in text.splitlines()])


def test_stdin_conllu_is_recognised_and_written_back_as_conllu(saved, monkeypatch, capsys):
    _stdin(monkeypatch, UD_SAMPLE.read_bytes())
    assert cli.main(["predict", "--model", str(saved), "--file", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# newdoc id = doc1\n") and "2-3\tà\t_" in out


def test_word_only_conll_is_accepted(saved, predictor, tmp_path, capsys):
    sentences = [["The", "cat", "sat"], ["Hello", "world", "!"]]
    path = tmp_path / "words.conll"
    path.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n", encoding="utf-8")
    assert [list(s.words) for s in sources.read_sentences(path, "conll")] == sentences
    assert cli.main(["predict", "--model", str(saved), "--file", str(path)]) == 0
    assert _conll_output(capsys.readouterr().out) == predictor.predict_words(sentences)


def test_conllu_round_trip_keeps_comments_ids_and_other_columns_and_fills_upos(saved, predictor, tmp_path, capsys):
    out = tmp_path / "predicted.conllu"
    assert cli.main(["predict", "--model", str(saved), "--file", str(UD_SAMPLE), "--out", str(out)]) == 0
    assert capsys.readouterr().err == f"wrote 2 sentences to {out}\n"
    given, written = UD_SAMPLE.read_text(encoding="utf-8").splitlines(), out.read_text(encoding="utf-8").splitlines()
    assert len(written) == len(given)
    words = [list(s.words) for s in readers.read_conllu(UD_SAMPLE)]
    expected = iter(label for labels in predictor.predict_words(words) for label in labels)
    for before, after in zip(given, written):
        if not before or before.startswith("#") or not before.split("\t")[0].isdigit():
            assert after == before  # comments, blank lines, ranges (2-3) and empty nodes (4.1) as given
            continue
        before_fields, after_fields = before.split("\t"), after.split("\t")
        assert after_fields[3] == next(expected)  # UPOS: the prediction
        assert after_fields[:3] + after_fields[4:] == before_fields[:3] + before_fields[4:]
    assert next(expected, None) is None
    back = readers.read_conllu(out)  # valid CoNLL-U: reads back with the predicted tags
    assert [list(s.tags) for s in back] == predictor.predict_words(words)


def test_unannotated_conllu_gets_the_chosen_column(saved, predictor, tmp_path, capsys):
    path = tmp_path / "plain.conllu"
    path.write_text("# sent_id = 1\n1\tHello\t_\t_\t_\t_\t_\t_\t_\t_\n2\tworld\t_\t_\t_\t_\t_\t_\t_\t_\n\n",
                    encoding="utf-8")
    assert cli.main(["predict", "--model", str(saved), "--file", str(path), "--column", "xpos"]) == 0
    (labels,) = predictor.predict_words([["Hello", "world"]])
    assert capsys.readouterr().out == (f"# sent_id = 1\n1\tHello\t_\t_\t{labels[0]}\t_\t_\t_\t_\t_\n"
                                       f"2\tworld\t_\t_\t{labels[1]}\t_\t_\t_\t_\t_\n\n")


def test_jsonl_output_holds_words_and_labels_per_line(saved, predictor, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    assert cli.main(["predict", "--model", str(saved), "--text", "O menino comeu", "--words", "maçã", ".",
                     "--out", str(out)]) == 0  # the format from the suffix
    assert capsys.readouterr().err == f"wrote 2 sentences to {out}\n"
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    labels = predictor.predict_words([["O", "menino", "comeu"], ["maçã", "."]])
    assert records == [{"words": ["O", "menino", "comeu"], "labels": labels[0]},
                       {"words": ["maçã", "."], "labels": labels[1]}]
    assert "maçã" in out.read_text(encoding="utf-8")  # not \u-escaped
    assert cli.main(["predict", "--model", str(saved), "--text", "Hello", "--output-format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == ["Hello"]


def test_a_jax_export_directory_is_a_model(saved, predictor, tmp_path, capsys):
    served = export_predictor(predictor, tmp_path / "served_jax")
    assert cli.main(["predict", "--model", str(served), "--words", "Hello", "world"]) == 0
    assert _conll_output(capsys.readouterr().out) == predictor.predict_words([["Hello", "world"]])


@pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed (bash scripts/setup.sh onnx)")
def test_an_onnx_export_directory_finds_its_onnx_file(saved, predictor, tmp_path, capsys):
    from alad_jax.inference.onnx_export import export_onnx

    export_onnx(saved, tmp_path / "served" / "frozen.onnx")
    for model in (tmp_path / "served", tmp_path / "served" / "frozen.onnx"):
        assert cli.main(["predict", "--model", str(model), "--words", "Hello", "world"]) == 0
        assert _conll_output(capsys.readouterr().out) == predictor.predict_words([["Hello", "world"]])


def test_utf16_data_file_is_refused_as_not_utf8_before_its_format_is_guessed(tmp_path):
    """The sniffing used to run first and call a UTF-16 CoNLL-U file "column CoNLL": the wrong fix."""
    path = tmp_path / "train.conllu"
    path.write_bytes(UD_SAMPLE.read_text(encoding="utf-8").encode("utf-16"))
    assert path.read_bytes()[:2] == b"\xff\xfe"
    config = load_config(None, ["data.format=conllu", f"data.train={path}"])
    with pytest.raises(AladError) as err:
        sources.read_task_split(config.data, "pos", "train")
    assert str(err.value) == f"{path}: not valid UTF-8 (looks like UTF-16; re-save as UTF-8)"
    corpus = load_config(None, [f'corpus.paths=["{path}"]']).corpus
    with pytest.raises(AladError, match="not valid UTF-8 \\(looks like UTF-16"):
        sources.read_corpus(corpus)
    no_mark = tmp_path / "no_mark.conll"
    no_mark.write_bytes("word\tNOUN\n".encode("utf-16-le"))
    with pytest.raises(AladError, match="no_mark.conll: not valid UTF-8 \\(looks like UTF-16"):
        sources.read_sentences(no_mark, "conll")


def test_utf16_input_to_predict_is_one_error_line(saved, tmp_path, monkeypatch, capsys):
    path = tmp_path / "in.conllu"
    path.write_bytes(UD_SAMPLE.read_text(encoding="utf-8").encode("utf-16"))
    assert cli.main(["predict", "--model", str(saved), "--file", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: not valid UTF-8 (looks like UTF-16; re-save as UTF-8)\n"
    _stdin(monkeypatch, "O menino\n".encode("utf-16"))
    assert cli.main(["predict", "--model", str(saved), "--file", "-"]) == 2
    assert capsys.readouterr().err == "error: <stdin>: not valid UTF-8 (looks like UTF-16; re-save as UTF-8)\n"
