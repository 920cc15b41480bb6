"""Where the time of our train steps goes (issue 14): the teacher fine-tune step and the uncached alignment step.

Two views, both on the steps ``alad bench`` times (the runs' own train state):

1. phases: median ms of the jitted loss forward, of ``value_and_grad`` and of
   the whole step (clip + AdamW update added), so backward and optimizer
   costs fall out as differences;
2. ops: a ``jax.profiler`` trace of a few steps, its XLA op events summed by
   op (``ProfileData``), the top ones printed with their share of the step,
   and grouped by kind (matmul-like, RNG for dropout, elementwise fusions...).

With ``--torch`` the PyTorch teacher fine-tune step is profiled too
(``torch.profiler``, top ops by self CPU time).
Run: ``python benchmarks/profile_steps.py [--reps 5] [--torch]``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

KINDS = (("matmul", re.compile(r"dot|convolution|gemm|matmul|onednn", re.I)),
         ("rng", re.compile(r"threefry|rng|random|bit_generator|shift-right|xor", re.I)),
         ("reduce", re.compile(r"reduce", re.I)),
         ("copy/transpose", re.compile(r"copy|transpose|concatenate|slice|pad|gather|scatter|dynamic", re.I)),
         ("fusion", re.compile(r"fusion", re.I)))


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def phases(state, batch, reps: int) -> dict:
    """ms of forward (loss), forward + backward (value_and_grad), the whole step."""
    graphdef, trainable, frozen = state.step_graphdef, state.trainable, state.frozen
    loss_fn = state.loss_fn
    key = jax.random.key(0)

    def loss(t):
        return loss_fn(nnx.merge(graphdef, t, frozen), batch, key)[0]

    forward = jax.jit(loss)
    grad = jax.jit(jax.value_and_grad(loss))
    copy = jax.tree.map(lambda x: x.copy(), trainable)
    out = {"forward_ms": _median_ms(lambda: jax.block_until_ready(forward(copy)), reps),
           "forward_backward_ms": _median_ms(lambda: jax.block_until_ready(grad(copy)), reps)}
    out["step_ms"] = _median_ms(lambda: jax.block_until_ready(state.step(batch, key)), reps)
    out["backward_ms"] = out["forward_backward_ms"] - out["forward_ms"]
    out["clip_adamw_ms"] = out["step_ms"] - out["forward_backward_ms"]
    return {k: round(v, 1) for k, v in out.items()}


def _hlo_kinds(hlo: str) -> dict[str, str]:
    """{instruction name: kind} for the top-level instructions of a compiled module's HLO text."""
    bodies, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = head.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    kinds = {}
    for lines in bodies.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
            if not m:
                continue
            name, opcode = m.groups()
            called = re.search(r"calls=%?([\w.\-]+)", line)
            body = "\n".join(bodies.get(called.group(1), [])) if called else line
            if re.search(r" (dot|convolution)\(", body) or "__onednn" in body or "xnn" in name or "ynn" in name:
                kind = "matmul"
            elif "shift-right-logical" in body or "threefry" in body:
                kind = "rng (dropout masks)"
            elif re.search(r" (reduce|reduce-window)\(", body):
                kind = "reduce"
            elif re.search(r" scatter\(", body):
                kind = "scatter (embedding grad)"
            elif re.search(r" gather\(", body):
                kind = "gather"
            elif re.search(r" (copy|transpose|broadcast|concatenate|pad|slice|dynamic-slice|dynamic-update-slice)\(",
                           body) and not re.search(r" (add|multiply|subtract|divide|exponential|tanh|erf)\(", body):
                kind = "data movement"
            else:
                kind = "elementwise"
            kinds[name] = kind
    return kinds


