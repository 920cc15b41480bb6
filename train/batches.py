"""How a stage's rows become batches: bucketed by length, or packed several sentences to a row.

The strategy is one object, chosen once per stage or case from the config, the task and the AlAd's window
K (:func:`for_finetune`, :func:`for_alignment`), and handed to everything that batches: training, evaluation,
prediction and the cosine. Nothing else asks ``cfg.packing`` or reads K back out of a model.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from alad_jax import distributed
from alad_jax.data import batching
from alad_jax.errors import AladError
from alad_train.config import Config, StageConfig

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Bucketed:
    """Rows padded to the shortest length bucket that holds them (:func:`batching.length_buckets`)."""

    max_length: int
    eval_batch_size: int
    seed: int

    def train(self, features, stage: StageConfig, epoch: int, *, by_tokens: bool) -> list[Batch]:
        """An epoch's batches, shuffled: ``stage.batch_size`` rows each, or ``stage.token_budget`` tokens when
        the batch size is 0 (``by_tokens`` only matters when packed)."""
        del by_tokens
        size = {"batch_size": stage.batch_size} if stage.batch_size > 0 else {"token_budget": stage.token_budget}
        return batching.make_batches(
            features, **size, buckets=batching.length_buckets(self.max_length), shuffle=True, seed=self.seed,
            epoch=epoch, **distributed.batch_layout())

    def eval(self, features) -> list[Batch]:
        """Evaluation batches of ``eval_batch_size`` rows, in order."""
        return batching.make_batches(features, batch_size=self.eval_batch_size,
                                     buckets=batching.length_buckets(self.max_length))

    @staticmethod
    def rows(batches: list[Batch], outputs: list[np.ndarray], num_rows: int) -> list[np.ndarray]:
        """Per-batch outputs back to per-feature-row outputs."""
        return batching.rows_from_batches(batches, outputs, num_rows)


@dataclasses.dataclass(frozen=True)
class Packed:
    """Several sentences per row of ``max_length`` positions (block-diagonal attention, positions restarting per
    sentence), ``gap`` empty positions after each: half the AlAd's window K, so no window reaches into the next
    sentence (0 without an AlAd)."""

    max_length: int
    eval_batch_size: int
    seed: int
    gap: int

    def train(self, features, stage: StageConfig, epoch: int, *, by_tokens: bool) -> list[Batch]:
        """An epoch's batches, shuffled: ``token_budget // max_length`` packed rows (``by_tokens``: alignment), or
        as many as hold ``stage.batch_size`` sentences on average (fine-tunes count sentences)."""
        if by_tokens:
            if stage.token_budget <= 0:
                raise AladError("packed alignment batches hold token_budget positions: "
                                "set stages.align/continual.token_budget")
            rows_per_batch = max(stage.token_budget // self.max_length, 1)
        else:
            if stage.batch_size <= 0:
                raise AladError("packed tagging batches count sentences: set stages.*.batch_size "
                                "(token_budget is for alignment), or packing = false")
            rows_per_batch = _rows_per_batch(tuple(len(r) for r in features.input_ids), stage.batch_size,
                                             self.max_length, self.gap)
        return batching.make_packed_batches(
            features, rows_per_batch=rows_per_batch, length=self.max_length, gap=self.gap, shuffle=True,
            seed=self.seed, epoch=epoch, **distributed.batch_layout())

    def eval(self, features) -> list[Batch]:
        """Evaluation batches of ``eval_batch_size`` packed rows (one shape for every split), in order."""
        return batching.make_packed_batches(features, rows_per_batch=self.eval_batch_size, length=self.max_length,
                                            gap=self.gap, share_evenly=False)

    @staticmethod
    def rows(batches: list[Batch], outputs: list[np.ndarray], num_rows: int) -> list[np.ndarray]:
        """Per-batch outputs back to per-feature-row outputs."""
        return batching.rows_from_packed(batches, outputs, num_rows)


Batching = Bucketed | Packed


@functools.lru_cache(maxsize=16)
def _rows_per_batch(lengths: tuple[int, ...], batch_size: int, capacity: int, gap: int) -> int:
    """Packed rows per batch: the same for every epoch and process layout (lengths only), so computed once."""
    return batching.packed_rows_per_batch(list(lengths), batch_size, capacity, gap=gap)


def bucketed(cfg: Config) -> Bucketed:
    """Bucketed batches with ``cfg``'s lengths, evaluation batch size and seed."""
    return Bucketed(cfg.max_length, cfg.eval_batch_size, cfg.seed)


def packed(cfg: Config, window: int | None) -> Packed:
    """Packed batches with ``cfg``'s lengths, evaluation batch size and seed, for an AlAd of window K (None: none)."""
    return Packed(cfg.max_length, cfg.eval_batch_size, cfg.seed, gap=(window or 0) // 2)


def for_finetune(cfg: Config, window: int | None) -> Batching:
    """A fine-tune's (and its evaluation's) batches for a task model with an AlAd of window K (None: none):
    packed with ``packing``, except for QA, whose question windows fill ``max_length`` already."""
    return packed(cfg, window) if cfg.packing and cfg.task != "qa" else bucketed(cfg)


def for_alignment(cfg: Config, window: int, teacher_level: str) -> Batching:
    """An alignment stage's (and the cosine's) batches for window K: packed with ``packing`` when they train from
    the feature cache (it gathers packed positions), aligning token by token (``teacher_level`` same or token;
    word-level targets are gathered per row); bucketed otherwise."""
    if cfg.packing and cfg.cache_features and cfg.task != "qa" and teacher_level in ("same", "token"):
        return packed(cfg, window)
    return bucketed(cfg)
