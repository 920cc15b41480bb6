"""Task loading: the label inventory covers every split; a tag training never saw is scored, with a warning."""

import numpy as np

from alad_train.config import load_config
from alad_jax.models import hub
from alad_train import tasks

TRAIN = "Peter B-PER\nBlackburn I-PER\nvisits O\nParis B-LOC\n\nThe O\nEU B-ORG\nsays O\nno O\n"
DEV = "Maria B-PER\nlikes O\nLisbon B-LOC\n"
TEST = "Ana B-PER\nwatched O\nFriends B-TVSHOW\n"  # B-TVSHOW never occurs in train


def test_tag_seen_only_in_test_is_in_the_inventory_and_warned_about(tmp_path, capsys):
    for name, text in (("train", TRAIN), ("dev", DEV), ("test", TEST)):
        (tmp_path / f"{name}.conll").write_text(text, encoding="utf-8")
    cfg = load_config(None, ["task=ner", "data.format=conll", "data.scheme=BIO", "data.max_train=0",
                             "data.max_dev=0", "data.max_test=0"]
                      + [f"data.{s}={tmp_path / (s + '.conll')}" for s in ("train", "dev", "test")])
    task = tasks.TaggingTask.load(cfg, hub.load_tokenizer(cfg.teacher))
    assert task.vocab.labels == ("B-LOC", "B-ORG", "B-PER", "B-TVSHOW", "I-PER", "O")
    assert "warning: labels B-TVSHOW occur in dev/test but never in train" in capsys.readouterr().out
    assert any("B-TVSHOW" in note for note in task.notes)
    # The unseen tag is encoded as a real label id on its word, so a model that misses it scores an error.
    tvshow = task.vocab.labels.index("B-TVSHOW")
    assert (np.concatenate(task.features["test"].labels) == tvshow).sum() == 1
    assert (np.concatenate(task.features["train"].labels) == tvshow).sum() == 0


def test_stage1_validation_sample_spans_every_corpus_file():
    from alad_jax.data import sources, splits

    cfg = load_config(None, [])
    corpus = sources.read_corpus(cfg.corpus)
    val, rest = splits.hash_holdout(corpus, 150)
    assert len(val) == 150 and len(rest) == len(corpus) - 150
    files = {str(s.source).rsplit(":", 1)[0] for s in val}
    assert len(files) == 2, files  # petrogold and danteshots, not only the first file
    again, _ = splits.hash_holdout(list(reversed(corpus)), 150)
    assert sorted(" ".join(s.words) for s in again) == sorted(" ".join(s.words) for s in val)  # order-free
