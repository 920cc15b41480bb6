"""What the training stages share: :func:`fit` with the run's settings, and how a stage ended."""

from __future__ import annotations

from alad_train import align
from alad_train.context import RunContext
from alad_train.loop import Objective, fit


def train(ctx: RunContext, name: str, objective: Objective, stage, batches_for_epoch, evaluate, higher_is_better,
          prepare=None):
    """:func:`fit` of stage or case ``name`` with the run's optimizer, seed, mesh, checkpoints and logger."""
    cfg = ctx.cfg
    return fit(
        objective, name=name, stage=stage, optim=cfg.optim, batches_for_epoch=batches_for_epoch,
        evaluate=evaluate, higher_is_better=higher_is_better, checkpoint_dir=ctx.workdir / "checkpoints" / name,
        seed=align.stage_seed(cfg, name), mesh=ctx.mesh, checkpoint_every=cfg.checkpoint_every,
        prepare=prepare, log_scalars=ctx.logger.log, matmul_dtype=cfg.matmul_dtype,
    )


def stopping(result) -> dict:
    """How a stage ended: epochs run, the best (restored) epoch, why it stopped, and every evaluation."""
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "padding": None if result.padding is None else round(result.padding, 4), "positions": result.positions,
            "history": result.history}
