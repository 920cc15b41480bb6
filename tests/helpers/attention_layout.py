"""Worker: one bfloat16 train-step gradient of a MiniLM-shaped encoder (2 layers, hidden 384, 12 heads of 32)
and a tagging head, on 1 device and with the same 10 rows split over 2 simulated CPU devices.

    python tests/helpers/attention_layout.py [--jax-softmax]

Prints one JSON object: per parameter, ||g(1 device) - g(2 devices)|| / ||g(1 device)||. ``--jax-softmax`` puts
jax.nn.softmax (with jax's own backward) in place of modeling.attention_softmax: the code before issue 29's fix.
"""

import argparse
import functools
import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from alad_jax import sharding  # noqa: E402
from alad_jax.models import modeling, precision  # noqa: E402
from alad_jax.models.config import EncoderConfig  # noqa: E402
from alad_jax.models.heads import TaggingHead  # noqa: E402

ROWS, SEQ, VOCAB, LABELS = 10, 64, 100, 5


class Tagger(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        config = EncoderConfig(model_type="bert", vocab_size=VOCAB, hidden_size=384, num_layers=2, num_heads=12,
                               intermediate_size=1536, max_position_embeddings=SEQ)
        self.encoder = modeling.build_encoder(config, rngs=rngs)
        self.head = TaggingHead(384, LABELS, rngs=rngs)

    def __call__(self, batch, key):
        encoder_key, head_key = jax.random.split(key)
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"], deterministic=False,
                              rngs=encoder_key).last_hidden_state
        return self.head(hidden, deterministic=False, rngs=head_key)


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(SEQ // 2, SEQ + 1, size=ROWS)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.where(mask, rng.integers(1, VOCAB, (ROWS, SEQ)), 0).astype(np.int32),
            "attention_mask": mask, "labels": rng.integers(0, LABELS, (ROWS, SEQ)).astype(np.int32)}


def gradients(graphdef, params, ndev: int) -> dict[str, np.ndarray]:
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1), devices=jax.devices()[:ndev])

    def grad(params, batch, key):
        def loss(params):
            logits = nnx.merge(graphdef, params)(batch, key)
            valid = batch["attention_mask"] > 0
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            return (ce * valid).sum() / valid.sum()
        return jax.grad(loss)(params)

    out = jax.jit(grad, out_shardings=sharding.replicated(mesh))(
        jax.device_put(params, sharding.replicated(mesh)), sharding.shard_batch(batch(), mesh), jax.random.key(1))
    return {sharding.path_str(p): np.asarray(g, np.float64) for p, g in jax.tree_util.tree_leaves_with_path(out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jax-softmax", action="store_true")
    args = parser.parse_args()
    assert jax.device_count() == 2, jax.devices()
    if args.jax_softmax:
        modeling.attention_softmax = functools.partial(jax.nn.softmax, axis=-1)  # read when the step is traced
    graphdef, params = nnx.split(Tagger())
    step_graphdef = precision.step_graphdef(graphdef, params, matmul_dtype="bfloat16", adapter_impl=None)
    one, two = gradients(step_graphdef, params, 1), gradients(step_graphdef, params, 2)
    print(json.dumps({p: float(np.linalg.norm(one[p] - two[p]) / max(np.linalg.norm(one[p]), 1e-30)) for p in one}))


if __name__ == "__main__":
    main()
