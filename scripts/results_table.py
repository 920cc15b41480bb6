"""Render the README's results table from one run's results.json (never by hand), with the run's
standard deviations over seeds and paired bootstrap intervals where results.json has them.

    python scripts/results_table.py runs/default                      # print the Markdown
    python scripts/results_table.py runs/default --readme README.md   # replace the README's table
    python scripts/results_table.py runs/ner --readme docs/results.md --block ner   # the NER table
    python scripts/results_table.py runs/default --deploy --readme README.md --block deploy   # which case to ship

Every number comes from the one ``results.json`` given (a work directory or
the file itself), so a table can never mix runs. With ``--readme`` the text
between the README's ``<!-- results-table:begin -->`` and
``<!-- results-table:end -->`` lines (``results-table:NAME:begin`` / ``:end``
with ``--block NAME``) is replaced and nothing else is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alad_jax.errors import AladError
from alad_train.cases import FROZEN, HEAD, JOINT, PROBE, STUDENT_FT, TEACHER_FT
from alad_train.report.contract import headline

TEACHER, STUDENT = TEACHER_FT.row_name(), PROBE.row_name()
BEGIN = "<!-- results-table:begin -->"
END = "<!-- results-table:end -->"


def markers(block: str | None) -> tuple[str, str]:
    """The README lines around the default table, or around table ``block``."""
    if not block:
        return BEGIN, END
    return f"<!-- results-table:{block}:begin -->", f"<!-- results-table:{block}:end -->"


class TableError(Exception):
    """A bad input: printed as one line, exit status 2."""


def load_results(path: Path) -> tuple[dict, Path]:
    """(results, the file read) from a work directory or a results.json path."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise TableError(f"{file}: no such file; pass a finished run's work directory or its results.json")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TableError(f"{file}:{error.lineno}: invalid JSON ({error.msg})") from None
    for key in ("metric", "rows"):
        if key not in results:
            raise TableError(f"{file}: no '{key}'; is this an alad run's results.json?")
    return results, file


def _cell(value, metric: str, scale: float, std, where: str) -> str:
    """A dev/test cell: tagging 0.823 (several seeds: ``0.823 ± 0.004``); QA ``71.32 (exact 68.10)``."""
    digits = 3 if scale == 1 else 2
    text = f"{headline(value, metric, where):.{digits}f}"
    if std is not None:
        text += f" ± {headline(std, metric, where + ' (its standard deviation)'):.{digits}f}"
    if isinstance(value, dict):
        others = ", ".join(f"{k} {float(v):.{digits}f}" for k, v in value.items() if k != metric)
        text += f" ({others})" if others else ""
    return text


def _points(value: float, scale: float) -> str:
    return f"{value * 100 / scale:+.2f}"


def comparison_lines(results: dict) -> list[str]:
    """The run's paired comparisons with their 95% intervals (results.json ``comparisons``), if any."""
    comparisons = results.get("comparisons") or []
    if not comparisons:
        return []
    scale = float(results.get("metric_scale") or 1)
    first = comparisons[0]
    seeds = first.get("seeds")
    how = (f"{len(seeds)} seeds: resampling seeds and, within each, test sentences, so the interval includes "
           "seed-to-seed variation" if seeds else "resampling test " + first["unit"])
    lines = ["", f"Paired differences on test, in points, with their 95% bootstrap interval ({first['resamples']:,} "
                 f"resamples, {how}); better or worse only when the interval excludes 0:", ""]
    for c in comparisons:
        lines.append(f"- {c['a']} - {c['b']}: {_points(c['diff'], scale)} "
                     f"[{_points(c['ci_low'], scale)}, {_points(c['ci_high'], scale)}], {c['verdict']}")
    return lines


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _stopping(row: dict) -> str:
    """``18 (15), plateau``; several seeds: each seed's, ``14 (11) / 18 (15) / 12 (9), plateau``."""
    runs = [r for r in row.get("per_seed") or [] if "epochs_run" in r] or ([row] if "epochs_run" in row else [])
    if not runs:
        return "-"
    reasons = {r["stopped"] for r in runs}
    if len(reasons) == 1:
        return " / ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in runs) + f", {reasons.pop()}"
    return " / ".join(f"{r['epochs_run']} ({r['best_epoch']}), {r['stopped']}" for r in runs)


