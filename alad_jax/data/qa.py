"""Extractive QA (SQuAD 2.0): features, fixed-shape batches and answer decoding.

A question + context pair becomes one or more *features*: ``[CLS] question
[SEP] context-window [SEP]`` padded to ``max_length``. Only the context is
truncated; a context too long for one feature is cut into windows that overlap
by ``doc_stride`` tokens (the Hugging Face ``stride`` convention: the overlap,
not the step). A feature's answer label is the first and last token of the
first gold answer when that answer lies wholly inside its window, else the CLS
position 0, which is also the label of unanswerable questions.

Decoding takes, per feature, the ``n_best`` highest start and end logits among
context tokens, keeps pairs with ``start <= end`` and at most
``max_answer_length`` tokens, and picks the best ``start + end`` score over all
windows of the question. The null score is ``start[CLS] + end[CLS]``, the
smallest over the windows; the answer is "" when ``null - best_span`` exceeds
a threshold tuned on dev (:func:`best_null_threshold`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import chex
import numpy as np

from alad_jax.data.readers import QAExample, check_answers
from alad_jax.errors import AladError
from alad_jax.metrics.squad import find_best_threshold, is_answerable, raw_scores

logger = logging.getLogger(__name__)

CLS_POSITION = 0
_NOT_CONTEXT = -1  # offset value of question, special and padding tokens


@dataclasses.dataclass
class QAFeatures:
    """Model inputs and labels of all features, row ``i`` from example ``example_index[i]``.

    Attributes:
      input_ids: int32 ``[n, max_length]``, ``[CLS] question [SEP] window [SEP]`` then padding.
      attention_mask: int32 ``[n, max_length]``, 1 on real tokens.
      token_type_ids: int32 ``[n, max_length]``, 1 on the window and its closing ``[SEP]``.
      start_positions: int32 ``[n]``, first answer token; 0 (CLS) when there is no answer in the window.
      end_positions: int32 ``[n]``, last answer token (inclusive); 0 likewise.
      offsets: int32 ``[n, max_length, 2]``, ``[start, end)`` character span of each
        window token in the example's context; ``(-1, -1)`` on every other token.
      example_index: int32 ``[n]``, index of the feature's example in the encoded sequence.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    offsets: np.ndarray
    example_index: np.ndarray

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _truncate_questions(examples: Sequence[QAExample], tokenizer, max_query_length: int) -> tuple[list[str], int]:
    """Questions cut to at most ``max_query_length`` word pieces at a token boundary, and the longest length."""
    questions = [e.question for e in examples]
    cut_ids = []
    for attempt in range(4):  # re-tokenising a cut word can add a piece; a few passes settle it
        encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        too_long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_query_length]
        if not too_long:
            break
        if attempt == 3:
            raise AladError(f"encode_qa: could not cut question {examples[too_long[0]].id!r} to {max_query_length} tokens")
        cut_ids = cut_ids or [examples[i].id for i in too_long]
        for i in too_long:
            questions[i] = questions[i][: encoded["offset_mapping"][i][max_query_length - 1][1]]
    if cut_ids:
        logger.warning(
            "encode_qa: %d of %d questions were longer than max_query_length=%d tokens and were cut (first: id %r)",
            len(cut_ids), len(examples), max_query_length, cut_ids[0],
        )
    return questions, max(len(ids) for ids in encoded["input_ids"])


