"""The one input pipeline: format checks, malformed sentences skipped on request, one bucketing, one row padding."""

import numpy as np
import pytest

from alad_train.config import load_config
from alad_jax.data import batching, sources
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_train import tasks

CONLLU = (
    "# sent_id = 1\n1\tO\to\tDET\t_\t_\t0\troot\t_\t_\n2\tgato\tgato\tNOUN\t_\t_\t1\tnsubj\t_\t_\n\n"
    "# sent_id = 2\n1\tcorre\tcorrer\tVERB\t_\t_\t0\troot\t_\t_\n\n"
)
CONLL = "Peter B-PER\nvisits O\n\nParis B-LOC\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("given,actual,text", [("conll", "conllu", CONLLU), ("conllu", "conll", CONLL)])
def test_a_file_in_the_other_conll_format_is_refused_naming_what_it_looks_like(tmp_path, given, actual, text):
    path = _write(tmp_path, "train.txt", text)
    cfg = load_config(None, ["task=ner" if given == "conll" else "task=pos", f"data.format={given}",
                             f"data.train={path}"])
    with pytest.raises(AladError, match=f"looks like .*not {given}; set data.format to {actual}"):
        sources.read_task_split(cfg.data, cfg.task, "train")
    assert sources.looks_like(path) == actual


def test_the_packaged_corpora_look_like_what_they_are():
    assert sources.looks_like(sources.resolve_source("packaged:porttinari")) == "conllu"
    assert sources.looks_like(sources.resolve_source("packaged:wnut16")) == "conll"


BROKEN_CONLLU = CONLLU + "1\tbad\tline\n\n" + "1\tfim\tfim\tNOUN\t_\t_\t0\troot\t_\t_\n\n" + \
    "1\tdois\tdois\tNUM\t_\t_\t0\troot\t_\t_\n3\tpulou\tpular\tVERB\t_\t_\t1\tx\t_\t_\n\n"


def test_malformed_sentences_stop_the_run_by_default_at_their_line(tmp_path):
    path = _write(tmp_path, "broken.conllu", BROKEN_CONLLU)
    cfg = load_config(None, [f"data.train={path}"])
    with pytest.raises(AladError, match=r"broken.conllu:8: expected 10 tab-separated"):
        sources.read_task_split(cfg.data, cfg.task, "train")


def test_skip_malformed_drops_exactly_the_broken_sentences_and_reports_them(tmp_path):
    path = _write(tmp_path, "broken.conllu", BROKEN_CONLLU)
    cfg = load_config(None, [f"data.train={path}", "data.skip_malformed=true"])
    skipped = sources.Skipped()
    sentences = sources.read_task_split(cfg.data, cfg.task, "train", skipped=skipped)
    assert [s.words for s in sentences] == [("O", "gato"), ("corre",), ("fim",)]
    assert len(skipped.messages) == 2
    note = skipped.note()
    assert note.startswith("skipped 2 malformed sentence(s)") and "broken.conllu:8:" in note
    assert "broken.conllu:13: word id '3' where 2 was expected" in note


def test_skip_malformed_conll_drops_a_sentence_with_a_bad_column_count_or_tag(tmp_path):
    text = CONLL + "\nBad line here X\n\nThe O\nEU I-ORG\n\nLisbon B-LOC\n"
    path = _write(tmp_path, "broken.conll", text)
    skipped = []
    from alad_jax.data import readers

    sentences = readers.read_conll(path, scheme="BIO", skipped=skipped)
    assert [s.words for s in sentences] == [("Peter", "visits"), ("Paris",), ("Lisbon",)]
    assert [m.split(":")[1] for m in skipped] == ["6", "9"]
    with pytest.raises(AladError, match="broken.conll:6: expected 2 columns"):
        readers.read_conll(path, scheme="BIO")


def test_skipped_sentences_reach_the_run_notes(tmp_path, capsys):
    train = _write(tmp_path, "train.conllu", BROKEN_CONLLU)
    clean = _write(tmp_path, "dev.conllu", CONLLU)
    cfg = load_config(None, [f"data.train={train}", f"data.dev={clean}", f"data.test={clean}",
                             "data.skip_malformed=true", "data.max_train=0"])
    task = tasks.TaggingTask.load(cfg, hub.load_tokenizer(cfg.teacher))
    assert len(task.sentences["train"]) == 3
    assert any(note.startswith("skipped 2 malformed sentence(s)") for note in task.notes)
    assert "warning: skipped 2 malformed" in capsys.readouterr().out


def test_length_buckets_are_few_ascending_and_end_at_max_length():
    assert batching.length_buckets(128) == (32, 48, 64, 96, 128)
    assert batching.length_buckets(100) == (32, 48, 64, 96, 100)
    assert batching.length_buckets(32) == (32,)


def test_pad_rows_pads_each_row_and_adds_empty_rows():
    out = batching.pad_rows([[5, 6, 7], [8], ()], 4, num_rows=4, pad_value=1)
    np.testing.assert_array_equal(out, [[5, 6, 7, 1], [8, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert out.dtype == np.int32
