"""Deterministic train/dev/test splits and subsets.

The split of a sentence depends only on its words, so it is the same on every
run and machine, whatever the order of the input, and identical sentences
always land in the same split (no test sentence is also a training sentence):

    h      = int(md5(" ".join(words).encode("utf-8")).hexdigest(), 16)
    bucket = h % 100
    test   if bucket <  T                      T = 100 // test_every
    dev    if T <= bucket < T + D              D = 100 // dev_every
    train  otherwise

With the defaults (10, 10) that is 10% test, 10% dev, 80% train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from alad_jax.data.readers import TaggedSentence
from alad_jax.errors import AladError

T = TypeVar("T")


def hash_bucket(words: Sequence[str]) -> int:
    """The sentence's bucket in ``[0, 100)``: md5 of the space-joined words, mod 100."""
    return int(hashlib.md5(" ".join(words).encode("utf-8")).hexdigest(), 16) % 100


def split_by_hash(
    sentences: Sequence[TaggedSentence], *, dev_every: int = 10, test_every: int = 10
) -> tuple[list[TaggedSentence], list[TaggedSentence], list[TaggedSentence]]:
    """``(train, dev, test)``: about 1 in ``dev_every`` sentences to dev, 1 in ``test_every`` to test.

    Input order is kept within each split. See the module docstring for the rule.
    """
    if dev_every < 1 or test_every < 1:
        raise AladError(f"split_by_hash: dev_every={dev_every} and test_every={test_every} must be >= 1")
    n_test, n_dev = 100 // test_every, 100 // dev_every
    if n_test + n_dev > 100:
        raise AladError(f"split_by_hash: dev_every={dev_every}, test_every={test_every} leave nothing for training")
    train, dev, test = [], [], []
    for sentence in sentences:
        bucket = hash_bucket(sentence.words)
        if bucket < n_test:
            test.append(sentence)
        elif bucket < n_test + n_dev:
            dev.append(sentence)
        else:
            train.append(sentence)
    return train, dev, test


def subsample(items: Sequence[T], n: int | None, *, seed: int) -> list[T]:
    """``n`` items drawn without replacement from ``seed``, in their original order; all if ``n`` is None or >= len."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise AladError(f"subsample: n={n} must be >= 0 (or None for all)")
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in chosen]


def hash_holdout(sentences: Sequence[TaggedSentence], n: int) -> tuple[list[TaggedSentence], list[TaggedSentence]]:
    """``(held_out, rest)``: the ``n`` sentences with the smallest md5 of their words, and the others.

    The choice depends only on the words, so it spreads over every input file
    (not the first ``n`` of the first file) and is the same on every run; both
    parts keep the input order.
    """
    if n < 0:
        raise AladError(f"hash_holdout: n={n} must be >= 0")
    digests = [hashlib.md5(" ".join(s.words).encode("utf-8")).digest() for s in sentences]
    chosen = set(sorted(range(len(sentences)), key=lambda i: (digests[i], i))[:n])
    held = [s for i, s in enumerate(sentences) if i in chosen]
    rest = [s for i, s in enumerate(sentences) if i not in chosen]
    return held, rest