def _answer_span(example: QAExample) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the first gold answer; None if unanswerable."""
    if not example.answers:
        return None
    (answer,) = check_answers(example.id, example.context, example.answers[:1], "encode_qa")
    return answer.start, answer.start + len(answer.text)


def _token_span(offsets: np.ndarray, in_context: np.ndarray, char_span: tuple[int, int]) -> tuple[int, int]:
    """First and last window token covering ``char_span``; CLS twice if not wholly inside the window."""
    context_tokens = np.flatnonzero(in_context)
    start_char, end_char = char_span
    if offsets[context_tokens[0], 0] > start_char or offsets[context_tokens[-1], 1] < end_char:
        return CLS_POSITION, CLS_POSITION
    starts, ends = offsets[context_tokens, 0], offsets[context_tokens, 1]
    first = context_tokens[np.flatnonzero(ends > start_char)[0]]
    last = context_tokens[np.flatnonzero(starts < end_char)[-1]]
    return int(first), int(last)


def encode_qa(
    examples: Sequence[QAExample],
    tokenizer,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> QAFeatures:
    """Tokenise ``examples`` into features (see :class:`QAFeatures`) with a fast tokenizer.

    Questions longer than ``max_query_length`` word pieces are cut (logged with
    a count). A window holds ``max_length - 3 - len(question)`` context
    tokens, which must exceed ``doc_stride`` so that windows advance.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise AladError(
            f"encode_qa: tokenizer {type(tokenizer).__name__} has no offset mapping; load a fast tokenizer (tokenizer.json)"
        )
    if not examples:
        raise AladError("encode_qa: no QA examples to encode; the data file is empty")
    for example in examples:
        if not example.context.strip():
            raise AladError(f"encode_qa: question {example.id!r} has an empty context; remove it or fill the context")
    questions, longest_question = _truncate_questions(examples, tokenizer, max_query_length)
    room = max_length - longest_question - 3  # [CLS] question [SEP] window [SEP]
    if not 0 <= doc_stride < room:
        raise AladError(
            f"encode_qa: doc_stride={doc_stride} must be in [0, {room}): max_length={max_length} leaves {room} "
            f"context tokens beside the longest question ({longest_question} tokens); lower doc_stride or "
            "max_query_length, or raise max_length"
        )
    answer_spans = [_answer_span(e) for e in examples]
    encoded = tokenizer(
        questions,
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
        padding_side="right",
    )
    n = len(encoded["input_ids"])
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int32).reshape(n, max_length, 2)
    start_positions = np.zeros(n, np.int32)
    end_positions = np.zeros(n, np.int32)
    example_index = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int32)
    for i in range(n):
        in_context = np.array([s == 1 for s in encoded.sequence_ids(i)])
        offsets[i, ~in_context] = _NOT_CONTEXT
        span = answer_spans[example_index[i]]
        if span is not None:
            start_positions[i], end_positions[i] = _token_span(offsets[i], in_context, span)
    features = QAFeatures(
        input_ids=np.asarray(encoded["input_ids"], np.int32),
        attention_mask=np.asarray(encoded["attention_mask"], np.int32),
        token_type_ids=np.asarray(encoded["token_type_ids"], np.int32),
        start_positions=start_positions,
        end_positions=end_positions,
        offsets=offsets,
        example_index=example_index,
    )
    if not np.all(features.input_ids[:, CLS_POSITION] == tokenizer.cls_token_id):
        raise AladError(f"encode_qa: tokenizer {tokenizer.name_or_path!r} does not put [CLS] first; use a BERT-style tokenizer")
    return features


def apply_null_threshold(
    predictions_with_span: Mapping[str, str], na_diffs: Mapping[str, float], null_threshold: float
) -> dict[str, str]:
    """Replace an answer by "" where its null score difference exceeds ``null_threshold``."""
    return {qid: "" if na_diffs[qid] > null_threshold else text for qid, text in predictions_with_span.items()}


def _best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, in_context: np.ndarray, n_best: int, max_answer_length: int
) -> tuple[float, int, int]:
    """Highest ``start + end`` over the n-best start x end pairs of one feature; -inf if none is valid.

    Candidates are drawn from context tokens only, so question, special and
    padding positions never crowd real candidates out of the n-best lists.
    """
    start_logits = np.where(in_context, start_logits, -np.inf)
    end_logits = np.where(in_context, end_logits, -np.inf)
    starts = np.argsort(-start_logits, kind="stable")[:n_best, None]
    ends = np.argsort(-end_logits, kind="stable")[None, :n_best]
    scores = start_logits[starts] + end_logits[ends]
    valid = np.isfinite(scores) & (ends >= starts) & (ends - starts < max_answer_length)
    if not valid.any():
        return -math.inf, 0, 0
    s, e = np.unravel_index(np.argmax(np.where(valid, scores, -np.inf)), scores.shape)
    return float(scores[s, e]), int(starts[s, 0]), int(ends[0, e])


