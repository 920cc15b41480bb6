"""What the teacher reads for each student row, when the two tokenizers differ.

Three cases, decided once per run by :func:`plan_teacher_inputs`:

- ``same``: one vocabulary; the teacher reads the student's ids.
- ``token``: other ids over the same word pieces (all-mpnet-base-v2 vs MiniLM:
  MPNet's ids are BERT's shifted, its specials are ``<s></s><pad>``). Every
  sentence of the run is checked to be cut into the same pieces with specials
  in the same places (:func:`~alad_jax.data.wordpieces.same_wordpieces`); then
  positions pair one to one and the teacher reads ``id_map[student_ids]``
  (pieces mapped by string, special tokens by role).
- ``word`` (config ``alignment.level = "word"``): the teacher tokenizes the
  words of each student row itself. The adapter still runs per student token;
  the loss compares per word the mean over the student's sub-words with the
  mean of the teacher's states over its own sub-words
  (:func:`alad_jax.adapter.word_align_mse`). Word ids are relative to the row's
  first word, so they fit in ``[0, row length)``.

A tokenizer pair that cuts some sentence differently under ``token`` is
refused with one line naming that sentence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from alad_jax.data.batching import DEFAULT_BUCKETS, bucket_length, pad_rows
from alad_jax.data.wordpieces import same_wordpieces
from alad_jax.errors import AladError

_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    """Same pieces under the same ids, and the same special tokens."""
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab() and all(
        getattr(teacher_tokenizer, role) == getattr(student_tokenizer, role) for role in _ROLES)


def id_map(teacher_tokenizer, student_tokenizer) -> np.ndarray:
    """int32 ``[student vocab]``: the teacher id of each student piece (by string; specials by role; else unknown)."""
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    unk = teacher_tokenizer.unk_token_id if teacher_tokenizer.unk_token_id is not None else 0
    out = np.full(max(student_vocab.values()) + 1, unk, np.int32)
    for piece, i in student_vocab.items():
        out[i] = teacher_vocab.get(piece, unk)
    for role in _ROLES:  # after the strings: MPNet's vocabulary also holds a plain "[CLS]"
        student_id = getattr(student_tokenizer, role + "_id", None)
        teacher_id = getattr(teacher_tokenizer, role + "_id", None)
        if student_id is not None and teacher_id is not None:
            out[student_id] = teacher_id
    return out


@dataclasses.dataclass
class TeacherRows:
    """The teacher's side of one set of student rows (see the module docstring).

    ``ids``: the teacher's token ids per row. Word level only: ``teacher_words``
    per teacher token and ``student_words`` / ``target_words`` per student token
    (row-relative word ids, -1 for specials; ``target_words`` is also -1 where
    the teacher has no token of the word, e.g. cut by its length limit).
    """

    level: str
    ids: list[np.ndarray]
    id_map: np.ndarray | None = None
    teacher_words: list[np.ndarray] | None = None
    student_words: list[np.ndarray] | None = None
    target_words: list[np.ndarray] | None = None
    pad_id: int = 0

    def add_to_batch(self, batch: dict[str, np.ndarray], *, teacher_ids: bool = True) -> dict[str, np.ndarray]:
        """``batch`` plus what alignment needs: the teacher's ids (if ``teacher_ids``) and, word level, word ids.

        Token level: ``teacher_input_ids [B, L]``. Word level: ``word_ids`` and
        ``target_word_ids [B, L]`` (student positions) and, with ``teacher_ids``,
        ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_word_ids [B, Lt]``.
        """
        if self.level == "same":
            return batch
        out = dict(batch)
        if self.level == "token":
            if teacher_ids:
                out["teacher_input_ids"] = self.id_map[batch["input_ids"]]
            return out
        rows = np.asarray(batch["feature_index"])
        length = batch["input_ids"].shape[1]
        out["word_ids"] = _pad([self.student_words[r] if r >= 0 else None for r in rows], length, -1)
        out["target_word_ids"] = _pad([self.target_words[r] if r >= 0 else None for r in rows], length, -1)
        if teacher_ids:
            longest = max([len(self.ids[r]) for r in rows if r >= 0] or [1])
            width = bucket_length(longest, DEFAULT_BUCKETS)
            ids = [self.ids[r] if r >= 0 else None for r in rows]
            out["teacher_input_ids"] = _pad(ids, width, self.pad_id)
            out["teacher_attention_mask"] = _pad([None if x is None else np.ones(len(x), np.int32) for x in ids],
                                                 width, 0)
            out["teacher_word_ids"] = _pad([self.teacher_words[r] if r >= 0 else None for r in rows], width, -1)
        return out

    def cache_kwargs(self) -> dict:
        """Arguments of :meth:`alad_jax.cache.HiddenCache.build` for the teacher's side ({} when shared)."""
        if self.level == "same":
            return {}
        if self.level == "token":
            return {"teacher_rows": self.ids}
        return {"teacher_rows": self.ids, "teacher_words": self.teacher_words, "student_words": self.student_words}


