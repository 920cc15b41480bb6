"""Worker: write a checkpoint (the format fit uses) on a (4, 2) mesh of 8 CPU devices, read it onto other layouts.

    python tests/helpers/checkpoint_roundtrip.py DIR

Prints one JSON object with, per restore target ("mesh 2,4", "single device"):
whether every restored array equals the saved one, and the shardings the
restored arrays carry next to those asked for.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

import tiny_task_model as tiny  # noqa: E402
from alad_jax import sharding  # noqa: E402
from alad_jax.checkpoints import Checkpoints, abstract_on  # noqa: E402


def _layout(tree, shardings=None) -> dict[str, str]:
    """path -> "mesh shape, spec, per-device shard shape" of each array (or of ``shardings`` for its shapes)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if shardings is None:
        shardings = [x.sharding for _, x in leaves]
    else:
        shardings = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    return {
        sharding.path_str(p): f"{dict(s.mesh.shape)} {tuple(s.spec)} {s.shard_shape(x.shape)}"
        for (p, x), s in zip(leaves, shardings, strict=True)
    }


def main() -> None:
    directory = sys.argv[1]
    _, trainable, frozen, tx = tiny.init()
    # Random moments, so a restore that dropped them would show.
    rng = np.random.default_rng(7)
    opt_state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), jax.eval_shape(tx.init, trainable))

    def place(mesh):
        params, opt, sh = sharding.shard_train_state(trainable, opt_state, mesh)
        frozen_sh = sharding.state_shardings(frozen, mesh)
        tree = {"params": params, "frozen": sharding.put(frozen, frozen_sh), "opt_state": opt}
        return tree, {"params": sh.params, "frozen": frozen_sh, "opt_state": sh.opt_state}

    saved, _ = place(sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2)))
    with Checkpoints(os.path.join(directory, "ckpt")) as checkpoints:
        checkpoints.save(0, saved)
    saved_host = tiny.flat_numpy(saved)

    targets = {
        "mesh 2,4": sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4)),
        "single device": sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1]),
    }
    report = {"saved_layout": _layout(saved)}
    for name, mesh in targets.items():
        _, shardings = place(mesh)
        with Checkpoints(os.path.join(directory, "ckpt")) as checkpoints:
            restored, _ = checkpoints.restore(abstract_on(saved, shardings))
        restored_host = tiny.flat_numpy(restored)
        report[name] = {
            "same_keys": sorted(restored_host) == sorted(saved_host),
            "max_abs_diff": max(float(np.max(np.abs(restored_host[k] - saved_host[k]))) for k in saved_host),
            "restored_layout": _layout(restored),
            "asked_layout": _layout(saved, shardings),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
