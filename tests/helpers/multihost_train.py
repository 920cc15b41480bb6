"""Worker: one of several processes joined by jax.distributed, training the tiny model.

    python tests/helpers/multihost_train.py --out DIR --steps 3 --local-devices 2 --mesh 1,4
        (with ALAD_COORDINATOR, ALAD_NUM_PROCESSES, ALAD_PROCESS_ID set)

Each process feeds only its own rows of every global batch
(``sharding.process_rows`` + ``sharding.shard_batch``). After training, all
processes write a sharded checkpoint together and read it back; the primary
process alone writes ``DIR/result.json`` (losses, process/device counts,
restored-equals-trained) and ``DIR/params.npz`` (the gathered parameters).
"""

import argparse
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--local-devices", type=int, default=2)
parser.add_argument("--mesh", default="1,4", help="data,fsdp")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.local_devices}"
)
os.environ["JAX_PLATFORMS"] = "cpu"

from alad_jax import distributed, sharding  # noqa: E402  (imports jax after XLA_FLAGS)

distributed.initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_task_model as tiny  # noqa: E402
from alad_jax.checkpoints import Checkpoints, abstract_on  # noqa: E402


def _fraction_held_here(x: jax.Array) -> float:
    """Share of the array's elements stored on this process's devices (1.0 = a full copy)."""
    blocks = {tuple((i.start, i.stop) for i in shard.index): shard.data.size for shard in x.addressable_shards}
    return sum(blocks.values()) / x.size


def main() -> None:
    data, fsdp = (int(v) for v in args.mesh.split(","))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp))
    rows = sharding.process_rows(tiny.ROWS, mesh)
    history, trainable, _, opt_state, sh = tiny.train_sharded(mesh, args.steps, rows=rows)

    checkpoint = os.path.join(args.out, "checkpoint")
    target = abstract_on({"params": trainable, "opt_state": opt_state}, {"params": sh.params, "opt_state": sh.opt_state})
    with Checkpoints(checkpoint) as checkpoints:  # the format fit checkpoints in, every process writing its shards
        checkpoints.save(0, {"params": trainable, "opt_state": opt_state})
        restored, _ = checkpoints.restore(target)

    params = tiny.flat_numpy(trainable)
    saved_host = tiny.flat_numpy({"params": trainable, "opt_state": opt_state})
    restored_host = tiny.flat_numpy(restored)
    restored_equal = saved_host.keys() == restored_host.keys() and all(
        np.array_equal(saved_host[k], restored_host[k]) for k in saved_host
    )
    held_here = {
        sharding.path_str(p): _fraction_held_here(x) for p, x in jax.tree_util.tree_leaves_with_path(trainable)
    }
    if distributed.is_primary():
        np.savez(os.path.join(args.out, "params.npz"), **params)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(
                {
                    "losses": [h["loss"] for h in history],
                    "grad_norms": [h["grad_norm"] for h in history],
                    "process_count": jax.process_count(),
                    "device_count": jax.device_count(),
                    "local_rows": rows.stop - rows.start,
                    "fraction_held_by_primary": held_here,
                    "restored_equal": restored_equal,
                },
                f,
            )


if __name__ == "__main__":
    main()
