"""SQuAD 2.0 exact match and F1 with the official evaluation's semantics.

Restates the official ``evaluate-v2.0.py``: answers are normalised (lower
case, punctuation and the articles a/an/the removed, whitespace collapsed);
a question scores the max over its gold answers; a question whose gold
answers are all empty after normalisation is unanswerable and its only gold
answer is "", so it scores 1 exactly when the prediction normalises to "".
Scores are percentages, as the official script prints them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from alad_jax.errors import AladError

if TYPE_CHECKING:  # metrics only read .id and .answers; no import-time tie to the data package
    from alad_jax.data.readers import QAExample

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, drop a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _gold_or_null(gold_answers: Sequence[str]) -> list[str]:
    # Gold answers that normalise to nothing carry no information (official rule).
    kept = [a for a in gold_answers if normalize_answer(a)]
    return kept or [""]


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # Either side is "no answer": full marks only when both are.
        return float(pred_tokens == gold_tokens)
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    With no (non-empty) gold answer the question is unanswerable and only a
    prediction that normalises to "" scores 1.0.
    """
    return max(_exact(prediction, gold) for gold in _gold_or_null(gold_answers))


def f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and the best gold answer (0..1)."""
    return max(_f1(prediction, gold) for gold in _gold_or_null(gold_answers))


def is_answerable(example: QAExample) -> bool:
    """Whether any gold answer survives normalisation (the official HasAns test)."""
    return any(normalize_answer(a.text) for a in example.answers)


def raw_scores(
    examples: Sequence[QAExample], predictions: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question exact match and F1 (0..1), keyed by id; a missing prediction is an error."""
    exact_scores, f1_scores = {}, {}
    for example in examples:
        if example.id not in predictions:
            raise AladError(
                f"SQuAD scoring: no prediction for question id {example.id!r}; predict '' for questions judged unanswerable"
            )
        gold = [a.text for a in example.answers]
        exact_scores[example.id] = exact_match(predictions[example.id], gold)
        f1_scores[example.id] = f1(predictions[example.id], gold)
    return exact_scores, f1_scores


def find_best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
    *,
    initial_threshold: float = 0.0,
) -> tuple[float, float]:
    """Best score (percent) over null thresholds, and the threshold reaching it.

    The official sweep: start from "every question answered null" (score =
    number of unanswerable questions), then, in increasing order of the null
    score ``na_probs``, switch questions over to their predicted text: an
    answerable one gains its score, an unanswerable one loses 1 if its
    prediction is non-empty. The threshold is the null score of the last
    question switched at the best point, so "predict null when na_prob >
    threshold" reproduces the best score. ``initial_threshold`` is what is
    returned when no switch helps; the official script uses 0.0.
    """
    best = current = sum(1 for qid in scores if not has_answer[qid])
    best_threshold = initial_threshold
    for qid in sorted(scores, key=lambda q: na_probs[q]):
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def squad_v2_scores(
    examples: Sequence[QAExample],
    predictions: Mapping[str, str],
    *,
    na_probs: Mapping[str, float] | None = None,
) -> dict:
    """The official SQuAD 2.0 evaluation dict for ``predictions`` (id -> answer text).

    ``exact``/``f1`` score the predictions as given (the official script with
    its default ``na_prob_thresh`` leaves them unchanged too). ``HasAns_*`` and
    ``NoAns_*`` break them down; a subset with no questions reports total 0 and
    scores 0.0 (the official script omits such keys). With ``na_probs`` (id ->
    null score, higher = more likely unanswerable; e.g. the score differences
    of :func:`alad_jax.data.qa.postprocess_qa`) the dict also holds
    ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh`` from
    the official threshold sweep (:func:`find_best_threshold`).
    """
    if not examples:
        raise AladError("SQuAD scoring: no questions to score; the evaluation data is empty")
    exact_scores, f1_scores = raw_scores(examples, predictions)
    has_answer = {e.id: is_answerable(e) for e in examples}

    def subset(ids: list[str]) -> tuple[float, float, int]:
        if not ids:
            return 0.0, 0.0, 0
        return (
            100.0 * sum(exact_scores[i] for i in ids) / len(ids),
            100.0 * sum(f1_scores[i] for i in ids) / len(ids),
            len(ids),
        )

    ids = list(exact_scores)
    result = {}
    for prefix, group in (
        ("", ids),
        ("HasAns_", [i for i in ids if has_answer[i]]),
        ("NoAns_", [i for i in ids if not has_answer[i]]),
    ):
        exact, f1_score, total = subset(group)
        result.update({f"{prefix}exact": exact, f"{prefix}f1": f1_score, f"{prefix}total": total})
    if na_probs is not None:
        missing = [i for i in ids if i not in na_probs]
        if missing:
            raise AladError(
                f"SQuAD scoring: na_probs has no null score for question id {missing[0]!r} ({len(missing)} missing); give one per question"
            )
        result["best_exact"], result["best_exact_thresh"] = find_best_threshold(
            predictions, exact_scores, na_probs, has_answer
        )
        result["best_f1"], result["best_f1_thresh"] = find_best_threshold(predictions, f1_scores, na_probs, has_answer)
    return result
