"""The fine-tune steps' matmuls alone: XLA:CPU (float32 and bfloat16) vs PyTorch, each in its own process (issue 14).

Matmuls are 64% of our teacher fine-tune step (benchmarks/profile_steps.py), and
PyTorch's whole steps run 1-15% faster (``alad bench --vs-torch``). This times the
GEMM shapes of a MiniLM-L6 layer on a 32 x 64 batch (2,048 tokens: QKV/output
projections 384 -> 384, the feed-forward 384 -> 1536 -> 384, and the word-embedding
tied classifier-sized 384 -> 30,522 is left out: the task head is 384 -> 17), forward
shapes and the two backward ones. JAX and PyTorch run in separate worker processes
(their thread pools compete in one process), rounds alternating A B A B so load
falls on both alike. bfloat16 is timed on the JAX side only (inputs bf16, f32
accumulation), to size what a bf16 path could win on this CPU.
Run: ``python benchmarks/gemm_vs_torch.py [--rounds 3]`` with torch installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TOKENS = 2048
# (m, k, n) of y[m, n] = x[m, k] @ w[k, n]; forward, then dX = dY W^T and dW = X^T dY of the same layer
SHAPES = {
    "proj_384x384": (TOKENS, 384, 384),
    "ffn_in_384x1536": (TOKENS, 384, 1536),
    "ffn_out_1536x384": (TOKENS, 1536, 384),
    "ffn_in_dW_1536": (384, TOKENS, 1536),
}
REPS = 20


def child(side: str) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for name, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), np.float32)
        b = rng.standard_normal((k, n), np.float32)
        if side == "torch":
            import torch

            torch.set_num_threads(2)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            run = lambda: torch.mm(ta, tb)
            runs = {"f32": run}
        else:
            import jax
            import jax.numpy as jnp

            ja, jb = jax.device_put(a), jax.device_put(b)
            f32 = jax.jit(lambda x, y: x @ y)
            bf16 = jax.jit(lambda x, y: jnp.dot(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                                                preferred_element_type=jnp.float32))
            runs = {"f32": lambda: f32(ja, jb).block_until_ready(),
                    "bf16": lambda: bf16(ja, jb).block_until_ready()}
        for dtype, run in runs.items():
            for _ in range(3):
                run()
            times = []
            for _ in range(REPS):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            out[f"{name}/{dtype}"] = 2 * m * k * n / statistics.median(times) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("jax", "torch"))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return
    runs = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for side in runs:
            proc = subprocess.run([sys.executable, __file__, "--child", side], capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{side} worker failed: {proc.stderr[-1500:]}")
            runs[side].append(json.loads(line[7:]))
    gflops = {side: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} for side, rs in runs.items()}
    ratios = {name: round(gflops["jax"][f"{name}/f32"] / gflops["torch"][f"{name}/f32"], 3) for name in SHAPES}
    bf16 = {name: round(gflops["jax"][f"{name}/bf16"] / gflops["jax"][f"{name}/f32"], 3) for name in SHAPES}
    print(json.dumps({"gflops": gflops, "jax_f32_vs_torch_f32": ratios, "jax_bf16_vs_jax_f32": bf16,
                      "tokens": TOKENS, "rounds": args.rounds}, indent=1))


if __name__ == "__main__":
    main()
