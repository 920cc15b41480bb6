"""What a run shows while it runs: TensorBoard scalars and the one line printed per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter

from alad_jax.errors import AladError


class ScalarLogger:
    """TensorBoard scalars under ``logdir``, tagged ``stage/name``; does nothing when not ``enabled``.

    Non-primary hosts pass ``enabled=False`` so one host writes one event file.
    Events reach the disk every few seconds (each flush fsyncs, too slow per
    step), so a killed run loses at most the last seconds of scalars.
    """

    def __init__(self, logdir: Path, enabled: bool = True):
        self._writer = SummaryWriter(str(logdir), flush_secs=10) if enabled else None

    def log(self, stage: str, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise AladError(f"scalar '{stage}/{name}' at step {step} is {value!r}, not a number; "
                                "log only numeric metrics") from None
            self._writer.add_scalar(f"{stage}/{name}", number, global_step=int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ScalarLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short_number(x: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _metric_text(value: Any, metric: str, name_scalar: bool) -> str:
    def fmt(x: float) -> str:
        return f"{x:.4f}" if abs(x) <= 1.0 else f"{x:.2f}"

    if isinstance(value, dict):
        ordered = sorted(value.items(), key=lambda kv: kv[0] != metric)  # headline first
        return " ".join(f"{k} {fmt(float(v))}" for k, v in ordered)
    return f"{metric} {fmt(float(value))}" if name_scalar else fmt(float(value))


def format_summary(stage: str, record: dict) -> str:
    """One line per finished stage, from whichever of these ``record`` keys are present.

    ``metric`` (name of a scalar ``dev``/``test``, default ``score``),
    ``dev``, ``test`` (number or dict of metrics), ``mse`` (validation
    alignment loss), ``steps``, ``seconds`` (or ``train_seconds``),
    ``tokens_per_s``, ``cosine``. E.g.
    ``[alad_w3_frozen] dev accuracy 0.8312 test 0.8401 | 252 steps 41.2 s | 7.9k tok/s | cosine 0.871``.
    """
    metric = record.get("metric", "score")
    parts = []
    splits = [split for split in ("dev", "test") if record.get(split) is not None]
    # a scalar metric is named once ("dev accuracy 0.83 test 0.84"), dict metrics each time
    scores = [f"{split} {_metric_text(record[split], metric, name_scalar=i == 0)}" for i, split in enumerate(splits)]
    if record.get("mse") is not None:
        scores.append(f"val mse {float(record['mse']):.4f}")
    if scores:
        parts.append(" ".join(scores))
    seconds = record.get("seconds", record.get("train_seconds"))
    timing = []
    if record.get("steps") is not None:
        timing.append(f"{int(record['steps'])} steps")
    if seconds is not None:
        timing.append(f"{float(seconds):.1f} s")
    if record.get("wall_seconds") is not None:
        timing.append(f"({float(record['wall_seconds']):.1f} s with evaluation)")
    if record.get("compile_seconds") is not None:
        timing.append(f"{float(record['compile_seconds']):.1f} s compiling")
    if timing:
        parts.append(" ".join(timing))
    if record.get("tokens_per_s") is not None:
        parts.append(f"{_short_number(float(record['tokens_per_s']))} tok/s")
    if record.get("cosine") is not None:
        parts.append(f"cosine {float(record['cosine']):.3f}")
    return " | ".join([f"[{stage}]" + (f" {parts[0]}" if parts else ""), *parts[1:]])
