"""Micro-benchmark of the AlAd forms: explicit windows vs fused convolution.

For each window K and student width Ds (-> Dt 768, hidden 1280, batch 32 x seq
128, float32) it times, jitted, the median of several runs after a warm-up:

- forward of the explicit and the fused adapter;
- forward+backward: gradient of the alignment MSE with respect to the adapter
  parameters (what stages 1-2 and the frozen-student fine-tune compute);
- overhead: adapter forward time / a BERT-Mini-sized student forward
  (L4 / H256 / A4 / I1024) on the same batch.

The two forms run interleaved, run by run, so load from other processes hits
both alike. Usage:

    python benchmarks/bench_adapter.py            # readable table (alad_jax installed or on PYTHONPATH)
    python benchmarks/bench_adapter.py --json     # the same numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.adapter import AlignmentAdapter, align_mse

IMPLS = ("explicit", "fused")


def _time_interleaved(fns: dict, args: tuple, repeats: int) -> dict[str, float]:
    """Median wall time in ms of each function on ``args``, after one warm-up call each."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _student_forward(batch: int, seq: int):
    """A jitted BERT-Mini-sized encoder forward and its arguments, or None if not importable."""
    try:
        from alad_jax.models.config import EncoderConfig
        from alad_jax.models.modeling import build_encoder
    except ImportError:
        return None
    config = EncoderConfig(
        model_type="bert", vocab_size=30522, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024
    )
    graphdef, params = nnx.split(build_encoder(config, rngs=nnx.Rngs(0)))

    @jax.jit
    def forward(params, ids, mask):
        return nnx.merge(graphdef, params)(ids, mask).last_hidden_state

    ids = jax.random.randint(jax.random.key(1), (batch, seq), 1000, 30000)
    return forward, (params, ids, jnp.ones((batch, seq), jnp.int32))


def _adapter_case(window: int, student_dim: int, args: argparse.Namespace, student) -> dict:
    """Forward and forward+backward ms of both forms for one geometry (+ the student forward)."""
    key_hidden, key_target = jax.random.split(jax.random.key(window * 1000 + student_dim))
    hidden = jax.random.normal(key_hidden, (args.batch, args.seq, student_dim))
    target = jax.random.normal(key_target, (args.batch, args.seq, args.teacher_dim))
    lengths = np.random.default_rng(0).integers(args.seq // 4, args.seq + 1, args.batch)
    mask = jnp.asarray(np.arange(args.seq)[None] < lengths[:, None], jnp.int32)

    forward, train = {}, {}
    for impl in IMPLS:
        adapter = AlignmentAdapter(student_dim, args.teacher_dim, window, args.hidden_dim, impl=impl, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(adapter)

        def apply(params, hidden, mask, target, graphdef=graphdef):
            return nnx.merge(graphdef, params)(hidden, mask)

        def grads(params, hidden, mask, target, graphdef=graphdef):
            loss = lambda p: align_mse(nnx.merge(graphdef, p)(hidden, mask), target, mask)  # noqa: E731
            return jax.grad(loss)(params)

        forward[impl], train[impl] = jax.jit(apply), jax.jit(grads)
    call_args = (params, hidden, mask, target)  # both forms share the parameter tree layout
    if student is not None:
        # Timed in the same interleaved loop, so the overhead ratio sees the same machine load.
        student_fn, student_args = student
        forward["student"] = lambda *_: student_fn(*student_args)
    fwd = _time_interleaved(forward, call_args, args.repeats)
    student_ms = fwd.get("student")
    fwd_bwd = _time_interleaved(train, call_args, args.repeats)
    return {
        "window": window,
        "student_dim": student_dim,
        **{f"{impl}_fwd_ms": fwd[impl] for impl in IMPLS},
        **{f"{impl}_fwd_bwd_ms": fwd_bwd[impl] for impl in IMPLS},
        "student_fwd_ms": student_ms,
        "overhead_vs_student_fwd": None if student_ms is None else min(fwd[i] for i in IMPLS) / student_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--student-dims", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--teacher-dim", type=int, default=768)
    parser.add_argument("--hidden-dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()

    student = _student_forward(args.batch, args.seq)
    if not args.json:
        print(_header(args, student is not None), flush=True)
    rows = []
    for student_dim in args.student_dims:
        for window in args.windows:
            row = _adapter_case(window, student_dim, args, student)
            rows.append(row)
            if not args.json:
                print(_format_row(row), flush=True)

    if args.json:
        setup = {k: getattr(args, k) for k in ("batch", "seq", "teacher_dim", "hidden_dim", "repeats")}
        print(json.dumps({"device": str(jax.devices()[0]), **setup, "rows": rows}, indent=2))


def _header(args, have_student: bool) -> str:
    student = "overhead = fastest adapter fwd / BERT-Mini fwd (L4/H256/A4/I1024), timed side by side"
    return (
        f"AlAd batch {args.batch} x seq {args.seq}, Dt {args.teacher_dim}, hidden {args.hidden_dim}, float32, "
        f"{jax.devices()[0]}; median of {args.repeats} (ms)\n"
        f"{student if have_student else 'student encoder not importable (alad_jax.models): no overhead column'}\n"
        f"{'Ds':>4} {'K':>2} | {'fwd explicit':>12} {'fwd fused':>10} | {'f+b explicit':>12} {'f+b fused':>10} | "
        f"{'student':>8} {'overhead':>8}"
    )


def _format_row(row: dict) -> str:
    student = "-" if row["student_fwd_ms"] is None else f"{row['student_fwd_ms']:.1f}"
    overhead = "-" if row["overhead_vs_student_fwd"] is None else f"{100 * row['overhead_vs_student_fwd']:.0f}%"
    return (
        f"{row['student_dim']:>4} {row['window']:>2} | {row['explicit_fwd_ms']:>12.1f} {row['fused_fwd_ms']:>10.1f} | "
        f"{row['explicit_fwd_bwd_ms']:>12.1f} {row['fused_fwd_bwd_ms']:>10.1f} | {student:>8} {overhead:>8}"
    )


if __name__ == "__main__":
    main()