def op_profile(state, batch, steps: int = 3, top: int = 15) -> dict:
    """XLA op events of ``steps`` steps, summed by op: top ops and totals by kind, ms per step."""
    trace_dir = tempfile.mkdtemp(prefix="alad-profile-")
    key = jax.random.key(0)
    jax.block_until_ready(state.step(batch, key))
    hlo = state.step_fn.lower(state.trainable, state.frozen, state.opt_state, batch, key).compile().as_text()
    Path(trace_dir, "step.hlo.txt").write_text(hlo)
    kinds_of = _hlo_kinds(hlo)
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            jax.block_until_ready(state.step(batch, key))
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    ops = collections.Counter()
    wall = 0
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if line.name == "python" and "PjitFunction" in event.name:
                    wall += event.duration_ns
                if line.name.startswith("tf_XLA") and "::" not in event.name:
                    ops[event.name] += event.duration_ns
    total = sum(ops.values()) or 1
    kinds = collections.Counter()
    for name, ns in ops.items():
        kinds[kinds_of.get(name, "other")] += ns
    per_step = lambda ns: round(ns / steps / 1e6, 1)  # noqa: E731
    return {
        "trace_dir": trace_dir,
        "op_ms_per_step_summed_over_threads": per_step(total),
        "by_kind_share": {k: round(v / total, 3) for k, v in kinds.most_common()},
        "top_ops": [(name, kinds_of.get(name, "other"), round(ns / total, 3))
                    for name, ns in sorted(ops.items(), key=lambda kv: -kv[1])[:top]],
    }


def torch_profile(cfg, teacher_dir, student_dir, batch, num_labels: int, top: int = 15) -> str:
    import torch

    from alad_train.bench import pytorch as bench_torch

    step = bench_torch.finetune_steps(cfg, teacher_dir, student_dir, num_labels)(batch)["teacher"]
    step()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def optimizer_vs_torch(cfg, state, reps: int) -> dict:
    """The clip + AdamW update alone over the teacher's parameters, ours (jitted, donated) vs torch's fused
    AdamW + clip_grad_norm_, alternating rep by rep: does the optimizer account for the step's gap?"""
    import optax
    import torch

    from alad_train.loop import make_optimizer

    optimizer = make_optimizer(cfg.stages.teacher, cfg.optim, 1000)
    params = jax.tree.map(lambda x: x.copy(), state.trainable)
    grads = jax.tree.map(lambda x: jax.numpy.full_like(x, 1e-3), params)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    leaves = [torch.from_numpy(np.array(x)) for x in jax.tree.leaves(params)]
    for t in leaves:
        t.grad = torch.full_like(t, 1e-3)
    topt = torch.optim.AdamW(leaves, lr=1e-4, weight_decay=0.01, fused=True)

    def torch_update():
        torch.nn.utils.clip_grad_norm_(leaves, cfg.optim.clip_norm)
        topt.step()

    params, opt_state = update(params, opt_state, grads)
    torch_update()
    ours, theirs = [], []
    for _ in range(reps):
        start = time.perf_counter()
        params, opt_state = update(params, opt_state, grads)
        jax.block_until_ready(params)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch_update()
        theirs.append(time.perf_counter() - start)
    n = sum(x.size for x in jax.tree.leaves(params))
    return {"params": n, "jax_ms": round(1e3 * statistics.median(ours), 1),
            "torch_ms": round(1e3 * statistics.median(theirs), 1)}


