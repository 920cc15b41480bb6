"""``results.md``: the numbers as a table, the share of the student-to-teacher gap each row
recovers, and three short sections computed from them: "Is the comparison fair?", "Did
alignment help?" and "What did it cost?".

Metrics are on a unit scale (tagging: 0..1) or a percent scale (SQuAD's official script:
0..100); "points" mean percentage points in both. The scale is ``results["metric_scale"]``
(1 or 100) when given, else 1 when every headline number lies in [0, 1], else 100.
"""

from __future__ import annotations

from typing import Any

from alad_jax.errors import AladError
from alad_train import cases
from alad_train.report.contract import headline
from alad_train.report.scope import cannot_conclude

TEACHER = cases.TEACHER_FT.row_name()
PROBE = cases.PROBE.row_name()
STUDENT_FT = cases.STUDENT_FT.row_name()


class _Numbers:
    """Headline test numbers by row name, and how to print them."""

    def __init__(self, results: dict):
        self.metric = results["metric"]
        self.rows = {r["name"]: r for r in results["rows"]}
        self.test = {n: headline(r["test"], self.metric, f"row '{n}'.test") for n, r in self.rows.items()}
        self.dev = dev = {n: headline(r["dev"], self.metric, f"row '{n}'.dev") for n, r in self.rows.items()}
        scale = results.get("metric_scale")
        if scale is None:
            scale = 1.0 if all(0.0 <= v <= 1.0 for v in [*self.test.values(), *dev.values()]) else 100.0
        if scale not in (1, 100):
            raise AladError(f"results['metric_scale'] is {scale!r}; use 1 (metrics in 0..1) or 100 (percent)")
        self.scale = float(scale)
        self.comparisons = {(c["a"], c["b"]): c for c in results.get("comparisons") or []}
        self.gaps = {g["row"]: g for g in results.get("gap_recovered") or []}
        self.seeds = results.get("seeds") or []
        self.seed_comparisons = results.get("seed_comparisons") or []

    def value(self, x: float) -> str:
        return f"{x:.4f}" if self.scale == 1.0 else f"{x:.2f}"

    def cell(self, metrics: Any) -> str:
        """A dev/test cell: the headline, then any other metrics in brackets."""
        if not isinstance(metrics, dict):
            return self.value(float(metrics))
        others = ", ".join(f"{k} {self.value(float(v))}" for k, v in metrics.items() if k != self.metric)
        head = self.value(float(metrics[self.metric]))
        return f"{head} ({others})" if others else head

    def points(self, a: float, b: float) -> float:
        """``a - b`` in percentage points."""
        return (a - b) * 100.0 / self.scale

    def spread(self, row: dict, split: str) -> str:
        """`` ± std`` of a several-seed row's headline on ``split`` (nothing for one seed)."""
        std = row.get(f"{split}_std")
        if std is None:
            return ""
        where = f"row '{row['name']}'.{split}_std"
        return f" ± {self.value(headline(std, self.metric, where))}"


STILL_RISING_POINTS = 0.2  # a row at its cap that gained this much in its last epoch had not finished


def still_rising(row: dict, nums: _Numbers) -> bool:
    """Whether ``row`` stopped at its epoch cap while its dev score was still rising (>= 0.2 points)."""
    dev = [float(h["dev"]) for h in row.get("history", []) if isinstance(h, dict) and "dev" in h]
    if row.get("stopped") == "plateau" or len(dev) < 2:
        return False
    return nums.points(dev[-1], max(dev[:-1])) >= STILL_RISING_POINTS


def teacher_beaten_on_dev(nums: _Numbers) -> list[str]:
    """Rows whose dev score exceeds the teacher's: then the teacher is no ceiling."""
    if TEACHER not in nums.dev:
        return []
    return [n for n, v in nums.dev.items() if n != TEACHER and v > nums.dev[TEACHER]]


def gap_recovered(row_test: float, probe_test: float, teacher_test: float) -> float | None:
    """Share (percent) of the student_probe -> teacher test gap a row closes; None when there is no gap."""
    gap = teacher_test - probe_test
    if gap == 0.0:
        return None
    return 100.0 * (row_test - probe_test) / gap


def _count(n: Any) -> str:
    return f"{int(n):,}"


def _share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


