"""The streamed stage-1 corpus (alad_jax.data.stream): shards, validation sample, resumable position, bad input.

The tokenizer is the real MiniLM one; the corpora are small text / CoNLL-U shards written here.
"""

import subprocess
import sys

import numpy as np
import pytest

from alad_train.config import load_config
from alad_jax.data import stream, tagging
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_train import align


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")


def _sentence(i: int) -> str:
    return f"frase {i} sobre petróleo e gás natural " + "muito " * (i % 7) + "longa"


@pytest.fixture
def shards(tmp_path):
    """Three text shards of 40, 25 and 35 sentences (sentence i of the stream names i)."""
    sizes, first = (40, 25, 35), 0
    for n, size in enumerate(sizes):
        lines = [_sentence(i) for i in range(first, first + size)]
        (tmp_path / f"part-{n:02d}.txt").write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
        first += size
    return tmp_path, first


def _corpus(paths, **kw):
    return load_config(overrides=["corpus.format=text", f"corpus.paths={paths!r}".replace("'", '"')]
                       + [f"corpus.{k}={v}" for k, v in kw.items()]).corpus


def _numbers(sentences) -> list[int]:
    return [int(words[1]) for words in sentences]


def test_two_processes_read_disjoint_shards_whose_union_is_the_stream_after_validation(shards):
    root, total = shards
    source = stream.source_of(_corpus([str(root / "part-*.txt")]))
    seen = []
    for process in range(2):
        it = stream._SentenceIterator(source, start=10, stop=None, process_index=process, process_count=2, passes=1)
        seen.append(_numbers(it))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(10, total))  # the union: the stream after its first 10
    assert seen[0] == list(range(10, total, 2)) and seen[1] == list(range(11, total, 2))
    assert _numbers(w.words for w in stream.read_sentences(source, 0, 10)) == list(range(10))  # validation: the head


def test_each_process_tokenizes_only_its_shard_into_packed_rows(shards, tokenizer):
    root, total = shards
    source = stream.source_of(_corpus([str(root / "part-*.txt")]))
    expected = {p: tagging.encode_tagging(
        [s for i, s in enumerate(stream.read_sentences(source, 10, total - 10)) if i % 2 == p], tokenizer, None,
        max_length=32, stride=8).input_ids for p in range(2)}
    for process in range(2):
        batches = list(stream.AlignmentStream(source, tokenizer, max_length=32, stride=8, gap=1, rows=4, skip=10,
                                              process_index=process, process_count=2, prefetch=0))
        assert {b["input_ids"].shape for b in batches} == {(4, 32)}
        # every token of this process's rows is in its batches once, and nothing else is
        got = np.sort(np.concatenate([b["input_ids"][b["attention_mask"] > 0] for b in batches]))
        assert np.array_equal(got, np.sort(np.concatenate(expected[process])))
        for b in batches:  # packed rows: positions restart per sentence, empty positions are segment 0
            assert np.all(b["segment_ids"][b["attention_mask"] == 0] == 0)
            starts = (b["position_ids"] == 0) & (b["attention_mask"] > 0)
            assert np.array_equal(starts.sum(1), b["segment_ids"].max(1))


def test_limit_and_passes(shards):
    root, total = shards
    source = stream.source_of(_corpus([str(root / "part-*.txt")]))
    it = stream._SentenceIterator(source, start=10, stop=10 + 7, process_index=0, process_count=1, passes=2)
    assert _numbers(it) == list(range(10, 17)) * 2


def test_a_restored_stream_continues_with_the_same_batches(shards, tokenizer):
    root, _ = shards
    source = stream.source_of(_corpus([str(root / "part-*.txt")]))
    make = lambda: stream.AlignmentStream(source, tokenizer, max_length=32, stride=8, gap=1, rows=2, skip=10, seed=3,
                                          passes=2)
    first = make()
    head = [next(first) for _ in range(5)]
    state = first.get_state()
    rest = list(first)
    resumed = make()
    resumed.set_state(state)
    again = list(resumed)
    assert len(rest) > 5 and len(again) == len(rest)
    for a, b in zip(rest, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(head[0][k], rest[0][k]) for k in head[0])


