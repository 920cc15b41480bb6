"""What ``alad bench`` measures and how often: shapes, repetitions, targets (no heavy imports: the PyTorch
worker process reads these too)."""

from __future__ import annotations

import dataclasses

SEQ = 128
LATENCY_BATCHES = (1, 32)
WINDOWS = (1, 3, 5)
EPOCHS = 10  # stage 2 of the paper
MFU_BATCH = (32, 128)  # 4096 tokens: the stages' token budget
FINETUNE_BATCH = (32, 64)
ALIGN_BATCH = (32, 128)  # the stages' 4096-token budget, every position real
TORCH_AUTOCAST = "+bf16_autocast"  # a PyTorch step's name with this suffix runs its forward under CPU autocast
GEMM_N = 2048  # the square matmul both frameworks' GEMM rates are measured on (--vs-torch)
GEMM_DTYPES = ("float32", "bfloat16")
# Aspirations for the implementation's speed (reported as reached or not, never enforced).
TARGETS = {"stage2_10epoch_speedup": 5.0, "adapter_step_mfu": 0.5, "alad_w3_b32_latency_overhead": 1.3}


@dataclasses.dataclass(frozen=True)
class Effort:
    """Repetitions and data size: the real run, or ``--quick`` for smoke tests."""

    matmul_sizes: tuple[int, ...]
    matmul_reps: int
    latency_reps: dict  # batch rows -> timed runs per model
    mfu_reps: int
    max_rows: int  # stage-2 rows (0 = all the embedded default's train rows)
    torch_batches: int  # alignment batches timed for the PyTorch recipe (0 = the whole epoch)
    step_reps: int = 2  # interleaved reps of each side-by-side train step (steps.py)


FULL = Effort(matmul_sizes=(512, 1024, 2048), matmul_reps=7, latency_reps={1: 40, 32: 12}, mfu_reps=10, max_rows=0,
              torch_batches=0, step_reps=10)
QUICK = Effort(matmul_sizes=(256,), matmul_reps=2, latency_reps={1: 3, 32: 3}, mfu_reps=2, max_rows=48, torch_batches=2)
