"""A Hub dataset streamed by several processes: each host reads only its own part of the stream
(``datasets.distributed.split_dataset_by_node``), never another's. A local dataset folder of 4 JSON-lines
files stands in for the Hub (load_dataset resolves a folder as it resolves a Hub name; no network here)."""

import json

import pytest

from alad_train.config import load_config
from alad_jax.data import stream, tagging
from alad_jax.data.readers import TaggedSentence
from alad_jax.models import hub

FILES, ROWS, LINES = 4, 5, 3  # 4 files of 5 rows (articles) of 3 lines (paragraphs): 60 sentences


@pytest.fixture
def hub_standin(tmp_path):
    """Sentence ``f*100 + r*10 + l``: file f, row r, line l (its first word is that number)."""
    folder = tmp_path / "wiki"
    folder.mkdir()
    for f in range(FILES):
        rows = [{"id": f"{f}-{r}", "text": "\n".join(f"{f * 100 + r * 10 + l} parágrafo de teste" for l in range(LINES))}
                for r in range(ROWS)]
        (folder / f"train-{f:05d}-of-{FILES:05d}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = stream.source_of(load_config(overrides=["corpus.format=hf", f"corpus.hf_name={folder}"]).corpus)
    return source


def _numbers(sentences) -> list[int]:
    return [int(words[0]) for words in sentences]


def _file_of(number: int) -> int:
    return number // 100


def test_each_process_reads_only_its_part_of_a_hub_stream_and_the_parts_cover_it(hub_standin):
    everything = _numbers(stream._SentenceIterator(hub_standin, start=0, stop=None, process_index=0,
                                                   process_count=1, passes=1))
    assert len(everything) == FILES * ROWS * LINES
    validation = _numbers(w.words for w in stream.read_sentences(hub_standin, 0, 4, process_count=2))
    parts = [_numbers(stream._SentenceIterator(hub_standin, start=4, stop=None, process_index=p, process_count=2,
                                               passes=1)) for p in range(2)]
    # 4 files over 2 hosts: host p reads files p and p + 2, and nothing of the other host's files
    assert [sorted({_file_of(n) for n in part}) for part in parts] == [[0, 2], [1, 3]]
    assert validation == [0, 1, 2, 10]  # the head of process 0's part, never trained on
    assert set(parts[0]).isdisjoint(parts[1]) and not set(validation) & set(parts[0] + parts[1])
    assert sorted(validation + parts[0] + parts[1]) == sorted(everything)


def test_max_sentences_of_a_split_hub_stream_counts_the_whole_stream(hub_standin):
    tokenizer = hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    assert [stream.training_share(hub_standin, 7, p, 2) for p in range(2)] == [4, 3]
    counted = []
    for p in range(2):
        it = stream._SentenceIterator(hub_standin, start=4, stop=4 + 4 if p == 0 else 4 + 3, process_index=p,
                                      process_count=2, passes=1)
        counted.append(len(list(it)))
    assert counted == [4, 3]
    batches = stream.AlignmentStream(hub_standin, tokenizer, max_length=32, stride=8, gap=1, rows=2, skip=4, limit=7,
                                     process_index=1, process_count=2, prefetch=0)
    mine = [TaggedSentence(("%d" % n, "parágrafo", "de", "teste"), None, "x") for n in (100, 101, 102)]
    tokens = sum(len(r) for r in tagging.encode_tagging(mine, tokenizer, None, max_length=32, stride=8).input_ids)
    assert sum(int(b["attention_mask"].sum()) for b in batches) == tokens  # its 3 sentences, packed
