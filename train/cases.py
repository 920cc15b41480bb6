"""The cases of a run: one table, read by the pipeline, the report and ``alad predict``.

A case is one way of training a task model: which encoder it starts from,
whether an AlAd sits on top (and which one), what moves, and which stage
config (``config.stages.<stage>``) optimises it. Every row of ``results.json``
is one case, for the ``windowed`` cases once per window K: its identity is a
:class:`RowId` ``(case, window)``, whose ``name`` (``alad_w{K}_{case}``) is what
results.json and file names carry; nothing parses a name back. Adding a case is
one entry in :data:`CASES`; nothing else in the code names a case by its string.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from flax import nnx

from alad_jax.errors import AladError

STUDENT, TEACHER = "student", "teacher"
CONTINUAL, FRESH = "continual", "fresh"
NEW, GIVEN = "new", "given"  # a case's head: newly initialised, or the teacher checkpoint's own classifier


def param_filter(*parts: str):
    """``nnx.Param`` under any of the path parts (``"head"``, ``"adapter"``); every parameter when none."""
    if not parts:
        return nnx.Param
    return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(p) for p in parts)))


@dataclasses.dataclass(frozen=True)
class Case:
    """One row recipe (docs/method.md, section 2).

    Attributes:
      name: what users pass (``alad predict --case frozen``) and what saved models record.
      stage: the ``config.stages`` entry that optimises it.
      trains: path parts of the parameters that move (``()``: every parameter; ``None``: nothing, the
        case is only evaluated).
      encoder: ``"teacher"`` or ``"student"``: the encoder it starts from (the teacher stage's
        own checkpoint, or the compressed student).
      adapter: ``None`` (no AlAd), ``"continual"`` (the stage-2 AlAd of window K) or ``"fresh"``
        (a newly initialised AlAd of window K: the no-alignment ablation).
      row: the results row name of a case without adapter (windowed rows are ``alad_w{K}_{name}``).
      about: one line for people.
      head: ``"new"`` (a freshly initialised head) or ``"given"`` (the classifier of the teacher
        checkpoint, kept as it is: :mod:`alad_train.own_teacher`).
    """

    name: str
    stage: str
    trains: tuple[str, ...] | None
    encoder: str
    adapter: str | None
    about: str
    row: str = ""
    head: str = NEW

    @property
    def trainable(self):
        """The nnx filter of what moves (the loop splits the model by it)."""
        return nnx.Nothing if self.trains is None else param_filter(*self.trains)

    @property
    def trains_encoder(self) -> bool:
        return self.trains == ()

    @property
    def aligned(self) -> bool:
        """It starts from the stage-2 AlAd: the run needs stages 1 and 2 of each window for it."""
        return self.adapter == CONTINUAL

    @property
    def windowed(self) -> bool:
        return self.adapter is not None

    @property
    def frozen_student(self) -> bool:
        """Its encoder is the frozen student: it can train on the student's cached output."""
        return self.encoder == STUDENT and not self.trains_encoder

    def row_name(self, window: int | None = None) -> str:
        """The results row name of this case (of window K for a windowed case): ``RowId(self, window).name``."""
        return RowId(self, window).name


@dataclasses.dataclass(frozen=True)
class RowId:
    """A results row's identity: its case and, for a windowed case, its window K.

    ``name`` is the string results.json, progress.json and ``models/`` carry (``alad_w3_frozen``, ``teacher``);
    :meth:`record` the fields each results.json row stores, which :meth:`of_record` reads back.
    """

    case: Case
    window: int | None = None

    def __post_init__(self):
        if self.case.windowed and self.window is None:
            raise ValueError(f"case {self.case.name} needs a window K")
        if not self.case.windowed and self.window is not None:
            raise ValueError(f"case {self.case.name} has no window, got K={self.window}")

    @property
    def name(self) -> str:
        if not self.case.windowed:
            return self.case.row or self.case.name
        return f"alad_w{self.window}_{self.case.name}"

    def record(self) -> dict:
        """``{"case": ..., "window": ...}``: the row's identity as results.json stores it."""
        return {"case": self.case.name, "window": self.window}

    @classmethod
    def of_record(cls, row: dict) -> "RowId":
        """The identity of a results.json row, from its stored ``case`` and ``window``."""
        if row.get("case") not in BY_NAME:
            raise AladError(f"results row {row.get('name')!r} has no known 'case' field ({row.get('case')!r}); it was "
                            "written before rows carried their case and window: re-run alad run in its work directory")
        return cls(BY_NAME[row["case"]], row.get("window"))


TEACHER_FT = Case("teacher", "teacher", (), TEACHER, None, "the teacher, fine-tuned on the task (stage 0)")
TEACHER_HEAD = Case("teacher_head", "teacher", ("head",), TEACHER, None,
                    "an already fine-tuned teacher: only a new head trains", row="teacher")
TEACHER_GIVEN = Case("teacher_given", "teacher", None, TEACHER, None,
                     "a fine-tuned token classifier used as it is: its own head, nothing trains", row="teacher",
                     head=GIVEN)
