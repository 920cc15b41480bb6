"""Grouped gradient prototype: the global batch split into G canonical row groups, per-group gradients (vmap),
summed in a fixed binary tree. 1 vs 2 vs 4 devices, bit-identical? and step time vs today's step.
usage: [REPS=6] python benchmarks/layout_grouped.py {float32|bfloat16} G  (docs/multihost.md; REPS=0: no timing)"""
import os
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx
from alad_jax import sharding
from alad_jax.models import hub
from alad_jax.models.task_model import TaskModel
from alad_train import cases
from alad_train.models import IGNORE_INDEX
from alad_train.state import create_train_state
from issue29_batch import teacher_batch

dtype, G = sys.argv[1], int(sys.argv[2])
cfg, task, stage, batch = teacher_batch(dtype)
batch = dict(batch)
rows = batch["input_ids"].shape[0]
pad = -rows % G
for k, v in batch.items():  # empty rows up to a multiple of G
    fill = IGNORE_INDEX if k == "labels" else (-1 if k == "packed_index" else 0)
    batch[k] = np.concatenate([v, np.full((pad, *v.shape[1:]), fill, v.dtype)])
print("rows", rows, "->", batch["input_ids"].shape[0])
key = jax.random.fold_in(jax.random.key(0), 0)
dev = jax.devices()
encoder, _ = hub.load_encoder(cfg.teacher)
model = TaskModel(encoder, task.make_head(encoder.config.hidden_size, 1), train_encoder=True)
graphdef0, trainable0, frozen0 = nnx.split(model, cases.TEACHER_FT.trainable, ...)
import optax

def tree_sum(x):  # [G, ...] -> [...], a fixed balanced binary tree of adds
    while x.shape[0] > 1:
        x = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
        x = x[:, 0] + x[:, 1]
    return x[0]

def build(ndev):
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1), devices=dev[:ndev])
    st = create_train_state(graphdef0, jax.tree.map(jnp.copy, trainable0), jax.tree.map(jnp.copy, frozen0),
                            task.loss_fn, optax.sgd(1.0), mesh, matmul_dtype=dtype)
    return st, mesh

def grads_plain(st, mesh):
    def g(trainable, frozen, b, key):
        def compute(t):
            return task.loss_fn(nnx.merge(st.step_graphdef, t, frozen), b, key)
        return jax.grad(lambda t: compute(t)[0])(trainable)
    return jax.jit(g, out_shardings=sharding.replicated(mesh))

def grads_grouped(st, mesh):
    def g(trainable, frozen, b, key):
        groups = jax.tree.map(lambda v: v.reshape(G, v.shape[0] // G, *v.shape[1:]), b)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(G))
        def one(gb, k):
            def s(t):  # the group's loss sum (mean x its count): d/dt of it is the group's share x N
                loss, _ = task.loss_fn(nnx.merge(st.step_graphdef, t, frozen), gb, k)
                return loss * jnp.maximum((gb["labels"] != IGNORE_INDEX).sum(), 1)
            return jax.grad(s)(trainable)
        per = jax.vmap(one)(groups, keys)
        n = jnp.maximum((b["labels"] != IGNORE_INDEX).sum(), 1)
        return jax.tree.map(lambda x: tree_sum(x) / n, per)
    return jax.jit(g, out_shardings=sharding.replicated(mesh))

from jax.sharding import PartitionSpec as P
AX = ("data", "fsdp")
def grads_mapped(st, mesh):
    """shard_map: each device runs its G/D groups one at a time (lax.map: one group's shapes everywhere),
    sums them in a fixed tree, gathers the D partials and sums those in the same tree."""
    D = mesh.size
    def local(trainable, frozen, b, key):
        groups = jax.tree.map(lambda v: v.reshape(G // D, v.shape[0] * D // G, *v.shape[1:]), b)
        first = jax.lax.axis_index(AX) * (G // D)
        def one(args):
            gb, i = args
            k = jax.random.fold_in(key, first + i)
            def s(t):
                loss, _ = task.loss_fn(nnx.merge(st.step_graphdef, t, frozen), gb, k)
                return loss * jnp.maximum((gb["labels"] != IGNORE_INDEX).sum(), 1)
            return jax.grad(s)(trainable)
        per = jax.lax.map(one, (groups, jnp.arange(G // D)))
        part = jax.tree.map(tree_sum, per)
        allp = jax.tree.map(lambda x: jax.lax.all_gather(x, AX), part)
        n = jax.lax.psum(jnp.maximum((b["labels"] != IGNORE_INDEX).sum(), 0), AX)
        return jax.tree.map(lambda x: tree_sum(x) / jnp.maximum(n, 1), allp)
    f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(AX), P()), out_specs=P(), check_vma=False)
    return jax.jit(f, out_shardings=sharding.replicated(mesh))

res = {}
for n in (1, 2, 4):
    if G % n:
        continue
    st, mesh = build(n)
    b = sharding.shard_batch(batch, mesh)
    for name, mk in (("plain", grads_plain), ("grouped", grads_grouped), ("mapped", grads_mapped)):
        f = mk(st, mesh)
        out = f(st.trainable, st.frozen, b, key)
        res[(n, name)] = [np.asarray(x) for x in jax.tree.leaves(out)]
for name in ("plain", "grouped", "mapped"):
    base = res[(1, name)]
    for n in (2, 4):
        if (n, name) in res:
            other = res[(n, name)]
            diff = sum(not np.array_equal(a, c) for a, c in zip(base, other))
            mx = max(float(np.abs(a - c).max()) for a, c in zip(base, other))
            print(f"{dtype} G={G} {name}: 1 vs {n} devices: leaves differing {diff}/{len(base)}, max abs {mx:.3e}")
for name in ("plain", "grouped", "mapped"):
    a, c = res[(2, name)], res[(4, name)]
    print(f"{dtype} G={G} {name}: 2 vs 4 devices: leaves differing {sum(not np.array_equal(x, y) for x, y in zip(a, c))}/{len(a)}, max abs {max(float(np.abs(x - y).max()) for x, y in zip(a, c)):.3e}")
if os.environ.get("REPS") == "0":
    sys.exit()
g_rel = max(float(np.abs(a - c).max() / max(np.abs(a).max(), 1e-30)) for a, c in zip(res[(1, 'plain')], res[(1, 'grouped')]))
print(f"grouped vs plain on 1 device: max |diff| / max |grad| per leaf {g_rel:.3e}")

# step time on 1 device, interleaved (the box's default layout): the gradient alone
st, mesh = build(1)
b = sharding.shard_batch(batch, mesh)
fs = {name: mk(st, mesh) for name, mk in (("plain", grads_plain), ("grouped", grads_grouped), ("mapped", grads_mapped))}
for f in fs.values():
    jax.block_until_ready(f(st.trainable, st.frozen, b, key))
times = {k: [] for k in fs}
for rep in range(int(os.environ.get("REPS", "6"))):
    for name, f in fs.items():
        t = time.perf_counter(); jax.block_until_ready(f(st.trainable, st.frozen, b, key)); times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name}: median {np.median(ts)*1e3:.1f} ms  all {[round(x*1e3) for x in ts]}")
print("grouped / plain", np.median(times["grouped"]) / np.median(times["plain"]), "mapped / plain", np.median(times["mapped"]) / np.median(times["plain"]))
gm = max(float(np.abs(a - c).max()) for a, c in zip(res[(1, 'grouped')], res[(1, 'mapped')]))
print("grouped vs mapped on 1 device max abs", gm)