def test_conllu_shards_stream_their_word_forms(tmp_path):
    (tmp_path / "a.conllu").write_text(
        "# text = Olá mundo\n1\tOlá\tolá\tINTJ\t_\t_\t0\troot\t_\t_\n2\tmundo\tmundo\tNOUN\t_\t_\t1\tobj\t_\t_\n\n"
        "1-2\tdo\t_\t_\t_\t_\t_\t_\t_\t_\n1\tde\tde\tADP\t_\t_\t0\troot\t_\t_\n2\to\to\tDET\t_\t_\t1\tdet\t_\t_\n")
    corpus = load_config(overrides=["corpus.format=conllu", f'corpus.paths=["{tmp_path / "a.conllu"}"]']).corpus
    assert [s.words for s in stream.read_sentences(stream.source_of(corpus), 0, 5)] == [("Olá", "mundo"), ("de", "o")]


@pytest.mark.parametrize("case, message", [
    ("missing", "shard .*part-99.txt does not exist"),
    ("empty", "shard .*empty.txt holds no sentence"),
    ("glob", "the glob .*nothing-\\*.txt matches no file"),
])
def test_bad_shards_fail_in_one_line(shards, case, message):
    root, _ = shards
    (root / "empty.txt").write_text("\n\n")
    paths = {"missing": [str(root / "part-00.txt"), str(root / "part-99.txt")],
             "empty": [str(root / "part-00.txt"), str(root / "empty.txt")],
             "glob": [str(root / "nothing-*.txt")]}[case]
    with pytest.raises(AladError, match=message) as err:
        stream.source_of(_corpus(paths))
    assert "\n" not in str(err.value)


def test_a_hub_dataset_that_does_not_resolve_offline_stops_alad_align_in_one_line_before_any_step(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "alad_train.cli", "align", "--workdir", str(tmp_path / "w"),
                           "corpus.format=hf", "corpus.hf_name=no-such-user/no-such-corpus"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: corpus.hf_name 'no-such-user/no-such-corpus'"), done.stderr
    assert not (tmp_path / "w" / "checkpoints" / "align_w3").exists()  # no step was taken


def test_cache_policy_streams_above_the_budget_and_caches_below(shards, tokenizer):
    root, _ = shards
    overrides = ["corpus.format=text", f'corpus.paths=["{root}/part-*.txt"]', "corpus.max_sentences=80",
                 "corpus.val_sentences=10"]
    small = load_config(overrides=overrides + ["cache_budget_gb=1.0"])
    tiny = load_config(overrides=overrides + ["cache_budget_gb=1e-6"])
    whole = load_config(overrides=overrides + ["corpus.max_sentences=0", "cache_budget_gb=1000.0"])
    assert align.streams(small, tokenizer, 384, 384)[0] is False  # ~90 sentences x ~15 tokens x 768 x 2 B: 2 MB
    streamed, why = align.streams(tiny, tokenizer, 384, 384)
    assert streamed and "exceed cache_budget_gb" in why
    assert align.streams(whole, tokenizer, 384, 384) == (True, "corpus.max_sentences = 0: the whole stream")
    assert align.cache_gb(1_000_000, 384, 384) == pytest.approx(1.536)


def test_stages_align_from_is_the_config_key_from_and_only_stage_1_takes_it():
    cfg = load_config(overrides=["stages.align.from=runs/aligned"])
    assert cfg.stages.align.from_ == "runs/aligned"
    with pytest.raises(AladError, match="only stages.align.from"):
        load_config(overrides=["stages.continual.from=x.safetensors"])


def test_a_streamed_stage_with_a_linear_schedule_needs_max_steps(tmp_path):
    cfg = load_config(overrides=["stages.align.schedule=linear"])
    with pytest.raises(AladError, match="set stages.align.max_steps"):
        align.train_streamed(cfg, name="align_w3", student=None, teacher=None, adapter=None, tokenizer=None,
                             workdir=tmp_path, seed=0, mesh=None)