PROBE = Case("probe", "probe", ("head",), STUDENT, None, "linear probe on the frozen student",
             row="student_probe")
STUDENT_FT = Case("student_ft", "student_ft", (), STUDENT, None, "the student fine-tuned in full, no AlAd")
HEAD = Case("head", "head", ("head",), STUDENT, CONTINUAL, "frozen student and AlAd, a new head trains")
FROZEN = Case("frozen", "frozen", ("adapter", "head"), STUDENT, CONTINUAL,
              "frozen student; AlAd and head train (the paper's main case)")
JOINT = Case("joint", "joint", (), STUDENT, CONTINUAL, "student, AlAd and head all train")
NOALIGN = Case("noalign_frozen", "frozen", ("adapter", "head"), STUDENT, FRESH,
               "as frozen, but AlAd starts untrained (the no-alignment ablation)")

# In run order: the teacher, the student baselines, then per window K the AlAd cases.
CASES = (TEACHER_FT, TEACHER_HEAD, TEACHER_GIVEN, PROBE, STUDENT_FT, HEAD, FROZEN, JOINT, NOALIGN)
BY_NAME = {case.name: case for case in CASES}
BASELINES = tuple(c for c in CASES if c.encoder == STUDENT and not c.windowed)
WINDOWED = tuple(c for c in CASES if c.windowed)
# What config key `cases` chooses from; the teacher row is always there (the alignment target and the ceiling).
SELECTABLE = BASELINES + WINDOWED
DEFAULT = FROZEN  # what `alad predict --model WORKDIR` serves without --case
# The alignment stages (1 and 2) train the AlAd of an AlignModel (student -> AlAd vs the frozen teacher).
ALIGNMENT_TRAINS = param_filter("adapter")

ALL = "all"  # config key `cases`: the full comparison


def selected(names) -> tuple[Case, ...]:
    """The cases config key ``cases`` names (``["all"]``: every one), in run order; one clear error for an
    unknown or repeated name."""
    if list(names) == [ALL]:
        return SELECTABLE
    valid = ", ".join(c.name for c in SELECTABLE) + f" (or just {ALL})"
    unknown = [n for n in names if n not in BY_NAME or BY_NAME[n] not in SELECTABLE]
    if unknown:
        raise AladError(f"config key 'cases' holds unknown case{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; use any of {valid} (the teacher always runs)")
    if not names:
        raise AladError(f"config key 'cases' is empty; name at least one of {valid}")
    if len(set(names)) != len(names):
        raise AladError(f"config key 'cases' repeats a case: {list(names)}")
    return tuple(c for c in SELECTABLE if c.name in names)


def windows_in(rows: Iterable[RowId]) -> list[int]:
    """Window sizes K of the windowed ``rows``, ascending."""
    return sorted({row.window for row in rows if row.window is not None})


def by_name(name: str) -> Case:
    """The windowed case called ``name`` (what ``--case`` accepts), or one clear error."""
    case = BY_NAME.get(name)
    if case is None or not case.windowed:
        raise AladError(f"--case {name!r} is not a case with a saved AlAd model; use one of "
                        f"{', '.join(c.name for c in WINDOWED)}")
    return case


def saved_rows(workdir: str | Path, marker: str = "alad.json") -> dict[RowId, Path]:
    """The saved models of the windowed cases in ``workdir/models``: a directory with a ``marker`` file (alad.json)
    is the row of window K (the window its AlAd records there) whose name it carries."""
    models = Path(workdir) / "models"
    if not models.is_dir():
        raise AladError(f"{workdir} has no models/ directory; pass the --workdir of a finished alad run")
    found = {}
    for path in sorted(models.iterdir()):
        if (path / marker).is_file():
            window = json.loads((path / marker).read_text(encoding="utf-8")).get("window")
            rows = [RowId(case, int(window)) for case in WINDOWED] if window is not None else []
            found.update({row: path for row in rows if row.name == path.name})
    return found


def model_dir(workdir: str | Path, case: str = DEFAULT.name, window: int | None = None,
              marker: str = "alad.json") -> Path:
    """``workdir/models/alad_w{K}_{case}``; with ``window=None`` the only K saved for that case.

    ``marker`` is the file that makes a directory a saved model (and records its case and window).
    """
    chosen = by_name(case)
    models = Path(workdir) / "models"
    saved = saved_rows(workdir, marker)
    found = sorted((row for row in saved if row.case is chosen), key=lambda row: row.window)
    if window is not None:
        row = RowId(chosen, window)
        if row not in saved:
            raise AladError(f"{models / row.name} is not a saved model (saved for case {case!r}: "
                            f"{[r.name for r in found] or 'none'}); pick another --case/--window or finish the run")
        return saved[row]
    if len(found) != 1:
        if found:
            raise AladError(f"{models}: several windows ({', '.join(r.name for r in found)}) for case {case!r}; "
                            "pass --window K")
        finished = sorted({row.case.name for row in saved})
        raise AladError(f"--case {case}: {models} has no saved model for it (finished: {', '.join(finished) or 'none'}); "
                        "pick one of those, or finish alad run first")
    return saved[found[0]]
