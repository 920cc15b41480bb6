"""Word tags -> sub-word label ids, and per-window predictions -> one prediction per word.

The label of a word goes on its first sub-word (or on all of them with
``label_all_subwords``); other sub-words and special tokens get
:data:`IGNORE_INDEX`, as in the paper.

A sentence longer than ``max_length`` sub-words becomes several windows that
overlap by ``stride`` sub-words. Every sub-word position is *owned* by exactly
one window, the one where it is farthest from a window edge (so it sees the
most context on both sides); labels and ``word_index`` are set only at owned
positions, so training counts each word once and :func:`stitch_predictions`
gets exactly one prediction per word.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from alad_jax.data.readers import TaggedSentence
from alad_jax.errors import AladError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# The 17 Universal Dependencies part-of-speech tags, sorted. A corpus need not
# use all of them (Porttinari has no PART); LabelVocab(UPOS_LABELS) gives every
# UD corpus the same ids.
UPOS_LABELS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LabelVocab:
    """The tag set: tag name <-> id (the position in ``labels``)."""

    labels: tuple[str, ...]

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels):
            raise AladError(f"label vocabulary has duplicate labels: {list(self.labels)}")
        object.__setattr__(self, "_ids", {label: i for i, label in enumerate(self.labels)})

    @classmethod
    def from_sentences(cls, sentences: Iterable[TaggedSentence]) -> LabelVocab:
        """All tags in ``sentences``, sorted (so the ids are the same on every run)."""
        tags = {t for s in sentences if s.tags is not None for t in s.tags}
        if not tags:
            raise AladError("cannot build a label vocabulary: the sentences carry no tags (unlabelled data?)")
        return cls(tuple(sorted(tags)))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, tag: str, *, where: str = "") -> int:
        """Id of ``tag``; an unknown tag raises :class:`AladError` naming it, ``where`` and the known labels."""
        try:
            return self._ids[tag]
        except KeyError:
            raise AladError(
                f"{where or 'data'}: unknown label {tag!r}; known labels: {', '.join(self.labels)}; "
                "the evaluation data uses a tag the training data never had"
            ) from None

    def decode(self, label_id: int) -> str:
        return self.labels[label_id]

    def to_json(self) -> list[str]:
        return list(self.labels)

    @classmethod
    def from_json(cls, labels: Sequence[str]) -> LabelVocab:
        return cls(tuple(labels))


@dataclasses.dataclass
class TaggingFeatures:
    """Model inputs for tagging, one row per window (numpy, unpadded).

    Row ``i`` has length ``len_i <= max_length`` and includes special tokens
    (``[CLS] ... [SEP]``):

    - ``input_ids[i]``: int32 ``[len_i]``
    - ``labels[i]``: int32 ``[len_i]``; label id where this window owns a
      labelled sub-word, :data:`IGNORE_INDEX` elsewhere
    - ``word_index[i]``: int32 ``[len_i]``; the word's index in its sentence at
      first sub-words this window owns, -1 elsewhere
    - ``sentence_index``: int32 ``[num_windows]``; the sentence of each row
    - ``token_type_ids``: optional int32 ``[len_i]`` segment ids (QA rows carry
      question 0 / context 1); ``None`` means a single segment
    - ``token_words``: optional int32 ``[len_i]``; the sentence word of every
      sub-word (owned or not), -1 at special tokens (word-level alignment)

    ``num_truncated_words`` counts words left without an owned first sub-word
    (0 by construction: windows cover every position). ``num_empty_words``
    counts words the tokenizer turned into no sub-word (e.g. U+FE0F, private-use
    characters); each was encoded as the unknown token so it keeps its
    prediction slot.
    """

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    word_index: list[np.ndarray]
    sentence_index: np.ndarray
    num_sentences: int
    num_truncated_words: int
    num_empty_words: int = 0
    token_type_ids: list[np.ndarray] | None = None  # int32 [len_i] per row; None = one segment (all zeros)
    token_words: list[np.ndarray] | None = None  # int32 [len_i] per row: every sub-word's word, -1 at specials

    def __len__(self) -> int:
        return len(self.input_ids)


def _encode_words(sentences: Sequence[TaggedSentence], tokenizer) -> tuple[list[list[int]], list[list[int | None]], int]:
    """Sub-word ids with special tokens and their word ids, per sentence; words with no sub-word become UNK."""
    batch = [list(s.words) for s in sentences]
    # verbose=False: sequences over model_max_length are fine here, windows follow.
    enc = tokenizer(batch, is_split_into_words=True, add_special_tokens=True, verbose=False)
    ids = [list(x) for x in enc["input_ids"]]
    word_ids = [enc.word_ids(i) for i in range(len(batch))]
    missing: dict[int, list[int]] = {}  # sentence -> words without sub-words
    for i, sentence in enumerate(sentences):
        present = set(word_ids[i])
        absent = [j for j in range(len(sentence.words)) if j not in present]
        if absent:
            missing[i] = absent
    if missing and tokenizer.unk_token is None:
        i = next(iter(missing))
        raise AladError(f"{sentences[i].source}: words {missing[i]} tokenize to nothing and the tokenizer has no unknown token")
    if missing:
        redo = list(missing)
        fixed_words = [
            [tokenizer.unk_token if j in missing[i] else w for j, w in enumerate(sentences[i].words)] for i in redo
        ]
        fixed = tokenizer(fixed_words, is_split_into_words=True, add_special_tokens=True, verbose=False)
        for k, i in enumerate(redo):
            ids[i], word_ids[i] = list(fixed["input_ids"][k]), fixed.word_ids(k)
            if len({w for w in word_ids[i] if w is not None}) != len(fixed_words[k]):
                raise AladError(f"{sentences[i].source}: words {missing[i]} tokenize to no sub-word even as the unknown token")
    return ids, word_ids, sum(len(m) for m in missing.values())


def _window_starts(n: int, width: int, stride: int) -> list[int]:
    """Starts of windows of ``width`` over ``n`` positions, overlapping by ``stride``; the last ends at ``n``."""
    if n <= width:
        return [0]
    step = width - stride
    starts = list(range(0, n - width, step))
    starts.append(n - width)
    return starts


def _owners(n: int, starts: Sequence[int], width: int) -> np.ndarray:
    """int ``[n]``: for each position, the window where it is farthest from an edge (earliest on ties)."""
    pos = np.arange(n)[None, :]
    begin = np.asarray(starts)[:, None]
    centrality = np.minimum(pos - begin, begin + width - 1 - pos)
    centrality = np.where((pos >= begin) & (pos < begin + width), centrality, -1)
    return np.argmax(centrality, axis=0)


def encode_tagging(
    sentences: Sequence[TaggedSentence],
    tokenizer,
    vocab: LabelVocab | None,
    *,
    max_length: int = 128,
    stride: int = 32,
    label_all_subwords: bool = False,
) -> TaggingFeatures:
    """Tokenize ``sentences`` with a fast tokenizer and align their tags to sub-words.

    ``vocab=None`` (unlabelled text, alignment stages) leaves every label at
    :data:`IGNORE_INDEX`. Windows hold at most ``max_length`` ids including the
    special tokens and overlap by ``stride`` sub-words.
    """
    if not sentences:
        raise AladError("encode_tagging: no sentences to encode; check the data split is not empty")
    for sentence in sentences:
        if not sentence.words:
            raise AladError(f"{sentence.source or 'sentence'}: has no words; drop empty sentences before encoding")
    ids, word_ids, num_empty = _encode_words(sentences, tokenizer)
    out_ids, out_labels, out_words, out_sentence, out_token_words = [], [], [], [], []
    owned_words = 0
    for s, sentence in enumerate(sentences):
        if vocab is not None and sentence.tags is None:
            raise AladError(f"{sentence.source}: sentence has no tags but labels were asked for; use labelled data")
        wid = word_ids[s]
        n_prefix = next(i for i, w in enumerate(wid) if w is not None)
        n_suffix = next(i for i, w in enumerate(reversed(wid)) if w is not None)
        prefix = np.asarray(ids[s][:n_prefix], np.int32)
        suffix = np.asarray(ids[s][len(wid) - n_suffix :], np.int32)
        no_word_p, no_word_s = np.full(n_prefix, -1), np.full(n_suffix, -1)
        ignore_p, ignore_s = np.full(n_prefix, IGNORE_INDEX), np.full(n_suffix, IGNORE_INDEX)
        content = np.asarray(ids[s][n_prefix : len(wid) - n_suffix], np.int32)
        content_words = np.asarray(wid[n_prefix : len(wid) - n_suffix], np.int32)
        width = max_length - n_prefix - n_suffix
        if width <= stride:
            raise AladError(
                f"max_length={max_length} leaves {width} sub-words per window after special tokens, "
                f"which must exceed stride={stride}; raise max_length or lower stride"
            )
        n = len(content)
        first = np.ones(n, bool)
        first[1:] = content_words[1:] != content_words[:-1]
        if vocab is None:
            word_labels = np.full(len(sentence.words), IGNORE_INDEX, np.int32)
        else:
            word_labels = np.asarray(
                [vocab.encode(t, where=f"{sentence.source} word {j}") for j, t in enumerate(sentence.tags)], np.int32
            )
        labelled = np.ones(n, bool) if label_all_subwords else first
        starts = _window_starts(n, width, stride)
        owner = _owners(n, starts, width)
        for k, start in enumerate(starts):
            span = slice(start, start + width)
            owned = owner[span] == k
            words_here = content_words[span]
            index = np.where(owned & first[span], words_here, -1)
            labels = np.where(owned & labelled[span], word_labels[words_here], IGNORE_INDEX)
            out_ids.append(np.concatenate([prefix, content[span], suffix]))
            out_words.append(np.concatenate([no_word_p, index, no_word_s]).astype(np.int32))
            out_labels.append(np.concatenate([ignore_p, labels, ignore_s]).astype(np.int32))
            out_sentence.append(s)
            out_token_words.append(np.concatenate([no_word_p, words_here, no_word_s]).astype(np.int32))
            owned_words += int((index >= 0).sum())
    total_words = sum(len(s.words) for s in sentences)
    features = TaggingFeatures(
        input_ids=out_ids,
        labels=out_labels,
        word_index=out_words,
        sentence_index=np.asarray(out_sentence, np.int32),
        num_sentences=len(sentences),
        num_truncated_words=total_words - owned_words,
        num_empty_words=num_empty,
        token_words=out_token_words,
    )
    long_sentences = len(out_ids) - len(sentences)
    logger.info(
        "encoded %d sentences into %d windows (%d extra from long sentences); %d words without sub-words encoded as %s",
        len(sentences), len(out_ids), long_sentences, num_empty, tokenizer.unk_token,
    )
    return features


def stitch_predictions(features: TaggingFeatures, predictions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-window token predictions -> one prediction per word, per sentence.

    ``predictions[i]`` is ``[>= len_i]`` for row ``i`` (bucket padding past
    ``len_i`` is ignored). Returns ``num_sentences`` arrays ``[num_words]``.
    """
    if len(predictions) != len(features.input_ids):
        raise ValueError(f"{len(predictions)} prediction rows for {len(features.input_ids)} feature rows")
    sentence_of, word_of, value_of = [], [], []
    for row, (pred, index) in enumerate(zip(predictions, features.word_index)):
        pred = np.asarray(pred)
        if pred.shape[0] < index.shape[0]:
            raise ValueError(f"prediction row {row} has {pred.shape[0]} tokens, feature row has {index.shape[0]}")
        owned = index >= 0
        sentence_of.append(np.full(int(owned.sum()), features.sentence_index[row]))
        word_of.append(index[owned])
        value_of.append(pred[: index.shape[0]][owned])
    sentence_of, word_of = np.concatenate(sentence_of), np.concatenate(word_of)
    values = np.concatenate(value_of)
    order = np.lexsort((word_of, sentence_of))
    counts = np.bincount(sentence_of, minlength=features.num_sentences)
    bounds = np.cumsum(counts)[:-1]
    stitched = []
    for s, (words, preds) in enumerate(zip(np.split(word_of[order], bounds), np.split(values[order], bounds))):
        if not np.array_equal(words, np.arange(len(words))):
            raise ValueError(f"sentence {s}: owned word indices {words.tolist()} are not 0..{len(words) - 1} once each")
        stitched.append(preds)
    return stitched
