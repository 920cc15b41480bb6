"""Worker: train the tiny model on one device and on several meshes of 8 simulated CPU devices.

    python tests/helpers/sharded_step.py --meshes 8,1 4,2 2,4 --steps 2 [--matmul-dtype bfloat16]

Prints one JSON object: the single-device losses, and per mesh its losses,
the largest parameter / optimizer-state difference to the single-device run,
and the PartitionSpec and per-device shard shape of every trainable parameter.
"""

import argparse
import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

import tiny_task_model as tiny  # noqa: E402
from alad_jax import sharding  # noqa: E402
from alad_jax.errors import AladError  # noqa: E402


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (a.keys() ^ b.keys())
    return max(float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a)


def _by_path(tree) -> dict:
    return {sharding.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _batch_error(mesh) -> str:
    """The message shard_batch gives for 12 rows on a mesh of 8 devices."""
    try:
        sharding.shard_batch(tiny.make_batch(0, rows=12), mesh)
    except AladError as error:
        return str(error)
    return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meshes", nargs="+", required=True, help="data,fsdp pairs")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--matmul-dtype", default="float32")
    args = parser.parse_args()
    assert jax.device_count() == 8, jax.devices()

    history, trainable, opt_state = tiny.train_single_device(args.steps, matmul_dtype=args.matmul_dtype)
    ref_params, ref_opt = tiny.flat_numpy(trainable), tiny.flat_numpy(opt_state)

    report = {
        "reference_losses": [h["loss"] for h in history],
        "reference_grad_norms": [h["grad_norm"] for h in history],
        "meshes": {},
    }
    for text in args.meshes:
        data, fsdp = (int(v) for v in text.split(","))
        mesh = sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp))
        history, trainable, frozen, opt_state, _ = tiny.train_sharded(mesh, args.steps, matmul_dtype=args.matmul_dtype)
        arrays = {**_by_path(trainable), **_by_path(frozen)}
        opt = _by_path(opt_state)
        report["meshes"][text] = {
            "mesh_shape": dict(mesh.shape),
            "losses": [h["loss"] for h in history],
            "grad_norms": [h["grad_norm"] for h in history],
            "max_param_diff": _max_diff(tiny.flat_numpy(trainable), ref_params),
            "max_opt_state_diff": _max_diff(tiny.flat_numpy(opt_state), ref_opt),
            "specs": {k: str(tuple(x.sharding.spec)) for k, x in arrays.items()},
            "shard_shapes": {k: list(x.addressable_shards[0].data.shape) for k, x in arrays.items()},
            "full_shapes": {k: list(x.shape) for k, x in arrays.items()},
            "opt_specs": {k: str(tuple(x.sharding.spec)) for k, x in opt.items()},
            "batch_error": _batch_error(mesh),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
