"""What ``alad run`` will do: the stages and rows config key ``cases`` needs, in run order.

The teacher always runs (it is the alignment target, the cosine's reference and
the ceiling of the comparison). Stages 1 and 2 of a window K run only when a
chosen case starts from the stage-2 AlAd (:attr:`Case.aligned`); the
no-alignment ablation needs neither. ``alad run`` executes this plan and
``alad run --check`` prints it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alad_train.config import Config
from alad_train import cases
from alad_train.cases import Case

LATENCY = "latency"


@dataclasses.dataclass(frozen=True)
class Step:
    """One entry of progress.json (and its ``checkpoints/<name>``).

    Attributes:
      name: the progress key: a results row name, ``align_wK`` / ``continual_wK``, or ``latency``.
      label: where it sits in the method, for people (``stage 0``, ``baseline``, ``stage 3``, ...).
      about: one line for people.
      case: the row's case (None for alignment stages and the latency measurement).
      window: K of an AlAd stage or row.
      alignment: ``"align"`` (stage 1) or ``"continual"`` (stage 2) for the alignment stages.
    """

    name: str
    label: str
    about: str
    case: Case | None = None
    window: int | None = None
    alignment: str | None = None

    @property
    def row(self) -> bool:
        """It produces a results row."""
        return self.case is not None

    @property
    def row_id(self) -> cases.RowId | None:
        """The identity of the row it produces (None for alignment stages and the latency measurement)."""
        return cases.RowId(self.case, self.window) if self.case is not None else None


def make_plan(cfg: Config, teacher: Case) -> list[Step]:
    """The steps of ``cfg``'s run, in order; ``teacher`` is the teacher row's case (:mod:`.own_teacher`)."""
    chosen = cases.selected(cfg.cases)
    label = "stage 0" if teacher.trains_encoder else "teacher"
    steps = [Step(teacher.row_name(), label, teacher.about, case=teacher)]
    steps += [Step(c.row_name(), "baseline", c.about, case=c) for c in chosen if not c.windowed]
    for k in cfg.windows:
        if any(c.aligned for c in chosen):
            steps += [Step(f"align_w{k}", "stage 1", f"task-independent alignment on the corpus, K={k}",
                           window=k, alignment="align"),
                      Step(f"continual_w{k}", "stage 2", f"continual alignment on the task text, K={k}",
                           window=k, alignment="continual")]
        steps += [Step(c.row_name(k), "stage 3" if c.aligned else "ablation", c.about, case=c, window=k)
                  for c in chosen if c.windowed]
    steps.append(Step(LATENCY, "measure", "latency of every row's saved model (interleaved)"))
    return steps


def not_trained(cfg: Config) -> list[str]:
    """Row names of the full comparison that ``cfg.cases`` leaves out."""
    chosen = cases.selected(cfg.cases)
    names = [c.row_name() for c in cases.BASELINES if c not in chosen]
    return names + [c.row_name(k) for k in cfg.windows for c in cases.WINDOWED if c not in chosen]


def _status(step: Step, progress: dict, workdir: Path) -> str:
    if step.name in progress:
        return "done"
    directory = workdir / "checkpoints" / step.name
    saved = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    return f"resumes at step {max(saved)}" if saved else "to run"


def format_plan(cfg: Config, steps: list[Step], progress: dict, workdir: Path) -> str:
    """The plan as lines: each step with its status in ``workdir`` (done / resumes at step N / to run)."""
    width = max(len(s.name) for s in steps)
    lines = [f"plan ({len(steps)} steps; cases = {cfg.cases}):"]
    lines += [f"  {s.label:<9} {s.name:<{width}}  {_status(s, progress, workdir):<20} {s.about}" for s in steps]
    rows = [s.name for s in steps if s.row]
    lines.append(f"results.json rows: {', '.join(rows)}")
    skipped = not_trained(cfg)
    if skipped:
        lines.append(f"not trained (not in cases): {', '.join(skipped)}")
    return "\n".join(lines)
