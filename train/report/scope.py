"""What a run that trained only some cases (config key ``cases``) cannot conclude.

``results.json`` holds only the rows a run trained (and the teacher). Each
comparison of ``results.md`` needs two rows; this section names every
comparison that lost one of them, and what it would have measured.
"""

from __future__ import annotations

from alad_train import cases

PROBE, STUDENT_FT = cases.PROBE.row_name(), cases.STUDENT_FT.row_name()


def _comparisons(k: int) -> list[tuple[str, str, str]]:
    """(row, reference, what the difference measures) of window ``k``."""
    frozen = cases.FROZEN.row_name(k)
    return [
        (frozen, cases.NOALIGN.row_name(k), "alignment's gain vs a fresh adapter (the no-alignment ablation)"),
        (frozen, PROBE, "the frozen AlAd's gain over a linear probe on the same student"),
        (cases.JOINT.row_name(k), STUDENT_FT, "training student and AlAd together vs fine-tuning the student alone"),
    ]


def cannot_conclude(results: dict) -> list[str]:
    """The "What this run cannot conclude" section (no lines when every comparison has both rows)."""
    names = {r["name"] for r in results["rows"]}
    windows = sorted(set(cases.windows_in(cases.RowId.of_record(row) for row in results["rows"]))
                     | {int(w[1:]) for w in results.get("alignment") or {}})
    lines = []
    if PROBE not in names:
        lines.append(f"- gap recovered: not computed, {PROBE} (its lower end) was not trained")
    if not windows:
        lines.append("- whether alignment helps: not measured, no AlAd case was trained")
    for k in windows:
        for row, reference, measures in _comparisons(k):
            missing = [n for n in (row, reference) if n not in names]
            if len(missing) == 1:
                lines.append(f"- {measures}: not measured, {missing[0]} was not trained")
    if not lines:
        return []
    trained = results.get("cases")
    head = f"This run trained the teacher and {', '.join(trained)} (config key `cases`)." if trained else \
        "This run trained only some cases."
    return ["## What this run cannot conclude", "", head, "", *lines, ""]
