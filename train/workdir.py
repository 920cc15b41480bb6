"""A run's work directory: its pinned config, and what ``--restart`` deletes.

A run writes everything into one directory; re-running the same command
resumes it. The config is pinned at the first start (``config.toml``): a
different config for a run that has started is refused with the fixes.
What each subdirectory holds and what it costs on disk: docs/guide.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from alad_jax import distributed
from alad_train.config import Config, dump_toml
from alad_jax.errors import AladError
from alad_train.files import atomic_write_text


# What a run writes into its work directory; `--restart` removes these (cache/ is keyed by content: kept).
RUN_OUTPUTS = ("config.toml", "progress.json", "results.json", "results.md", "checkpoints", "models", "adapters",
               "plots", "tensorboard", "predictions")


def _has_started(workdir: Path) -> bool:
    """Whether a stage has finished (progress.json) or written a checkpoint: work a new config would discard."""
    checkpoints = workdir / "checkpoints"
    return (workdir / "progress.json").is_file() or (
        checkpoints.is_dir() and any(p.is_file() for p in checkpoints.rglob("*")))


def drop_finished_checkpoints(workdir: Path, progress: dict) -> list[str]:
    """Delete ``checkpoints/<stage>`` of every stage ``progress`` records as finished; the names deleted.

    A finished stage is never trained again (its outputs are in ``models/``,
    ``adapters/`` and progress.json), so its resumable state is dead weight.
    """
    checkpoints = workdir / "checkpoints"
    dropped = [name for name in progress if (checkpoints / name).is_dir()]
    for name in dropped:
        shutil.rmtree(checkpoints / name)
    return dropped


def drop_cache(workdir: Path) -> None:
    """Delete the feature cache (``cache/``): a later run that needs it computes it again."""
    shutil.rmtree(workdir / "cache", ignore_errors=True)


def config_conflict(workdir: Path, cfg: Config) -> str | None:
    """Why ``alad run`` would refuse ``cfg`` in ``workdir`` (a started run pinned another config), or None."""
    config_path = workdir / "config.toml"
    if not config_path.is_file() or not _has_started(workdir):
        return None
    old, new = config_path.read_text(encoding="utf-8"), dump_toml(cfg)
    return None if old == new else f"{config_path} holds a different config ({_first_difference(old, new)})"


def clear_run(workdir: Path) -> None:
    """Delete a run's outputs (RUN_OUTPUTS only: nothing else in ``workdir`` is touched)."""
    for name in RUN_OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_workdir(workdir: Path, cfg: Config, *, restart: bool = False) -> Path:
    """Create ``workdir`` and pin its config.

    A different config in a run that has started (a finished stage or a
    checkpoint) is refused, naming the fixes; in one that never started (it
    failed at start-up) it is replaced. ``restart`` first deletes the run's
    outputs.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise AladError(f"--workdir {workdir} is a file; give a directory")
    if restart and distributed.is_primary():
        clear_run(workdir)
    if restart and jax.process_count() > 1:  # no host reads the old progress while the primary deletes it
        multihost_utils.sync_global_devices("alad-restart")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.toml"
    text = dump_toml(cfg)
    old = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    if old is not None and old != text:
        conflict = config_conflict(workdir, cfg)
        if conflict:
            raise AladError(
                f"{conflict}; to resume, re-run with the same config and overrides; to start over, add --restart "
                f"(deletes this run's outputs); or pick a new --workdir"
            )
        if distributed.is_primary():
            print(f"{workdir}: replacing the config of a run that never finished a stage", file=sys.stderr)
            # A student truncated for the old config would be reused as is: it goes with it.
            shutil.rmtree(workdir / "models" / "student", ignore_errors=True)
            atomic_write_text(config_path, text)
    elif old is None and distributed.is_primary():
        atomic_write_text(config_path, text)
    return workdir


def _first_difference(old: str, new: str) -> str:
    """``'seed = 0' there, 'seed = 5' now``: the first line of the resolved TOML that differs."""
    for line_old, line_new in zip(old.splitlines(), new.splitlines()):
        if line_old != line_new:
            return f"{line_old!r} there, {line_new!r} now"
    return "a different number of keys"