def render(results: dict, source: str) -> str:
    """The table and the lines that say where its numbers come from (Markdown, ends with a newline)."""
    metric = results["metric"]
    rows = results["rows"]
    scale = float(results.get("metric_scale") or 1)
    test = {r["name"]: headline(r["test"], metric, f"row '{r['name']}' test") for r in rows}
    teacher_total = next((r["params"]["total"] for r in rows if r["name"] == TEACHER), 0)
    has_gap = TEACHER in test and STUDENT in test and test[TEACHER] != test[STUDENT]
    stage_seconds = sum(r.get("wall_seconds") or 0 for r in rows) + sum(
        stage.get("wall_seconds") or 0 for window in (results.get("alignment") or {}).values()
        for stage in window.values())
    seeds = results.get("seeds") or []
    runs = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± standard deviation" if seeds else "one run"
    gaps = {g["row"]: g for g in results.get("gap_recovered") or []}
    lines = [
        f"Generated by `python scripts/results_table.py` from `{source}` ({runs}): task {results.get('task')}, "
        f"test {metric}, teacher `{results.get('teacher')}`, student `{results.get('student')}`.",
    ]
    timing = []
    if stage_seconds:
        timing.append(f"stages took {_minutes(stage_seconds)} in all")
    if results.get("seconds"):
        timing.append(f"the session that finished the run {_minutes(float(results['seconds']))}")
    if results.get("devices"):
        timing.append(f"on {', '.join(sorted(set(results['devices'])))}")
    if timing:
        lines.append(f"Time: {'; '.join(timing)}.")
    lines += [f"- {' '.join(str(note).split())}" for note in results.get("notes") or []]
    lines += [
        "",
        "| row | dev | test | gap recovered | epochs (best), stopped | trainable params | adapter (% of teacher) "
        "| latency ms | cosine to teacher |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = row["name"]
        gap = "-"
        if has_gap and name not in (TEACHER, STUDENT):
            share = (test[name] - test[STUDENT]) / (test[TEACHER] - test[STUDENT])
            gap = f"{100 * share:.1f}%"
            if name in gaps:
                gap += f" [{gaps[name]['ci_low']:.1f}, {gaps[name]['ci_high']:.1f}]"
        adapter = row["params"].get("adapter") or 0
        adapter_cell = f"{adapter:,} ({100 * adapter / teacher_total:.1f}%)" if adapter and teacher_total else "-"
        cosine = "-" if row.get("cosine") is None else f"{row['cosine']:.3f}"
        stopping = _stopping(row)
        lines.append(
            f"| {name} | {_cell(row['dev'], metric, scale, row.get('dev_std'), 'row ' + repr(name) + ' dev')} "
            f"| {_cell(row['test'], metric, scale, row.get('test_std'), 'row ' + repr(name) + ' test')} | {gap} "
            f"| {stopping} | {row['params']['trainable']:,} | {adapter_cell} | {row['latency_ms']:.1f} | {cosine} |"
        )
    if has_gap:
        lines += ["", f"Gap recovered = (row - {STUDENT}) / ({TEACHER} - {STUDENT}) on test"
                  + (" [its 95% bootstrap interval]" if gaps else "") + "."]
    lines += comparison_lines(results)
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    """2.0 M, 6.5 k: a parameter count as the README's prose says it."""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def render_deploy(results: dict, source: str) -> str:
    """README's "which case to deploy": each deployable case's test score and latency, and when to ship it.

    The prose's numbers (parameters a task adds, share of the gap, latency against the frozen case) are
    derived from the same rows, so the advice cannot drift from the run it cites."""
    metric = results["metric"]
    scale = float(results.get("metric_scale") or 1)
    rows = {r["name"]: r for r in results["rows"]}
    window = next((r.get("window") for r in results["rows"] if r["name"].startswith("alad_w")), None)
    names = {case: case.row_name(window) for case in (FROZEN, JOINT, HEAD)} | {
        STUDENT_FT: STUDENT_FT.row_name(), TEACHER_FT: TEACHER_FT.row_name()}
    missing = [name for name in [*names.values(), STUDENT] if name not in rows]
    if window is None or missing:
        raise TableError(f"{source}: --deploy needs the rows {', '.join(missing) or 'alad_w<K>_*'}; "
                         "run the full comparison (cases=[\"all\"])")
    test = {name: headline(rows[name]["test"], metric, f"row '{name}' test") for name in [*names.values(), STUDENT]}
    latency = {name: float(rows[name]["latency_ms"]) for name in names.values()}
    frozen, joint, head = names[FROZEN], names[JOINT], names[HEAD]
    teacher, student_ft = names[TEACHER_FT], names[STUDENT_FT]
    gap = (test[joint] - test[STUDENT]) / (test[teacher] - test[STUDENT]) if test[teacher] != test[STUDENT] else 0
    advice = {
        frozen: ("AlAd + head, student frozen", "one frozen student serves several tasks: each task adds only an "
                 f"adapter and a head ({_count(rows[frozen]['params']['trainable'])} parameters here)"),
        joint: ("student + AlAd + head", f"accuracy matters most: closest to the teacher ({100 * gap:.0f}% of the gap)"),
        head: ("the head only", f"training must be cheapest ({_count(rows[head]['params']['trainable'])} parameters "
               "on a frozen student + aligned AlAd)"),
        student_ft: ("student + head, no AlAd", "latency matters most: no adapter, "
                     f"{100 * (1 - latency[student_ft] / latency[frozen]):.0f}% faster here"),
        teacher: ("teacher + head", f"the ceiling, at {latency[teacher] / latency[frozen]:.1f}x the latency"),
    }
    seeds = results.get("seeds") or []
    runs = f"means over {len(seeds)} seeds" if seeds else "one run"
    lines = [f"Generated by `python scripts/results_table.py --deploy` from `{source}` ({runs}): test "
             f"{metric}, and the p50 latency of one batch as the run timed it (its notes say the batch).", "",
             "| case | trains | test | latency | deploy it when |", "|---|---|---:|---:|---|"]
    digits = 3 if scale == 1 else 2
    for case, name in names.items():
        label = f"`{case.name}` (`{name}`)" if name != case.name else f"`{name}`"
        trains, when = advice[name]
        lines.append(f"| {label} | {trains} | {test[name]:.{digits}f} | {latency[name]:.0f} ms | {when} |")
    return "\n".join(lines) + "\n"


def replace_block(readme: str, table: str, where: str, block: str | None = None) -> str:
    """``readme`` with the text between the block's begin and end lines replaced by ``table``."""
    start, stop = markers(block)
    before, begin, rest = readme.partition(start + "\n")
    _, end, after = rest.partition(stop)
    if not begin or not end:
        raise TableError(f"{where}: no '{start}' line followed by '{stop}'; add both around the table")
    return f"{before}{start}\n{table}{stop}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run's work directory, or its results.json")
    parser.add_argument("--readme", type=Path, help="write the table into this README between the markers")
    parser.add_argument("--block", help="the README table's name (markers results-table:NAME:begin/end)")
    parser.add_argument("--deploy", action="store_true",
                        help="render the 'which case to deploy' table instead of the results table")
    args = parser.parse_args(argv)
    try:
        results, file = load_results(args.run)
        source = file.as_posix()
        table = (render_deploy if args.deploy else render)(results, source)
        if args.readme is None:
            sys.stdout.write(table)
            return 0
        if not args.readme.is_file():
            raise TableError(f"--readme {args.readme}: no such file")
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_block(text, table, str(args.readme), args.block), encoding="utf-8")
        print(f"wrote the table of {source} into {args.readme}")
        return 0
    except (TableError, AladError) as error:
        print(f"results_table.py: error: {error}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError) as error:
        print(f"results_table.py: error: {args.run}: a row lacks or misformats {error}; "
              "is this an alad run's results.json?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
