"""Worker: ``alad run`` that records the steps each stage takes, and may SIGKILL itself at a chosen point.

    python tests/helpers/pipeline_worker.py LOG KILL run --workdir DIR [KEY=VALUE ...]

KILL is one of

- ``none``: run to the end;
- ``STAGE:STEP``: die right after optimizer step STEP of stage STAGE (e.g.
  ``alad_w3_frozen:22``), before that step can be checkpointed; ``RUN/STAGE:STEP`` only in the
  run whose work directory is named RUN (a seed's: ``seed_2/align_w3:9``);
- ``cache``: die while the first feature cache is being written: its first
  array is on disk, the second only half, and the directory not yet renamed
  into place.

Every training stage that finishes appends one JSON line ``{"stage", "run", "steps"}``
to LOG (``run``: the name of the stage's work directory): the optimizer steps that call of ``fit`` ran (a resumed stage starts
after its checkpoint). The death is a real SIGKILL: no cleanup, no flush.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from alad_jax import cache
from alad_train import cli
from alad_train.stages import common


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def record_steps(log: Path, kill_stage: str | None = None, kill_step: int = 0) -> None:
    """Wrap the stages' ``fit``: log each stage's steps; die at ``kill_stage``'s ``kill_step``."""
    real_fit = common.fit

    def fit(*args, **kwargs):
        name, steps = kwargs["name"], []
        run = Path(kwargs["checkpoint_dir"]).parents[1].name  # WORKDIR/checkpoints/<stage>

        def on_step(step: int) -> None:
            steps.append(step)
            if kill_stage in (name, f"{run}/{name}") and step == kill_step:
                _die()

        result = real_fit(*args, on_step=on_step, **kwargs)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": name, "run": run, "steps": steps}) + "\n")
        return result

    common.fit = fit


class _NumpyDyingInSecondSave:
    """numpy for alad_jax.cache, except that its second ``save`` writes half a file and dies."""

    def __init__(self):
        self.saves = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def save(self, file, array):
        np.save(file, array)
        self.saves += 1
        if self.saves == 2:
            os.truncate(file, os.path.getsize(file) // 2)
            _die()


def main() -> int:
    log, kill, *argv = sys.argv[1:]
    if kill == "cache":
        record_steps(Path(log))
        cache.np = _NumpyDyingInSecondSave()
    elif kill == "none":
        record_steps(Path(log))
    else:
        stage, step = kill.rsplit(":", 1)
        record_steps(Path(log), stage, int(step))
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
