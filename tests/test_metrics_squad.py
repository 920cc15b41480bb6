"""SQuAD 2.0 exact match / F1 against hand-computed cases of the official semantics."""

import pytest

from alad_jax.data.readers import Answer, QAExample
from alad_jax.errors import AladError
from alad_jax.metrics.squad import exact_match, f1, find_best_threshold, normalize_answer, squad_v2_scores


def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("  The Quick,   brown FOX! ") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre and anchor") == "theatre and anchor"  # articles only as whole words
    assert normalize_answer("A.") == ""
    assert normalize_answer("U.S.-based") == "usbased"


def test_exact_match_takes_the_best_gold_answer():
    assert exact_match("in 1887", ["1887", "in 1887"]) == 1.0
    assert exact_match("1887.", ["1887"]) == 1.0
    assert exact_match("the Tongue", ["Tongue"]) == 1.0
    assert exact_match("1888", ["1887", "in 1887"]) == 0.0


def test_f1_is_bag_of_tokens_overlap_with_the_best_gold():
    # pred {red, fox} vs gold {red, fox, jumped}: P = 1, R = 2/3.
    assert f1("the red fox", ["red fox jumped"]) == pytest.approx(0.8)
    assert f1("the red fox", ["blue", "red fox jumped"]) == pytest.approx(0.8)
    # Repeated tokens count once per occurrence on both sides: P = 1/3, R = 1.
    assert f1("fox fox fox", ["fox"]) == pytest.approx(0.5)
    assert f1("a cat", ["dog"]) == 0.0


def test_empty_prediction_scores_zero_on_answerable_one_on_unanswerable():
    assert exact_match("", ["1887"]) == 0.0
    assert f1("", ["1887"]) == 0.0
    assert exact_match("", []) == 1.0
    assert f1("", []) == 1.0
    assert exact_match("1887", []) == 0.0
    assert f1("1887", []) == 0.0
    # Official rule: what normalises to "" is no answer, on either side.
    assert exact_match("the", []) == 1.0
    assert exact_match("", ["."]) == 1.0


def _example(qid: str, *answers: str) -> QAExample:
    context = "Marta Oswin built the red lighthouse in 1887 at the end of the Tongue."
    return QAExample(qid, "q?", context, tuple(Answer(a, context.index(a)) for a in answers))


EXAMPLES = [
    _example("has-1", "1887", "in 1887"),
    _example("has-2", "the red lighthouse"),
    _example("no-1"),
    _example("no-2"),
]
PREDICTIONS = {"has-1": "in 1887", "has-2": "red lighthouse in", "no-1": "", "no-2": "Marta Oswin"}


def test_scores_break_down_into_has_answer_and_no_answer():
    # has-2: pred {red, lighthouse, in} vs gold {red, lighthouse}: P = 2/3, R = 1, F1 = 0.8.
    scores = squad_v2_scores(EXAMPLES, PREDICTIONS)
    assert scores == pytest.approx(
        {
            "exact": 50.0,
            "f1": 100 * (1 + 0.8 + 1 + 0) / 4,
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 90.0,
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        }
    )


def test_best_threshold_follows_the_official_sweep():
    # Sweep in na order: start 2 (all null); has-1 +1 -> 3 @0.1; no-1 +0 @0.3;
    # has-2 +0.8 (F1) / +0 (EM) @0.6; no-2 -1 @0.7.
    na_probs = {"has-1": 0.1, "no-1": 0.3, "has-2": 0.6, "no-2": 0.7}
    scores = squad_v2_scores(EXAMPLES, PREDICTIONS, na_probs=na_probs)
    assert scores["best_f1"] == pytest.approx(95.0)
    assert scores["best_f1_thresh"] == 0.6
    assert scores["best_exact"] == pytest.approx(75.0)
    assert scores["best_exact_thresh"] == 0.1
    # Applying the threshold reproduces the best score.
    thresholded = {q: "" if na_probs[q] > 0.6 else p for q, p in PREDICTIONS.items()}
    assert squad_v2_scores(EXAMPLES, thresholded)["f1"] == pytest.approx(95.0)


def test_best_threshold_when_answering_nothing_is_best():
    has_answer = {"a": False, "b": False}
    predictions = {"a": "x", "b": "y"}
    best, threshold = find_best_threshold(predictions, {"a": 0.0, "b": 0.0}, {"a": 0.2, "b": 0.4}, has_answer)
    assert (best, threshold) == (100.0, 0.0)
    _, threshold = find_best_threshold(
        predictions, {"a": 0.0, "b": 0.0}, {"a": 0.2, "b": 0.4}, has_answer, initial_threshold=float("-inf")
    )
    assert threshold == float("-inf")


def test_missing_prediction_names_the_question():
    with pytest.raises(AladError, match="no prediction for question id 'no-2'"):
        squad_v2_scores(EXAMPLES, {k: v for k, v in PREDICTIONS.items() if k != "no-2"})
    with pytest.raises(AladError, match="na_probs has no null score for question id 'has-1'"):
        squad_v2_scores(EXAMPLES, PREDICTIONS, na_probs={"has-2": 0.0, "no-1": 0.0, "no-2": 0.0})
