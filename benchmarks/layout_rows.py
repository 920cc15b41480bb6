"""Issue 29's last gap: a real bfloat16 teacher (or student_ft) step on 1 device vs the same batch split over 2, per
layer, with the attention as it was before the fix ("before": jax.nn.softmax's backward, whose row sum XLA:CPU
fuses by batch size) and as it is ("fixed": modeling.attention_softmax), side by side in one process; then their
train steps' time on 1 device, interleaved. PARTS=1 adds the two changes a 1-row program would need as well
(ROWS=2 shows 2 rows on 1 device vs 1 on each of 2).
usage: [REPS=8] [ROWS=n] [PARTS=1] python benchmarks/layout_rows.py {bfloat16|float32} [teacher|student_ft STUDENT_DIR]
(STUDENT_DIR: a run's models/student, the teacher's first 2 layers; docs/multihost.md)"""
import os
import re
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from alad_jax import sharding  # noqa: E402
from alad_jax.models import hub, modeling  # noqa: E402
from alad_jax.models.task_model import TaskModel  # noqa: E402
from alad_train import cases  # noqa: E402
from alad_train.loop import make_optimizer  # noqa: E402
from alad_train.state import create_train_state  # noqa: E402
from issue29_batch import teacher_batch  # noqa: E402

dtype, row = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "teacher")
cfg, task, stage, batch = teacher_batch(dtype, row)
if os.environ.get("ROWS"):  # the batch's first ROWS rows (a smaller batch, as an epoch's last may be)
    batch = {k: v[:int(os.environ["ROWS"])] for k, v in batch.items()}
print(row, {k: v.shape for k, v in batch.items()})
key = jax.random.fold_in(jax.random.key(0), 0)


def attention_before(self, *args, **kwargs):
    """modeling's attention with jax's own softmax (its backward's row sum a reduction, as before the fix)."""
    fixed = modeling.attention_softmax
    modeling.attention_softmax = lambda scores: jax.nn.softmax(scores, axis=-1)
    try:
        return ATTENTION(self, *args, **kwargs)
    finally:
        modeling.attention_softmax = fixed


def attention_folded(self, x, attention_bias, position_bias=None, *, deterministic, rngs):
    """modeling's attention with one [batch * heads] batch axis: a 1-row program then emits its key-gradient dot
    as a bigger one does (with [batch, heads] it drops the size-1 axis and runs that dot elsewhere)."""
    batch, seq, _ = x.shape
    heads, rows = self.num_heads, batch * self.num_heads
    split = lambda y: y.reshape(batch, seq, heads, self.head_dim).transpose(0, 2, 1, 3).reshape(rows, seq, -1)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("nqd,nkd->nqk", q, k).reshape(batch, heads, seq, seq) * self.head_dim ** -0.5
    scores = scores.astype(jnp.float32)
    if position_bias is not None:
        scores = scores + position_bias[None]
    scores = modeling.attention_softmax(scores + attention_bias[:, None, :, :])
    probs = self.dropout(scores, deterministic=deterministic, rngs=rngs).astype(v.dtype)
    context = jnp.einsum("nqk,nkd->nqd", probs.reshape(rows, seq, seq), v)
    return self.output(context.reshape(batch, heads, seq, -1).transpose(0, 2, 1, 3).reshape(batch, seq, -1))


def layer_flat_norms(self, x, attention_bias, position_bias=None, *, deterministic, rngs):
    """modeling's TransformerLayer with its LayerNorms over [batch * seq, hidden]: a 1-row program's LayerNorm
    backward then fuses as a bigger one's does."""
    norm = lambda n, y: n(y.reshape(-1, y.shape[-1])).reshape(y.shape)
    attention_key, attention_output_key, mlp_key = modeling._split_key(rngs, 3)
    h = self.attention(x, attention_bias, position_bias, deterministic=deterministic, rngs=attention_key)
    h = self.attention_output_dropout(h, deterministic=deterministic, rngs=attention_output_key)
    x = norm(self.attention_norm, x + h)
    h = self.mlp_dropout(self.mlp(x), deterministic=deterministic, rngs=mlp_key)
    return norm(self.mlp_norm, x + h)


ATTENTION = modeling.SelfAttention.__call__
FIXED = (ATTENTION, modeling.TransformerLayer.__call__)
VARIANTS = {"before": (attention_before, FIXED[1]), "fixed": FIXED}
if os.environ.get("PARTS"):  # what a 1-row program needs as well, for the time it costs
    VARIANTS["+ [batch*heads]"] = (attention_folded, FIXED[1])
    VARIANTS["+ flat norms"] = (attention_folded, layer_flat_norms)
