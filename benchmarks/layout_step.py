"""One real MiniLM teacher step (the issue's config, first packed batch) on 1 device vs the batch sharded over 2.
usage: python benchmarks/layout_step.py {float32|bfloat16}  (docs/multihost.md)"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx
from alad_jax import sharding
from alad_jax.models import hub
from alad_jax.models.task_model import TaskModel
from alad_train import cases
from alad_train.loop import make_optimizer
from alad_train.state import create_train_state
from issue29_batch import teacher_batch

dtype = sys.argv[1]
cfg, task, stage, batch = teacher_batch(dtype)
print("batch", {k: v.shape for k, v in batch.items()})
key = jax.random.fold_in(jax.random.key(0), 0)
dev = jax.devices()

def build(ndev):
    encoder, _ = hub.load_encoder(cfg.teacher)
    model = TaskModel(encoder, task.make_head(encoder.config.hidden_size, 1), train_encoder=True)
    graphdef, trainable, frozen = nnx.split(model, cases.TEACHER_FT.trainable, ...)
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1), devices=dev[:ndev])
    opt = make_optimizer(stage, cfg.optim, 100)
    st = create_train_state(graphdef, trainable, frozen, task.loss_fn, opt, mesh, matmul_dtype=dtype)
    return st, mesh

def grads_of(st, mesh, b):
    def g(trainable, frozen, b, key):
        def compute(t):
            return task.loss_fn(nnx.merge(st.step_graphdef, t, frozen), b, key)
        (loss, _), gr = jax.value_and_grad(compute, has_aux=True)(trainable)
        return loss, gr
    return jax.jit(g, out_shardings=sharding.replicated(mesh))(st.trainable, st.frozen, b, key)

def fwd(st, mesh, b):
    def f(trainable, frozen, b):
        return nnx.merge(st.step_graphdef, trainable, frozen)(b, deterministic=True)
    return jax.jit(f, out_shardings=sharding.replicated(mesh))(st.trainable, st.frozen, b)

out = {}
for n in (1, 2):
    st, mesh = build(n)
    b = sharding.shard_batch(batch, mesh)
    logits = np.asarray(fwd(st, mesh, b))
    loss, gr = grads_of(st, mesh, b)
    gr = {sharding.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(gr)}
    st.step(b, key)
    new = {sharding.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(st.trainable)}
    out[n] = (logits, float(loss), gr, new)

(l1, s1, g1, p1), (l2, s2, g2, p2) = out[1], out[2]
print(dtype, "forward logits bit-identical:", np.array_equal(l1, l2), "max abs", np.abs(l1 - l2).max())
print("loss", s1, s2, "equal", s1 == s2)
def cmp(a, b, name):
    worst_abs = max(np.abs(a[k] - b[k]).max() for k in a)
    worst_rel = max(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30) for k in a)
    diff_leaves = sum(not np.array_equal(a[k], b[k]) for k in a)
    diff_elems = sum(int((a[k] != b[k]).sum()) for k in a)
    total = sum(a[k].size for k in a)
    kmax = max(a, key=lambda k: np.abs(a[k] - b[k]).max())
    num = np.sqrt(sum(float(((a[k] - b[k]).astype(np.float64) ** 2).sum()) for k in a))
    den = np.sqrt(sum(float((a[k].astype(np.float64) ** 2).sum()) for k in a))
    print(f"{name}: worst leaf {kmax} (its max |value| {np.abs(a[kmax]).max():.3e}); global ||diff||/||a|| {num / den:.3e}")
    print(f"{name}: leaves differing {diff_leaves}/{len(a)}, elements {diff_elems}/{total}, max abs {worst_abs:.3e}, max |diff|/max|leaf| {worst_rel:.3e}")
    return diff_leaves
cmp(g1, g2, "grads")
# which leaves: bias/scale (XLA reductions) vs kernels (dots) vs embeddings (scatter)
for kind in ("kernel", "bias", "scale", "embedding"):
    ks = [k for k in g1 if k.endswith(kind)]
    print("  ", kind, "differ", sum(not np.array_equal(g1[k], g2[k]) for k in ks), "/", len(ks))
cmp(p1, p2, "updated params")
if dtype == "bfloat16":
    c1 = {k: np.asarray(jnp.asarray(v).astype(jnp.bfloat16).astype(jnp.float32)) for k, v in p1.items()}
    c2 = {k: np.asarray(jnp.asarray(v).astype(jnp.bfloat16).astype(jnp.float32)) for k, v in p2.items()}
    cmp(c1, c2, "updated params as the next step's bf16 operands")
