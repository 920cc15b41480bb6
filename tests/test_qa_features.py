"""QA features with the real MiniLM tokenizer on the shipped tiny SQuAD v2 files."""

import json
import logging
import math
import pathlib

import numpy as np
import pytest

from alad_jax.data.qa import (
    apply_null_threshold,
    best_null_threshold,
    encode_qa,
    make_qa_batches,
    postprocess_qa,
)
from alad_jax.data.readers import Answer, QAExample, read_squad
from alad_jax.errors import AladError
from alad_jax.metrics.squad import squad_v2_scores
from alad_jax.models.hub import load_tokenizer

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "squad_v2_tiny"
MAX_LENGTH, DOC_STRIDE = 256, 64


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module", params=["train", "dev"])
def split(request, tokenizer):
    examples = read_squad(DATA / f"{request.param}.json")
    features = encode_qa(examples, tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    return examples, features


def _oracle_logits(features) -> tuple[np.ndarray, np.ndarray]:
    """10 at each feature's labelled start/end (CLS for no answer in the window), 0 elsewhere."""
    rows = np.arange(len(features))
    start_logits = np.zeros(features.input_ids.shape, np.float32)
    end_logits = np.zeros(features.input_ids.shape, np.float32)
    start_logits[rows, features.start_positions] = 10.0
    end_logits[rows, features.end_positions] = 10.0
    return start_logits, end_logits


@pytest.mark.parametrize("name", ["train", "dev"])
def test_tiny_dataset_answer_offsets_are_exact(name, tokenizer):
    doc = json.loads((DATA / f"{name}.json").read_text())
    counts = {"answerable": 0, "unanswerable": 0, "multi_gold": 0, "long_contexts": 0}
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            if len(tokenizer(context, add_special_tokens=False)["input_ids"]) > 300:
                counts["long_contexts"] += 1
            for qa in paragraph["qas"]:
                spans = qa["answers"] + qa.get("plausible_answers", [])
                for answer in spans:
                    start = answer["answer_start"]
                    assert context[start : start + len(answer["text"])] == answer["text"], qa["id"]
                assert qa["is_impossible"] == (not qa["answers"]), qa["id"]
                counts["unanswerable" if qa["is_impossible"] else "answerable"] += 1
                counts["multi_gold"] += len({a["text"] for a in qa["answers"]}) > 1
    expected = {
        "train": {"answerable": 27, "unanswerable": 9, "multi_gold": 0, "long_contexts": 3},
        "dev": {"answerable": 12, "unanswerable": 4, "multi_gold": 10, "long_contexts": 2},
    }
    assert counts == expected[name]


def test_labels_map_back_to_the_answer_text(split):
    examples, features = split
    labelled = set()
    for i in range(len(features)):
        example = examples[features.example_index[i]]
        start, end = features.start_positions[i], features.end_positions[i]
        if start == 0:
            assert end == 0
            continue
        assert 0 < start <= end
        text = example.context[features.offsets[i, start, 0] : features.offsets[i, end, 1]]
        assert text == example.answers[0].text
        labelled.add(int(features.example_index[i]))
    answerable = {i for i, e in enumerate(examples) if e.answers}
    assert labelled == answerable  # every answer fits in some window; no unanswerable gets a span


def test_stride_windows_cover_the_whole_context_with_exact_overlap(split):
    examples, features = split
    multi_window = 0
    for index, example in enumerate(examples):
        rows = np.flatnonzero(features.example_index == index)
        multi_window += len(rows) > 1
        covered = np.zeros(len(example.context), bool)
        windows = []
        for row in rows:
            in_context = features.offsets[row, :, 0] >= 0
            spans = features.offsets[row, in_context]
            windows.append([tuple(s) for s in spans])
            for s, e in spans:
                covered[s:e] = True
        assert all(covered[i] or example.context[i].isspace() for i in range(len(example.context)))
        for left, right in zip(windows, windows[1:]):
            assert left[-DOC_STRIDE:] == right[:DOC_STRIDE]
    assert multi_window >= 2


def test_only_context_tokens_carry_offsets(split, tokenizer):
    _, features = split
    assert features.input_ids.shape == (len(features), MAX_LENGTH)
    assert features.offsets.shape == (len(features), MAX_LENGTH, 2)
    assert np.all(features.input_ids[:, 0] == tokenizer.cls_token_id)
    has_offset = features.offsets[..., 0] >= 0
    assert np.all(features.offsets[~has_offset] == -1)
    assert not np.any(has_offset & (features.token_type_ids == 0))
    assert not np.any(has_offset & (features.attention_mask == 0))
    # In the second segment only the closing [SEP] has no offset.
    assert np.all((features.token_type_ids == 1).sum(1) == has_offset.sum(1) + 1)


def test_oracle_logits_recover_gold_answers_and_null(split):
    examples, features = split
    predictions, na_diffs = postprocess_qa(examples, features, *_oracle_logits(features))
    for example in examples:
        if example.answers:
            assert predictions[example.id] == example.answers[0].text
            assert na_diffs[example.id] == pytest.approx(-20.0)  # null 0 (answer window) - span 20
        else:
            assert predictions[example.id] == ""
            assert na_diffs[example.id] == pytest.approx(20.0)  # null 20 - best span 0
    scores = squad_v2_scores(examples, predictions, na_probs=na_diffs)
    assert scores["exact"] == 100.0 and scores["f1"] == 100.0
    assert scores["HasAns_total"] > 0 and scores["NoAns_total"] > 0


def test_null_threshold_trades_null_for_span(split):
    examples, features = split
    predictions, _ = postprocess_qa(examples, features, *_oracle_logits(features), null_threshold=25.0)
    # With a threshold above the null margin every question gets its best span, including unanswerable ones.
    assert all(predictions[e.id] != "" for e in examples)


def test_span_search_respects_max_answer_length_and_context(tokenizer):
    context = "one two three four five six seven eight nine ten"
    example = QAExample("q", "which number?", context, (Answer("three", context.index("three")),))
    features = encode_qa([example], tokenizer, max_length=32, doc_stride=8)
    words = {context[s:e]: i for i, (s, e) in enumerate(features.offsets[0]) if s >= 0}
    start_logits = np.zeros((1, 32), np.float32)
    end_logits = np.zeros((1, 32), np.float32)
    start_logits[0, words["two"]] = 9.0  # best start, but "two".."nine" is 8 tokens long
    start_logits[0, words["five"]] = 6.0
    end_logits[0, words["nine"]] = 9.0
    end_logits[0, words["six"]] = 4.0
    start_logits[0, 1] = 20.0  # a question token: never an answer
    predictions, na_diffs = postprocess_qa([example], features, start_logits, end_logits, max_answer_length=4)
    # Within 4 tokens the best pair is five..six (6 + 4); two..x scores at most 9 + 0.
    assert predictions["q"] == "five six"
    assert na_diffs["q"] == pytest.approx(0.0 - 10.0)
    predictions, _ = postprocess_qa([example], features, start_logits, end_logits, max_answer_length=8)
    assert predictions["q"] == "two three four five six seven eight nine"


def test_best_null_threshold_maximises_dev_f1(split):
    examples, features = split
    start_logits, end_logits = _oracle_logits(features)
    # Blur the oracle: unanswerable questions get a tempting span, answerable ones a weaker null.
    rng = np.random.default_rng(0)
    start_logits += rng.normal(0.0, 6.0, start_logits.shape).astype(np.float32)
    end_logits += rng.normal(0.0, 6.0, end_logits.shape).astype(np.float32)
    with_span, na_diffs = postprocess_qa(examples, features, start_logits, end_logits, null_threshold=math.inf)
    assert all(with_span.values())
    threshold = best_null_threshold(examples, na_diffs, with_span)
    tuned = squad_v2_scores(examples, apply_null_threshold(with_span, na_diffs, threshold))
    best = squad_v2_scores(examples, with_span, na_probs=na_diffs)["best_f1"]
    assert tuned["f1"] == pytest.approx(best)
    for other in sorted(na_diffs.values()):
        untuned = squad_v2_scores(examples, apply_null_threshold(with_span, na_diffs, other))["f1"]
        assert untuned <= tuned["f1"] + 1e-9


def test_long_question_is_cut_and_reported(tokenizer, caplog):
    context = "The lamp could be seen from twenty-two miles away."
    question = "how far " * 40 + "could the lamp be seen?"
    example = QAExample("long", question, context, (Answer("twenty-two miles", context.index("twenty")),))
    with caplog.at_level(logging.WARNING, logger="alad_jax.data.qa"):
        features = encode_qa([example], tokenizer, max_length=64, doc_stride=16, max_query_length=16)
    assert "1 of 1 questions were longer than max_query_length=16" in caplog.text
    question_tokens = (features.token_type_ids[0] == 0) & (features.attention_mask[0] == 1)
    assert question_tokens.sum() == 16 + 2  # [CLS] + 16 question pieces + [SEP]
    start, end = features.start_positions[0], features.end_positions[0]
    assert context[features.offsets[0, start, 0] : features.offsets[0, end, 1]] == "twenty-two miles"


def test_bad_settings_and_answers_are_errors(tokenizer):
    context = "Kelmoor lies on the coast."
    good = QAExample("a", "where?", context, (Answer("on the coast", context.index("on")),))
    with pytest.raises(AladError, match=r"doc_stride=30 must be in \[0, 30\)"):
        encode_qa([good], tokenizer, max_length=35, doc_stride=30)  # room: 35 - 3 special - 2 question tokens = 30
    shifted = QAExample("b", "where?", context, (Answer("on the coast", 0),))
    with pytest.raises(AladError, match="question 'b': answer 'on the coast' is not at answer_start=0"):
        encode_qa([shifted], tokenizer, max_length=64, doc_stride=16)


def test_batches_have_fixed_shapes_and_cover_every_feature_once(split):
    _, features = split
    n = len(features)
    # batch_size is the global batch (as for tagging): 8 rows a step, 4 from each of 2 processes.
    shares = [
        make_qa_batches(features, batch_size=8, shuffle=True, seed=3, epoch=1, process_index=p, process_count=2)
        for p in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == math.ceil(n / 8)
    seen = []
    for batches in shares:
        for batch in batches:
            assert batch["input_ids"].shape == (4, MAX_LENGTH)
            assert batch["start_positions"].shape == (4,)
            rows = batch["feature_index"]
            real = rows >= 0
            np.testing.assert_array_equal(batch["input_ids"][real], features.input_ids[rows[real]])
            np.testing.assert_array_equal(batch["end_positions"][real], features.end_positions[rows[real]])
            assert not batch["attention_mask"][~real].any() and not batch["start_positions"][~real].any()
            seen.extend(rows[real].tolist())
    assert sorted(seen) == list(range(n))
    again = make_qa_batches(features, batch_size=8, shuffle=True, seed=3, epoch=1, process_index=0, process_count=2)
    other_epoch = make_qa_batches(features, batch_size=8, shuffle=True, seed=3, epoch=2, process_index=0, process_count=2)
    single = make_qa_batches(features, batch_size=8, shuffle=True, seed=3, epoch=1)
    for step, whole in enumerate(single):  # the shares of one step, in process order, are the 1-process batch
        np.testing.assert_array_equal(
            whole["feature_index"], np.concatenate([shares[0][step]["feature_index"], shares[1][step]["feature_index"]]))
    with pytest.raises(AladError, match="multiple of the process count 2"):
        make_qa_batches(features, batch_size=5, process_index=0, process_count=2)
    np.testing.assert_array_equal(again[0]["feature_index"], shares[0][0]["feature_index"])
    assert not all(np.array_equal(a["feature_index"], b["feature_index"]) for a, b in zip(again, other_epoch))
    in_order = make_qa_batches(features, batch_size=5)
    np.testing.assert_array_equal(in_order[0]["feature_index"], np.arange(5))