def postprocess_qa(
    examples: Sequence[QAExample],
    features: QAFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Answer text per question id, and ``null - best_span`` score differences per id.

    Args:
      examples: the examples ``features`` were encoded from, in the same order.
      start_logits, end_logits: float ``[n_features, max_length]``.
      null_threshold: answer "" when ``null - best_span > null_threshold``;
        ``math.inf`` keeps every span (the input :func:`best_null_threshold` wants).

    Returns:
      ``(predictions, na_diffs)``; ``na_diffs`` (``inf`` where no valid span
      exists) serve as ``na_probs`` for :func:`alad_jax.metrics.squad_v2_scores`.
    """
    start_logits = np.asarray(start_logits, np.float32)
    end_logits = np.asarray(end_logits, np.float32)
    chex.assert_shape([start_logits, end_logits], features.input_ids.shape)
    if len(examples) != int(features.example_index.max()) + 1:
        raise AladError(
            f"postprocess_qa: features come from {int(features.example_index.max()) + 1} examples but "
            f"{len(examples)} were given; pass the examples the features were encoded from"
        )
    in_context = features.offsets[..., 0] >= 0
    order = np.argsort(features.example_index, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(features.example_index, minlength=len(examples)))[:-1])
    predictions, na_diffs = {}, {}
    for example, rows in zip(examples, groups):
        null_score = min(float(start_logits[f, CLS_POSITION] + end_logits[f, CLS_POSITION]) for f in rows)
        best_score, text = -math.inf, ""
        for f in rows:
            score, s, e = _best_span(start_logits[f], end_logits[f], in_context[f], n_best, max_answer_length)
            if score > best_score:
                best_score = score
                text = example.context[features.offsets[f, s, 0] : features.offsets[f, e, 1]]
        predictions[example.id] = text
        na_diffs[example.id] = null_score - best_score
    return apply_null_threshold(predictions, na_diffs, null_threshold), na_diffs


def best_null_threshold(
    examples: Sequence[QAExample], na_diffs: Mapping[str, float], predictions_with_span: Mapping[str, str]
) -> float:
    """The null threshold that maximises dev F1, by the official SQuAD 2.0 sweep.

    ``predictions_with_span`` and ``na_diffs`` come from :func:`postprocess_qa`
    with ``null_threshold=math.inf``; the returned value is then passed as its
    ``null_threshold`` (or to :func:`apply_null_threshold`) on dev and test.
    Unlike the official script, which reports 0.0 when answering nothing is
    best, this returns ``-inf`` then, so the threshold always reproduces the
    best dev score.
    """
    _, f1_scores = raw_scores(examples, predictions_with_span)
    has_answer = {e.id: is_answerable(e) for e in examples}
    _, threshold = find_best_threshold(
        predictions_with_span, f1_scores, na_diffs, has_answer, initial_threshold=-math.inf
    )
    return threshold


def threshold_to_json(threshold: float) -> float | str:
    """A null threshold as a strict JSON value: the number when finite, else "Infinity" / "-Infinity".

    JSON has no infinities, and both occur: ``-inf`` (answering nothing is best
    on dev) and ``inf`` (always answer). :func:`threshold_from_json` inverts it
    exactly (finite floats round-trip through JSON's shortest repr).
    """
    if math.isnan(threshold):
        raise AladError("null threshold is NaN; the dev null-score differences are broken")
    if math.isinf(threshold):
        return "Infinity" if threshold > 0 else "-Infinity"
    return float(threshold)


def threshold_from_json(value, source: str) -> float:
    """The null threshold :func:`threshold_to_json` wrote; anything else is an AladError naming ``source``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if value in ("Infinity", "-Infinity"):
        return float(value)
    raise AladError(
        f"{source}: null_threshold is {value!r}; expected a number, \"Infinity\" or \"-Infinity\" "
        "(null, which older versions wrote for both infinities, is ambiguous: retrain or set it by hand)"
    )


def _take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` as int32, with zeros where ``rows`` is -1 (an empty row)."""
    real = rows >= 0
    taken = array[np.where(real, rows, 0)].astype(np.int32)
    taken[~real] = 0
    return taken


def process_share(global_batch_size: int, device_count: int = 1) -> dict[str, int]:
    """:func:`make_qa_batches` arguments for this process's share of ``global_batch_size`` features per step.

    ``batch_size`` stays the global batch (:func:`make_qa_batches` gives every
    process its ``1 / process_count`` share), so P processes together see
    exactly the batches one process would; the global size must divide over the
    ``device_count`` devices.
    """
    import jax

    if global_batch_size < 1 or global_batch_size % device_count or global_batch_size % jax.process_count():
        raise AladError(
            f"QA batch_size={global_batch_size} does not divide over the {device_count} devices of"
            f" {jax.process_count()} process(es): use a multiple of {int(np.lcm(device_count, jax.process_count()))}"
        )
    return {"batch_size": global_batch_size, "process_index": jax.process_index(),
            "process_count": jax.process_count()}


def make_qa_batches(
    features: QAFeatures,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """This process's share of fixed-shape batches over ``features``.

    ``batch_size`` is the global batch, as for tagging
    (:func:`alad_jax.data.batching.make_batches`): step ``k`` of all processes
    together covers ``batch_size`` features, ``batch_size / process_count`` from
    each, and every process gets the same number of batches; concatenating the
    shares in process order gives the single-process batch. The order is a permutation drawn from
    ``(seed, epoch)`` when ``shuffle``, identical on all processes. Rows past
    the end are empty: mask 0, positions 0 and ``feature_index`` -1, which a
    loss must ignore.

    Returns:
      Batches with int32 ``input_ids``, ``attention_mask``, ``token_type_ids``
      ``[b, max_length]`` and ``start_positions``, ``end_positions``,
      ``feature_index`` ``[b]``, with ``b = batch_size / process_count`` local rows.
    """
    if batch_size < 1 or batch_size % max(process_count, 1):
        raise AladError(f"make_qa_batches: batch_size is {batch_size}; use a positive multiple of the process "
                        f"count {process_count} (it is the global batch)")
    if not 0 <= process_index < process_count:
        raise AladError(f"make_qa_batches: process_index {process_index} is outside [0, {process_count})")
    n = len(features)
    if n == 0:
        raise AladError("make_qa_batches: no QA features to batch; the data is empty")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    num_batches = -(-n // batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int32)
    padded[:n] = order
    local = padded.reshape(num_batches, process_count, batch_size // process_count)[:, process_index]
    return [
        {
            "input_ids": _take_rows(features.input_ids, rows),
            "attention_mask": _take_rows(features.attention_mask, rows),
            "token_type_ids": _take_rows(features.token_type_ids, rows),
            "start_positions": _take_rows(features.start_positions, rows),
            "end_positions": _take_rows(features.end_positions, rows),
            "feature_index": rows,
        }
        for rows in local
    ]