def prng_impls(cfg, teacher, student, num_labels: int, reps: int) -> dict:
    """The teacher fine-tune step with dropout keys of each PRNG implementation, alternating rep by rep.

    Not a free win: another generator draws other dropout masks, so training numbers change
    (statistically alike, not bit-identical). Measured to be reported, not landed silently."""
    from alad_jax import sharding
    from alad_train import cases, models
    from alad_train.bench import effort as bench_effort, steps as bench_steps
    from alad_train.loop import make_optimizer
    from alad_train.state import train_state_of

    batch = jax.device_put(bench_steps.dense_batch(*bench_effort.FINETUNE_BATCH, teacher.config.vocab_size,
                                                   num_labels))
    runs = {}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        state = train_state_of(bench_steps.jax_case_model(cases.TEACHER_FT, cfg, teacher, student, num_labels),
                               cases.TEACHER_FT.trainable, models.tagging_loss,
                               make_optimizer(cfg.stages.teacher, cfg.optim, 1000), sharding.make_mesh(),
                               matmul_dtype=cfg.matmul_dtype)
        key = jax.random.key(0, impl=impl)
        jax.block_until_ready(state.step(batch, key))
        runs[impl] = (state, key)
    times = {impl: [] for impl in runs}
    for _ in range(reps):
        for impl, (state, key) in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(state.step(batch, key))
            times[impl].append(time.perf_counter() - start)
    base = statistics.median(times["threefry2x32"])
    return {impl: {"ms": round(1e3 * statistics.median(t), 1), "vs_threefry": round(statistics.median(t) / base, 3),
                   "per_rep_vs_threefry": [round(a / b, 3) for a, b in zip(t, times["threefry2x32"])]}
            for impl, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--torch", action="store_true")
    parser.add_argument("--only", default="teacher,align_uncached")
    args = parser.parse_args()

    from alad_train.config import load_config
    from alad_train import cases, models
    from alad_train.bench import effort as bench_effort, run as bench_run, steps as bench_steps
    from alad_train.loop import make_optimizer
    from alad_train.state import train_state_of
    from alad_jax import sharding

    cfg = load_config(None, [])
    work = Path(tempfile.mkdtemp(prefix="alad-profile-models-"))
    teacher, student, _, teacher_dir, student_dir, _ = bench_run.load_models(cfg, work)
    num_labels = 17
    mesh = sharding.make_mesh()
    todo = args.only.split(",")
    if "teacher" in todo:
        batch = bench_steps.dense_batch(*bench_effort.FINETUNE_BATCH, teacher.config.vocab_size, num_labels)
        model = bench_steps.jax_case_model(cases.TEACHER_FT, cfg, teacher, student, num_labels)
        state = train_state_of(model, cases.TEACHER_FT.trainable, models.tagging_loss,
                               make_optimizer(cfg.stages.teacher, cfg.optim, 1000), mesh, matmul_dtype=cfg.matmul_dtype)
        state.loss_fn = models.tagging_loss
        device_batch = jax.device_put(batch)
        print("teacher fine-tune 32x64 phases:", phases(state, device_batch, args.reps), flush=True)
        print("teacher clip+AdamW alone:", optimizer_vs_torch(cfg, state, args.reps), flush=True)
        print("teacher fine-tune 32x64 ops:", op_profile(state, device_batch), flush=True)
        if args.torch:
            print(torch_profile(cfg, teacher_dir, student_dir, batch, num_labels), flush=True)
    if "prng" in todo:
        print("teacher fine-tune step by dropout PRNG:", prng_impls(cfg, teacher, student, num_labels, args.reps),
              flush=True)
    if "adapter_cached" in todo:
        # The cached AlAd step `alad bench` divides into its MFU: 32 x 128 positions of bf16 hidden states.
        rows, length = bench_effort.MFU_BATCH
        dims = student.config.hidden_size, teacher.config.hidden_size
        rng = np.random.default_rng(0)
        batch = {"input_ids": np.ones((rows, length), np.int32), "attention_mask": np.ones((rows, length), np.int32),
                 "student_hidden": rng.normal(size=(rows, length, dims[0])).astype(jax.numpy.bfloat16),
                 "teacher_hidden": rng.normal(size=(rows, length, dims[1])).astype(jax.numpy.bfloat16)}
        adapter = models.new_adapter(cfg, *dims, cfg.windows[0], nnx.Rngs(0), impl=None)
        state = train_state_of(adapter, nnx.Param, models.cached_align_loss,
                               make_optimizer(cfg.stages.continual, cfg.optim, 1000), mesh,
                               matmul_dtype=cfg.matmul_dtype)
        state.loss_fn = models.cached_align_loss
        device_batch = jax.device_put(batch)
        print("cached AlAd step 32x128 phases:", phases(state, device_batch, args.reps), flush=True)
        print("cached AlAd step 32x128 ops:", op_profile(state, device_batch), flush=True)
    if "align_uncached" in todo:
        batch = bench_steps.dense_batch(*bench_effort.ALIGN_BATCH, teacher.config.vocab_size, num_labels)
        del batch["labels"]
        state = bench_steps.align_uncached_state(cfg, teacher, student, mesh)
        state.loss_fn = models.align_loss
        device_batch = jax.device_put(batch)
        print("uncached alignment 32x128 phases:", phases(state, device_batch, args.reps), flush=True)
        print("uncached alignment 32x128 ops:", op_profile(state, device_batch), flush=True)


if __name__ == "__main__":
    main()
