"""Teacher and student tokenizations side by side: same word pieces or not, and word ids for word-level alignment.

Token-level alignment compares teacher token t with student token t, which only
means something when both tokenizers cut every sentence into the same word
pieces, in the same words, with their special tokens in the same places. The
special tokens themselves may differ: all-mpnet-base-v2 writes `<s> ... </s>`
where MiniLM writes `[CLS] ... [SEP]`, over the same uncased WordPiece
vocabulary, so their positions still line up one to one. Pieces are compared
as strings (the two vocabularies number them differently: MPNet's ids are
BERT's shifted by 4), and each side's unknown token counts as the same piece.

When the pieces differ, alignment has to go through words instead
(`alad_jax.adapter.losses.word_align_mse`), which needs each token's word as a
static-shape array: :func:`word_ids_array`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alad_jax.data.batching import pad_rows
from alad_jax.errors import AladError

_UNKNOWN = object()  # stands for either tokenizer's unknown token
_CHUNK = 512  # sentences per tokenizer call: bounded memory, early exit on a difference


def _layout(tokenizer, sentences: list, pretokenized: bool) -> list[tuple]:
    """Per sentence: one (piece or None for a special token, word id) pair per token."""
    encoding = tokenizer(
        sentences, is_split_into_words=pretokenized, add_special_tokens=True,
        return_special_tokens_mask=True, verbose=False,
    )
    layouts = []
    for i, ids in enumerate(encoding["input_ids"]):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        special = encoding["special_tokens_mask"][i]
        layouts.append(tuple(
            (None if is_special else _UNKNOWN if piece == tokenizer.unk_token else piece, word)
            for piece, is_special, word in zip(pieces, special, encoding.word_ids(i))
        ))
    return layouts


def same_wordpieces(teacher_tokenizer, student_tokenizer, sentences: Sequence[str] | Sequence[Sequence[str]]) -> int | None:
    """Index of the first sentence the two tokenizers split differently, or None when all agree.

    Two tokenizations agree when they have the same number of tokens, special
    tokens at the same positions (which ones does not matter), and the same
    word piece with the same word id at every other position.

    Args:
      teacher_tokenizer, student_tokenizer: fast Hugging Face tokenizers.
      sentences: raw strings, or sentences already split into words (lists or
        tuples of str, as the CoNLL readers give them); not a mix.

    Returns:
      The index into `sentences` of the first differing sentence, or None.
    """
    if not sentences:
        return None
    pretokenized = not isinstance(sentences[0], str)
    if any(isinstance(s, str) == pretokenized for s in sentences):
        raise AladError("same_wordpieces: pass either raw strings or lists of words for every sentence, not a mix")
    for start in range(0, len(sentences), _CHUNK):
        chunk = [s if isinstance(s, str) else list(s) for s in sentences[start:start + _CHUNK]]
        teacher = _layout(teacher_tokenizer, chunk, pretokenized)
        student = _layout(student_tokenizer, chunk, pretokenized)
        for offset, (a, b) in enumerate(zip(teacher, student)):
            if a != b:
                return start + offset
    return None


def word_ids_array(word_ids: Sequence[Sequence[int | None]], length: int) -> np.ndarray:
    """Per-token word indices as a padded int32 array ``[batch, length]``; -1 for special tokens and padding.

    Args:
      word_ids: per sentence, a tokenizer's ``word_ids()`` (None for special tokens).
      length: the padded sequence length of the batch.

    Raises:
      AladError: a sentence has more tokens than ``length``.
    """
    for row, ids in enumerate(word_ids):
        if len(ids) > length:
            raise AladError(f"word_ids_array: sentence {row} has {len(ids)} tokens, more than the length {length}")
    return pad_rows([[-1 if w is None else w for w in ids] for ids in word_ids], length, pad_value=-1)
