"""The stage-1 feature cache built by one of several processes (``ALAD_COORDINATOR`` / ``ALAD_NUM_PROCESSES`` /
``ALAD_PROCESS_ID``), on tiny random encoders and rows.

    python tests/helpers/cache_worker.py OUT

builds ``OUT/cache`` and writes every row's cached states as this process reads them to ``OUT/p<i>.npz``.
Used by tests/test_cache_parts.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from flax import nnx

VOCAB = 120
ROWS = 11  # does not divide by 2: the shares differ


def encoders():
    from alad_jax.models import EncoderConfig, build_encoder

    def encoder(seed: int, hidden: int, layers: int):
        config = EncoderConfig(model_type="bert", vocab_size=VOCAB, hidden_size=hidden, num_layers=layers,
                               num_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
        return build_encoder(config, rngs=nnx.Rngs(seed))

    return encoder(1, 16, 1), encoder(2, 24, 2)


def rows() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.concatenate([[101], rng.integers(5, VOCAB, rng.integers(1, 40)), [102]]).astype(np.int32)
            for _ in range(ROWS)]


def read_all(cache) -> dict[str, np.ndarray]:
    """Every token's cached states, through the same indexing a batch's gather uses."""
    every = np.arange(int(cache.offsets[-1]))
    return {"student": np.asarray(cache.student[every], np.float32),
            "teacher": np.asarray(cache.teacher[every], np.float32), "offsets": np.asarray(cache.offsets)}


def main(out: Path) -> None:
    import jax

    from alad_jax import distributed
    from alad_jax.cache import HiddenCache

    distributed.initialize()
    student, teacher = encoders()
    cache = HiddenCache.build(out / "cache", rows(), student, teacher, batch_size=4)
    np.savez(out / f"p{jax.process_index()}.npz", **read_all(cache))
    distributed.finished()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