encoder, _ = hub.load_encoder(cfg.teacher if row == "teacher" else sys.argv[3])
model = TaskModel(encoder, task.make_head(encoder.config.hidden_size, 1), train_encoder=True)
graphdef, trainable0, frozen0 = nnx.split(model, cases.BY_NAME[row].trainable, ...)


def build(ndev):
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1), devices=jax.devices()[:ndev])
    st = create_train_state(graphdef, jax.tree.map(np.asarray, trainable0), jax.tree.map(np.asarray, frozen0),
                            task.loss_fn, make_optimizer(stage, cfg.optim, 100), mesh, matmul_dtype=dtype)
    return st, mesh


def grad_fn(st, mesh, variant):
    def g(trainable, frozen, b, key):
        # Read when the jit traces: this function's encoder forms.
        modeling.SelfAttention.__call__, modeling.TransformerLayer.__call__ = VARIANTS[variant]
        try:
            return jax.grad(lambda t: task.loss_fn(nnx.merge(st.step_graphdef, t, frozen), b, key)[0])(trainable)
        finally:
            modeling.SelfAttention.__call__, modeling.TransformerLayer.__call__ = VARIANTS["fixed"]
    return jax.jit(g, out_shardings=sharding.replicated(mesh))


def layer_of(path):
    m = re.search(r"layers/(\d+)/", path)
    return f"layer {m.group(1)}" if m else ("embeddings" if "embeddings" in path else "head")


grads = {}
for name in VARIANTS:
    for n in (1, 2):
        st, mesh = build(n)
        out = grad_fn(st, mesh, name)(st.trainable, st.frozen, sharding.shard_batch(batch, mesh), key)
        grads[name, n] = {sharding.path_str(p): np.asarray(v, np.float64)
                          for p, v in jax.tree_util.tree_leaves_with_path(out)}
print(f"{dtype}: per-leaf ||g(1 device) - g(2 devices)|| / ||g(1 device)||, max and [min] over each group's leaves")
groups = sorted({layer_of(p) for p in grads["before", 1]}, key=lambda s: (s[:5] != "head", s))
print(f"{'':<12}" + "".join(f"{name:>24}" for name in VARIANTS))
for group in groups:
    line = f"{group:<12}"
    for name in VARIANTS:
        g1, g2 = grads[name, 1], grads[name, 2]
        # The key bias is left out: softmax ignores a constant added to a query's scores, so its gradient is 0 plus
        # rounding, and relative to that, anything.
        rel = [np.linalg.norm(g1[p] - g2[p]) / max(np.linalg.norm(g1[p]), 1e-30) for p in g1
               if layer_of(p) == group and not p.endswith("key/bias")]
        line += f"{max(rel):>14.1e} [{min(rel):.1e}]"
    print(line)
top = max(int(re.search(r"layers/(\d+)/", p).group(1)) for p in grads["before", 1] if "layers/" in p)
for p in (f"layers/{top}/attention/query/kernel", f"layers/{top}/attention/key/kernel", "layers/0/attention/query/kernel"):
    full = next(k for k in grads["before", 1] if k.endswith(p))
    print(f"  {p:<36}" + "".join(f"{np.linalg.norm(grads[n, 1][full] - grads[n, 2][full]) / np.linalg.norm(grads[n, 1][full]):>14.1e}" for n in VARIANTS))
t1, r1 = grads["before", 1], grads["fixed", 1]
print("fixed vs before on 1 device, global ||diff||/||g||:",
      f"{np.sqrt(sum(((t1[p] - r1[p]) ** 2).sum() for p in t1) / sum((t1[p] ** 2).sum() for p in t1)):.1e}")

reps = int(os.environ.get("REPS", "8"))
if reps:  # the whole train step (gradient, clipping, AdamW), each traced under its variant, timed interleaved
    states = {}
    for name in VARIANTS:
        st, mesh = build(1)
        b = sharding.shard_batch(batch, mesh)
        modeling.SelfAttention.__call__, modeling.TransformerLayer.__call__ = VARIANTS[name]
        jax.block_until_ready(st.step(b, key))  # traces and compiles here
        modeling.SelfAttention.__call__, modeling.TransformerLayer.__call__ = VARIANTS["fixed"]
        states[name] = st
    times = {name: [] for name in VARIANTS}
    for _ in range(reps):
        for name, st in states.items():
            t = time.perf_counter()
            jax.block_until_ready(st.step(b, key))
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{row} train step, 1 device, {name}: median {np.median(ts) * 1e3:.1f} ms, all {[round(t * 1e3) for t in ts]}")
    print(f"fixed / before: {np.median(times['fixed']) / np.median(times['before']):.3f}")