def _table(results: dict, nums: _Numbers) -> list[str]:
    teacher_total = nums.rows.get(TEACHER, {}).get("params", {}).get("total", 0)
    # Without a teacher that bounds every row, a share of the student-teacher gap means nothing.
    has_refs = TEACHER in nums.test and PROBE in nums.test and not teacher_beaten_on_dev(nums)
    lines = [
        "| row | dev | test | gap recovered (test) | epochs (best) | stopped | params total | trainable "
        "| adapter (% of teacher) | latency ms | cosine |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        name = row["name"]
        gap = None
        if has_refs and name not in (TEACHER, PROBE):
            gap = gap_recovered(nums.test[name], nums.test[PROBE], nums.test[TEACHER])
        gap_text = "-" if gap is None else f"{gap:.1f}%"
        if gap is not None and name in nums.gaps:
            gap_text += f" [{nums.gaps[name]['ci_low']:.1f}, {nums.gaps[name]['ci_high']:.1f}]"
        params = row["params"]
        adapter = _count(params["adapter"])
        if params["adapter"] and teacher_total:
            adapter += f" ({_share(params['adapter'], teacher_total)})"
        cells = [
            name, nums.cell(row["dev"]) + nums.spread(row, "dev"), nums.cell(row["test"]) + nums.spread(row, "test"),
            gap_text,
            f"{row['epochs_run']} ({row['best_epoch']})" if "epochs_run" in row else "-",
            (row.get("stopped") or "-") + (" **still rising**" if still_rising(row, nums) else ""),
            _count(params["total"]), _count(params["trainable"]), adapter,
            f"{row['latency_ms']:.2f}",
            "-" if row["cosine"] is None else f"{row['cosine']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _compare(nums: _Numbers, row: str, reference: str) -> tuple[str, str | None]:
    """A bullet comparing two rows on test, and its verdict: ``"better"`` / ``"worse"`` only when the
    comparison's interval (results.json ``comparisons``) excludes 0, else ``"no detectable difference"``;
    None when a row or the interval is missing."""
    missing = [n for n in (row, reference) if n not in nums.test]
    if missing:
        return f"- {row} vs {reference}: not measured, {', '.join(missing)} not trained in this run", None
    a, b = nums.test[row], nums.test[reference]
    interval = nums.comparisons.get((row, reference))
    if interval is None:
        line = (f"- {row} vs {reference}: {nums.points(a, b):+.2f} points ({nums.value(a)} vs {nums.value(b)}), "
                "no interval (the rows saved no test predictions)")
        return line, None
    low, high = (nums.points(interval[k], 0.0) for k in ("ci_low", "ci_high"))
    line = (f"- {row} vs {reference}: {nums.points(interval['diff'], 0.0):+.2f} points [{low:+.2f}, {high:+.2f}] "
            f"({nums.value(a)} vs {nums.value(b)}), {interval['verdict']}")
    return line, interval["verdict"]


def teacher_unfinished(nums: _Numbers) -> bool:
    """Whether the teacher's best dev epoch is one of its last two: stopped by patience 1, or at its cap while
    still improving, it had not shown a plateau (a sturdier rule: patience >= 2)."""
    row = nums.rows.get(TEACHER, {})
    if "best_epoch" not in row or "epochs_run" not in row:
        return False
    return int(row["best_epoch"]) >= int(row["epochs_run"]) - 1


def _is_it_fair(nums: _Numbers) -> tuple[list[str], list[str]]:
    """The "Is the comparison fair?" section, and the reasons (if any) it is not."""
    rising = [n for n, r in nums.rows.items() if still_rising(r, nums)]
    above = teacher_beaten_on_dev(nums)
    reasons = []
    if rising:
        reasons.append(f"{', '.join(rising)} stopped at the epoch cap while still improving on dev")
    if above:
        reasons.append(f"{', '.join(above)} beat the teacher on dev: the teacher is under-trained and the "
                       f"gap-recovered column is not meaningful")
    if teacher_unfinished(nums):
        row = nums.rows[TEACHER]
        reasons.append(f"{TEACHER}'s best dev epoch ({row['best_epoch']} of {row['epochs_run']}) is one of its last "
                       "two: it is not shown to be finished (give stages.teacher patience >= 2 and room under its cap)")
    lines = ["## Is the comparison fair?", "",
             "Every trained row stops by one rule: best dev score, stop after `patience` epochs without "
             "improvement or at its epoch cap.", ""]
    lines += [f"- No: {r}." for r in reasons] or ["- Yes: every row reached its plateau (or gained < "
                                                   f"{STILL_RISING_POINTS} points in its last epoch) and the "
                                                   "teacher is the ceiling on dev."]
    return lines + [""], reasons


def _interval_note(nums: _Numbers) -> list[str]:
    """How the intervals were computed (from the comparisons' own fields)."""
    if not nums.comparisons:
        return []
    first = next(iter(nums.comparisons.values()))
    seeds = first.get("seeds")
    across = (f"; {len(seeds)} seeds ({', '.join(map(str, seeds))}): each resample draws seeds, then each drawn "
              "seed's test sentences, so the interval includes seed-to-seed variation" if seeds else "")
    return [f"[low, high]: paired bootstrap 95% interval of the difference, {first['resamples']:,} resamples of "
            f"{first['unit']}{across}. A difference is better or worse only when its interval excludes 0; "
            "otherwise there is no detectable difference.", ""]


def _did_alignment_help(nums: _Numbers, windows: list[int], unfair: list[str] = ()) -> list[str]:
    unit = "0.01" if nums.scale == 1.0 else "1"
    lines = ["## Did alignment help?", "",
             f"Test {nums.metric}; differences in points (1 point = {unit} {nums.metric}).", ""]
    lines += _interval_note(nums)
    for k in windows:
        frozen, noalign = cases.FROZEN.row_name(k), cases.NOALIGN.row_name(k)
        lines += [f"### Window K={k}", ""]
        probe_line, vs_probe = _compare(nums, frozen, PROBE)
        noalign_line, vs_noalign = _compare(nums, frozen, noalign)
        joint_line, _ = _compare(nums, cases.JOINT.row_name(k), STUDENT_FT)
        lines += [probe_line, noalign_line, joint_line]
        missing_rows = any(n not in nums.test for n in (frozen, PROBE, noalign))
        if missing_rows:
            verdict = "cannot tell, a row it needs was not trained in this run"
        elif vs_probe is None or vs_noalign is None:
            verdict = "cannot tell without intervals (re-run the rows so they save their test predictions)"
        elif vs_probe == vs_noalign == "better":
            verdict = (f"yes: {frozen} beats both the linear probe and the same adapter trained "
                       "without alignment")
        else:
            short = [f"{ref} ({out})" for ref, out in ((PROBE, vs_probe), (noalign, vs_noalign)) if out != "better"]
            verdict = f"no: {frozen} does not beat {' and '.join(short)}"
        if unfair and not missing_rows:
            verdict = f"unsettled ({'; '.join(unfair)}); as measured, {verdict}"
        lines += [f"- Verdict: {verdict}", ""]
    lines += _per_seed(nums)
    return lines


def _per_seed(nums: _Numbers) -> list[str]:
    """Several seeds: each seed's paired differences (its own test sentences resampled)."""
    if not nums.seed_comparisons:
        return []
    lines = ["### Per seed", ""]
    for c in nums.seed_comparisons:
        low, high = (nums.points(c[k], 0.0) for k in ("ci_low", "ci_high"))
        lines.append(f"- seed {c['seed']}: {c['a']} vs {c['b']}: {nums.points(c['diff'], 0.0):+.2f} points "
                     f"[{low:+.2f}, {high:+.2f}], {c['verdict']}")
    return lines + [""]


def _what_did_it_cost(nums: _Numbers, windows: list[int]) -> list[str]:
    lines = ["## What did it cost?", ""]
    student_total = nums.rows.get(PROBE, {}).get("params", {}).get("total", 0)
    teacher_total = nums.rows.get(TEACHER, {}).get("params", {}).get("total", 0)
    for k in windows:
        frozen_name = cases.FROZEN.row_name(k)
        frozen = nums.rows.get(frozen_name)
        lines += [f"### Window K={k}", ""]
        if frozen is None:
            lines += [f"- {frozen_name} row missing", ""]
            continue
        adapter = frozen["params"]["adapter"]
        lines.append(f"- adapter: {_count(adapter)} parameters = {_share(adapter, student_total)} of the student "
                     f"({PROBE} total {_count(student_total)}) and {_share(adapter, teacher_total)} "
                     f"of the teacher ({_count(teacher_total)})")
        latency = frozen["latency_ms"]
        parts = []
        for ref in (PROBE, TEACHER):
            if ref in nums.rows and nums.rows[ref]["latency_ms"]:
                ref_ms = nums.rows[ref]["latency_ms"]
                parts.append(f"{latency / ref_ms:.2f}x {ref} ({ref_ms:.2f} ms)")
        lines += [f"- latency: {frozen_name} {latency:.2f} ms = {', '.join(parts) or 'no reference latency'}", ""]
    return lines


def render_markdown(results: dict) -> str:
    """``results.md`` for validated ``results`` (see :func:`write_results`)."""
    nums = _Numbers(results)
    windows = cases.windows_in(cases.RowId.of_record(row) for row in results["rows"])
    lines = [f"# {results['task']}: {results['metric']}, teacher {results['teacher']}, "
             f"student {results['student']}", ""]
    notes = results.get("notes") or []
    if notes:
        lines += [f"- {' '.join(str(n).split())}" for n in notes] + [""]
    lines += _table(results, nums) + [""]
    lines += [f"Gap recovered = (row - {PROBE}) / ({TEACHER} - {PROBE}) on test"
              + (" [its paired bootstrap 95% interval]" if nums.gaps else "") + ". "
              "Epochs (best): epochs run and the epoch whose state was restored for test.", ""]
    if nums.seeds:
        lines += [f"Several seeds ({', '.join(map(str, nums.seeds))}): dev and test are the mean ± the sample "
                  "standard deviation over seeds; other columns and the stopping record are those of "
                  "the least finished seed (`stopping_seed` in results.json).", ""]
    fair_lines, unfair = _is_it_fair(nums)
    lines += fair_lines
    lines += _did_alignment_help(nums, windows, unfair)
    lines += _what_did_it_cost(nums, windows)
    lines += cannot_conclude(results)
    return "\n".join(lines).rstrip("\n") + "\n"