def _pad(rows: Sequence[np.ndarray | None], length: int, fill: int) -> np.ndarray:
    """``rows`` padded with ``fill`` to ``[len(rows), length]``; a missing row (None) is all ``fill``."""
    return pad_rows([() if row is None else row for row in rows], length, pad_value=fill)


@dataclasses.dataclass
class TeacherInputs:
    """The run's decision: ``level`` (same, token or word) and what it needs."""

    level: str
    teacher_tokenizer: object = None
    id_map: np.ndarray | None = None
    max_length: int = 512

    def rows(self, features, sentences: Sequence) -> TeacherRows:
        """The teacher's side of tagging ``features`` encoded from ``sentences`` (objects with ``.words``)."""
        if self.level == "same":
            return TeacherRows("same", list(features.input_ids))
        if self.level == "token":
            return TeacherRows("token", [self.id_map[r] for r in features.input_ids], id_map=self.id_map)
        if features.token_words is None:
            raise AladError("word-level alignment needs every sub-word's word (TaggingFeatures.token_words); "
                            "encode the rows with alad_jax.data.tagging.encode_tagging")
        tok = self.teacher_tokenizer
        starts, chunks = [], []
        for row, words in enumerate(features.token_words):
            present = words[words >= 0]
            first, last = (int(present.min()), int(present.max())) if len(present) else (0, -1)
            starts.append(first)
            chunks.append(list(sentences[features.sentence_index[row]].words[first:last + 1]) or [""])
        encoding = tok(chunks, is_split_into_words=True, add_special_tokens=True, truncation=True,
                       max_length=self.max_length, verbose=False)
        ids, teacher_words, student_words, target_words = [], [], [], []
        for row, words in enumerate(features.token_words):
            t_words = np.asarray([-1 if w is None else w for w in encoding.word_ids(row)], np.int32)
            s_words = np.where(words >= 0, words - starts[row], -1).astype(np.int32)
            ids.append(np.asarray(encoding["input_ids"][row], np.int32))
            teacher_words.append(t_words)
            student_words.append(s_words)
            target_words.append(np.where(np.isin(s_words, t_words[t_words >= 0]), s_words, -1).astype(np.int32))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return TeacherRows("word", ids, teacher_words=teacher_words, student_words=student_words,
                           target_words=target_words, pad_id=pad)


def plan_teacher_inputs(teacher_tokenizer, student_tokenizer, sentences: Sequence[Sequence[str]], *, level: str,
                        names: tuple[str, str] = ("teacher", "student"), max_length: int = 512) -> TeacherInputs:
    """Decide how the teacher reads the student's rows (module docstring).

    Args:
      sentences: every sentence the run aligns on, as lists of words.
      level: ``token`` or ``word`` (config ``alignment.level``).
      names: the teacher's and student's names, for the refusal.
      max_length: word level: the teacher's row limit in tokens.

    Raises:
      AladError: ``token`` and a sentence the two tokenizers cut differently.
    """
    if level == "word":
        return TeacherInputs("word", teacher_tokenizer, max_length=max_length)
    if level != "token":
        raise AladError(f"config key 'alignment.level' is {level!r}; use token or word")
    if same_vocabulary(teacher_tokenizer, student_tokenizer):
        return TeacherInputs("same")
    first = same_wordpieces(teacher_tokenizer, student_tokenizer, [list(s) for s in sentences])
    if first is not None:
        text = " ".join(sentences[first])
        text = text if len(text) <= 60 else text[:57] + "..."
        raise AladError(
            f"{names[0]} and {names[1]} cut sentence {first} ({text!r}) into different word pieces, so "
            f"token-level alignment cannot pair their positions; set alignment.level = \"word\" to align per word, "
            f"or pick a student that shares the teacher's tokenizer"
        )
    return TeacherInputs("token", teacher_tokenizer, id_map(teacher_tokenizer, student_tokenizer))
