"""A tiny student -> AlAd -> tagging head model and its training step, for the sharding tests.

Built from the project's real encoder, adapter and tagging head; the step has the form the
training loop jits: ``(trainable, frozen, opt_state, batch, key) ->
(trainable, opt_state, metrics)``, with dropout in the head so the key matters.
Imported by the pytest process and by the worker scripts next to it; a
worker sets XLA_FLAGS before importing it (importing it imports jax).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alad_jax import sharding
from alad_jax.adapter import AlignmentAdapter
from alad_jax.models.config import EncoderConfig
from alad_jax.models.heads import TaggingHead
from alad_jax.models.modeling import build_encoder
from alad_jax.models import precision
from alad_train.state import create_train_state, make_train_step

ROWS, SEQ, NUM_LABELS = 16, 8, 5
IGNORE_INDEX = -100
# Everything trains except the embedding tables, which stay frozen: both
# parameter groups then go through the sharding rules.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("embeddings")))


class TinyTaskModel(nnx.Module):
    """BERT-like student (hidden 32) -> AlAd K=3 (to width 48) -> tagging head."""

    def __init__(self):
        rngs = nnx.Rngs(0)  # only shapes are used: init() fills in the values
        config = EncoderConfig(
            model_type="bert", vocab_size=50, hidden_size=32, num_layers=1, num_heads=4,
            intermediate_size=64, max_position_embeddings=SEQ,
        )
        self.encoder = build_encoder(config, rngs=rngs)
        self.adapter = AlignmentAdapter(32, 48, window=3, hidden_dim=64, rngs=rngs)
        self.head = TaggingHead(48, NUM_LABELS, rngs=rngs)

    def __call__(self, batch, key):
        # Dropout in the head only: one site proves the key reaches every device
        # the same way, and each site costs ~0.4 s of XLA compile time on CPU.
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        return self.head(self.adapter(hidden, batch["attention_mask"]), deterministic=False, rngs=key)


def make_batch(step: int, rows: int = ROWS) -> dict[str, np.ndarray]:
    """Deterministic padded batch number ``step``: input_ids, attention_mask, labels, each [rows, SEQ]."""
    rng = np.random.default_rng(1000 + step)
    lengths = rng.integers(3, SEQ + 1, size=rows)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = np.where(mask, rng.integers(1, 50, size=(rows, SEQ)), 0).astype(np.int32)
    labels = np.where(mask, rng.integers(0, NUM_LABELS, size=(rows, SEQ)), IGNORE_INDEX).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def loss_fn(model: TinyTaskModel, batch, key):
    logits = model(batch, key)
    valid = batch["labels"] != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, batch["labels"], 0))
    return (ce * valid).sum() / jnp.maximum(valid.sum(), 1)


def optimizer() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.98, weight_decay=0.01))


def make_step(graphdef, tx: optax.GradientTransformation):
    """The training loop's own step (alad_train.loop.make_train_step), so the sharding proof covers it."""
    return make_train_step(graphdef, lambda model, batch, key: (loss_fn(model, batch, key), {}), tx)


def _numpy_values(abstract_state, seed: int):
    """Random float32 values for an abstract state, seeded by each leaf's path.

    Built in numpy: initialising through nnx would compile dozens of tiny
    programs op by op, which costs seconds on a loaded 2-core machine.
    """

    def one(path, leaf):
        name = sharding.path_str(path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        value = rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
        return value + 1.0 if name.endswith("scale") else value

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def init(seed: int = 0):
    """(graphdef, trainable, frozen, tx), params as host numpy arrays."""
    graphdef, trainable, frozen = nnx.split(nnx.eval_shape(TinyTaskModel), TRAINABLE, ...)
    return graphdef, _numpy_values(trainable, seed), _numpy_values(frozen, seed), optimizer()


def step_key(step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(42), step)


def train_single_device(steps: int, seed: int = 0, matmul_dtype: str = "float32"):
    """Reference: ``steps`` steps under a plain jit on one device.

    Returns (history, trainable, opt_state): history is one ``{"loss", "grad_norm"}`` per step.
    """
    graphdef, trainable, frozen, tx = init(seed)
    opt_state = jax.jit(tx.init)(trainable)
    step_fn = jax.jit(make_step(precision.step_graphdef(graphdef, trainable, frozen, matmul_dtype=matmul_dtype,
                                                                adapter_impl=precision.step_adapter_impl(matmul_dtype)), tx))
    history = []
    for i in range(steps):
        trainable, opt_state, metrics = step_fn(trainable, frozen, opt_state, make_batch(i), step_key(i))
        history.append({k: float(v) for k, v in metrics.items()})
    return history, trainable, opt_state


def train_sharded(mesh, steps: int, seed: int = 0, rows: slice = slice(None), matmul_dtype: str = "float32"):
    """``steps`` steps over ``mesh`` through the training state factory ``fit`` uses, feeding
    ``make_batch(i)[rows]`` from this process.

    Returns (history, trainable, frozen, opt_state, shardings), arrays still on the mesh.
    """
    graphdef, trainable, frozen, tx = init(seed)
    state = create_train_state(graphdef, trainable, frozen, lambda m, b, k: (loss_fn(m, b, k), {}), tx, mesh,
                               matmul_dtype=matmul_dtype)
    history = []
    for i in range(steps):
        local = {k: v[rows] for k, v in make_batch(i).items()}
        batch = sharding.shard_batch(local, mesh)
        key = sharding.replicate(step_key(i), mesh)
        metrics = state.step(batch, key)
        history.append({k: float(v) for k, v in metrics.items()})
    return history, state.trainable, state.frozen, state.opt_state, state.shardings


def flat_numpy(tree) -> dict[str, np.ndarray]:
    """'/'-joined path -> full numpy array (gathered across processes)."""
    host = sharding.gather_to_host(tree)
    return {sharding.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(host)}
