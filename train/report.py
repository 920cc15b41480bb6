"""What a finished run leaves for people to read: results, plots, scalars.

``write_results`` writes ``results.json`` (the contract in docs/method.md, section 3)
and ``results.md`` (the same numbers as a table, the share of the
student-to-teacher gap each row recovers, and two short sections, "Did
alignment help?" and "What did it cost?", computed from the numbers).
``plot_curves`` / ``plot_results`` draw PNGs with matplotlib's Agg canvas (no
pyplot, so no global backend state is touched). ``ScalarLogger`` writes
TensorBoard event files. ``format_summary`` is the one line printed per stage.

A row's ``dev`` / ``test`` is either one number or a dict of metrics (QA:
``{"f1": .., "exact": ..}``); the top-level ``metric`` names the headline
number either way. Metrics are on a unit scale (tagging: 0..1) or a percent
scale (SQuAD's official script: 0..100); "points" mean percentage points in
both. The scale is ``results["metric_scale"]`` (1 or 100) when given, else
1 when every headline number lies in [0, 1], else 100.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboardX import SummaryWriter

from alad_jax.errors import AladError

TOP_KEYS = ("task", "metric", "teacher", "student", "rows")
ROW_KEYS = ("name", "dev", "test", "params", "latency_ms", "cosine")
PARAM_KEYS = ("total", "trainable", "adapter")
ALIGNMENT_PREFIXES = ("align_", "continual_")
_ALAD_ROW = re.compile(r"^alad_w(\d+)_(head|frozen|joint|noalign_frozen)$")


# ---------------------------------------------------------------- results


def _plain(value: Any, where: str, strict: bool) -> Any:
    """``value`` as JSON-ready Python (numpy / jax scalars -> float/int).

    JSON has no NaN: a non-finite float is an error where ``strict`` (the
    contract's fields), and ``null`` elsewhere (extras such as a loss that was
    never computed).
    """
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}", strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # numpy / jax scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if strict:
            raise AladError(f"results {where} is {value}: the contract needs a finite number; "
                            "check the stage that produced it (a diverged loss or an empty eval set)")
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise AladError(f"results {where} holds a {type(value).__name__}, which JSON cannot store; "
                    "pass numbers, strings, lists or dicts")


def _headline(value: Any, metric: str, where: str) -> float:
    """The ``metric`` number of a row's ``dev`` / ``test`` (a number or a dict of metrics)."""
    if isinstance(value, dict):
        if metric not in value:
            raise AladError(f"results {where} has metrics {sorted(value)} but not the headline "
                            f"'{metric}'; add it or set results['metric'] to one of them")
        value = value[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AladError(f"results {where} is {value!r}, not a number; fill it from the stage's evaluation")
    return float(value)


def _validated(results: dict) -> dict:
    """``results`` as plain JSON data, after checking the section 4 contract's keys and types."""
    for key in TOP_KEYS:
        if key not in results:
            raise AladError(f"results: top-level key '{key}' missing; the contract needs {list(TOP_KEYS)}")
    rows = results["rows"]
    if not isinstance(rows, (list, tuple)) or not rows:
        raise AladError("results['rows'] must be a non-empty list of row dicts")
    plain_rows = []
    for i, row in enumerate(rows):
        name = row.get("name", f"#{i}") if isinstance(row, dict) else f"#{i}"
        where = f"row '{name}'"
        if not isinstance(row, dict):
            raise AladError(f"results {where} is a {type(row).__name__}, not a dict")
        for key in ROW_KEYS:
            if key not in row:
                raise AladError(f"results {where} lacks '{key}'; every row needs {list(ROW_KEYS)}")
        params = row["params"]
        if not isinstance(params, dict) or any(k not in params for k in PARAM_KEYS):
            raise AladError(f"results {where} params must be a dict with {list(PARAM_KEYS)}, got {params!r}")
        contract = {k: _plain(row[k], f"{where}.{k}", strict=True) for k in ROW_KEYS}
        extras = {k: _plain(v, f"{where}.{k}", strict=False) for k, v in row.items() if k not in ROW_KEYS}
        for key in ("dev", "test"):
            _headline(contract[key], results["metric"], f"{where}.{key}")
        plain_rows.append({**contract, **extras})
    top = {k: _plain(v, k, strict=False) for k, v in results.items() if k != "rows"}
    return {**top, "rows": plain_rows}


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` so a reader (or a killed run) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_results(workdir: Path, results: dict) -> None:
    """Write ``workdir/results.json`` (contract, indent 2) and ``workdir/results.md``.

    ``results``: ``task``, ``metric``, ``teacher``, ``student``, optional
    ``notes`` (list of lines) and ``metric_scale``, and ``rows``, each with
    ``name``, ``dev``, ``test`` (number or dict of metrics), ``params``
    (``total``, ``trainable``, ``adapter``), ``latency_ms``, ``cosine``
    (``None`` without an adapter); extra keys are kept. Raises ``AladError``
    naming the row and key when the contract's part is missing or not finite;
    then neither file is touched.
    """
    data = _validated(results)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(data)
    _atomic_write_text(workdir / "results.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    _atomic_write_text(workdir / "results.md", markdown)


# ---------------------------------------------------------------- markdown


class _Numbers:
    """Headline test numbers by row name, and how to print them."""

    def __init__(self, results: dict):
        self.metric = results["metric"]
        self.rows = {r["name"]: r for r in results["rows"]}
        self.test = {n: _headline(r["test"], self.metric, f"row '{n}'.test") for n, r in self.rows.items()}
        self.dev = dev = {n: _headline(r["dev"], self.metric, f"row '{n}'.dev") for n, r in self.rows.items()}
        scale = results.get("metric_scale")
        if scale is None:
            scale = 1.0 if all(0.0 <= v <= 1.0 for v in [*self.test.values(), *dev.values()]) else 100.0
        if scale not in (1, 100):
            raise AladError(f"results['metric_scale'] is {scale!r}; use 1 (metrics in 0..1) or 100 (percent)")
        self.scale = float(scale)

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


STILL_RISING_POINTS = 0.2  # a row at its cap that gained this much in its last epoch had not finished


def still_rising(row: dict, nums: _Numbers) -> bool:
    """Whether ``row`` stopped at its epoch cap while its dev score was still rising (>= 0.2 points)."""
    dev = [float(h["dev"]) for h in row.get("history", []) if isinstance(h, dict) and "dev" in h]
    if row.get("stopped") == "plateau" or len(dev) < 2:
        return False
    return nums.points(dev[-1], max(dev[:-1])) >= STILL_RISING_POINTS


def teacher_beaten_on_dev(nums: _Numbers) -> list[str]:
    """Rows whose dev score exceeds the teacher's: then the teacher is no ceiling."""
    if "teacher" not in nums.dev:
        return []
    return [n for n, v in nums.dev.items() if n != "teacher" and v > nums.dev["teacher"]]


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


def windows_in(names: Sequence[str]) -> list[int]:
    """Window sizes K that have at least one ``alad_wK_*`` row, ascending."""
    return sorted({int(m.group(1)) for m in map(_ALAD_ROW.match, names) if m})


def _table(results: dict, nums: _Numbers) -> list[str]:
    teacher_total = nums.rows.get("teacher", {}).get("params", {}).get("total", 0)
    # Without a teacher that bounds every row, a share of the student-teacher gap means nothing.
    has_refs = "teacher" in nums.test and "student_probe" in nums.test and not teacher_beaten_on_dev(nums)
    lines = [
        "| row | dev | test | gap recovered (test) | epochs (best) | stopped | params total | trainable "
        "| adapter (% of teacher) | latency ms | cosine |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        name = row["name"]
        gap = None
        if has_refs and name not in ("teacher", "student_probe"):
            gap = gap_recovered(nums.test[name], nums.test["student_probe"], nums.test["teacher"])
        params = row["params"]
        adapter = _count(params["adapter"])
        if params["adapter"] and teacher_total:
            adapter += f" ({_share(params['adapter'], teacher_total)})"
        cells = [
            name, nums.cell(row["dev"]), nums.cell(row["test"]),
            "-" if gap is None else f"{gap:.1f}%",
            f"{row['epochs_run']} ({row['best_epoch']})" if "epochs_run" in row else "-",
            (row.get("stopped") or "-") + (" **still rising**" if still_rising(row, nums) else ""),
            _count(params["total"]), _count(params["trainable"]), adapter,
            f"{row['latency_ms']:.2f}",
            "-" if row["cosine"] is None else f"{row['cosine']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _compare(nums: _Numbers, row: str, reference: str) -> tuple[str, str | None]:
    """A bullet comparing two rows on test, and ``"better"``/``"worse"``/``"same"`` (None if a row is missing)."""
    missing = [n for n in (row, reference) if n not in nums.test]
    if missing:
        return f"- {row} vs {reference}: cannot compare, row {', '.join(missing)} missing", None
    a, b = nums.test[row], nums.test[reference]
    delta = nums.points(a, b)
    outcome = "same" if round(delta, 2) == 0 else ("better" if delta > 0 else "worse")
    line = f"- {row} vs {reference}: {delta:+.2f} points ({nums.value(a)} vs {nums.value(b)}), {outcome}"
    return line, outcome


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
    lines = ["## Is the comparison fair?", "",
             "Every trained row stops by one rule: best dev score, stop after `patience` epochs without "
             "improvement or at its epoch cap.", ""]
    lines += [f"- No: {r}." for r in reasons] or ["- Yes: every row reached its plateau (or gained < "
                                                   f"{STILL_RISING_POINTS} points in its last epoch) and the "
                                                   "teacher is the ceiling on dev."]
    return lines + [""], reasons


def _did_alignment_help(nums: _Numbers, windows: list[int], unfair: list[str] = ()) -> list[str]:
    unit = "0.01" if nums.scale == 1.0 else "1"
    lines = ["## Did alignment help?", "",
             f"Test {nums.metric}; differences in points (1 point = {unit} {nums.metric}).", ""]
    for k in windows:
        frozen = f"alad_w{k}_frozen"
        lines += [f"### Window K={k}", ""]
        probe_line, vs_probe = _compare(nums, frozen, "student_probe")
        noalign_line, vs_noalign = _compare(nums, frozen, f"alad_w{k}_noalign_frozen")
        joint_line, _ = _compare(nums, f"alad_w{k}_joint", "student_ft")
        lines += [probe_line, noalign_line, joint_line]
        if vs_probe is None or vs_noalign is None:
            verdict = "cannot tell, rows are missing"
        elif vs_probe == vs_noalign == "better":
            verdict = (f"yes: {frozen} beats both the linear probe and the same adapter trained "
                       "without alignment")
        else:
            short = [ref for ref, out in (("student_probe", vs_probe), (f"alad_w{k}_noalign_frozen", vs_noalign))
                     if out != "better"]
            verdict = f"no: {frozen} does not beat {' and '.join(short)}"
        if unfair and vs_probe is not None:
            verdict = f"unsettled ({'; '.join(unfair)}); as measured, {verdict}"
        lines += [f"- Verdict: {verdict}", ""]
    return lines


def _what_did_it_cost(nums: _Numbers, windows: list[int]) -> list[str]:
    lines = ["## What did it cost?", ""]
    student_total = nums.rows.get("student_probe", {}).get("params", {}).get("total", 0)
    teacher_total = nums.rows.get("teacher", {}).get("params", {}).get("total", 0)
    for k in windows:
        frozen = nums.rows.get(f"alad_w{k}_frozen")
        lines += [f"### Window K={k}", ""]
        if frozen is None:
            lines += [f"- alad_w{k}_frozen row missing", ""]
            continue
        adapter = frozen["params"]["adapter"]
        lines.append(f"- adapter: {_count(adapter)} parameters = {_share(adapter, student_total)} of the student "
                     f"(student_probe total {_count(student_total)}) and {_share(adapter, teacher_total)} "
                     f"of the teacher ({_count(teacher_total)})")
        latency = frozen["latency_ms"]
        parts = []
        for ref in ("student_probe", "teacher"):
            if ref in nums.rows and nums.rows[ref]["latency_ms"]:
                ref_ms = nums.rows[ref]["latency_ms"]
                parts.append(f"{latency / ref_ms:.2f}x {ref} ({ref_ms:.2f} ms)")
        lines += [f"- latency: alad_w{k}_frozen {latency:.2f} ms = {', '.join(parts) or 'no reference latency'}", ""]
    return lines


def render_markdown(results: dict) -> str:
    """``results.md`` for validated ``results`` (see :func:`write_results`)."""
    nums = _Numbers(results)
    windows = windows_in(list(nums.rows))
    lines = [f"# {results['task']}: {results['metric']}, teacher {results['teacher']}, "
             f"student {results['student']}", ""]
    notes = results.get("notes") or []
    if notes:
        lines += [f"- {' '.join(str(n).split())}" for n in notes] + [""]
    lines += _table(results, nums) + [""]
    lines += ["Gap recovered = (row - student_probe) / (teacher - student_probe) on test. "
              "Epochs (best): epochs run and the epoch whose state was restored for test.", ""]
    fair_lines, unfair = _is_it_fair(nums)
    lines += fair_lines
    lines += _did_alignment_help(nums, windows, unfair)
    lines += _what_did_it_cost(nums, windows)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


def _epochs(records: list[dict]) -> list[float]:
    return [float(r.get("epoch", i + 1)) for i, r in enumerate(records)]


def alignment_series(histories: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Per alignment stage: ``{"epoch": x, "mse": .., "cosine": ..}`` lists, x on one shared axis.

    A ``continual_<suffix>`` stage's epochs are shifted to start after its
    ``align_<suffix>`` stage's last epoch, so the two read as one curve.
    Only keys that every record of the stage has are returned.
    """
    series = {}
    for name, records in histories.items():
        if not name.startswith(ALIGNMENT_PREFIXES) or not records:
            continue
        offset = 0.0
        if name.startswith("continual_"):
            before = histories.get("align_" + name.removeprefix("continual_")) or []
            offset = max(_epochs(before), default=0.0)
        entry = {"epoch": [offset + e for e in _epochs(records)]}
        for key in ("mse", "cosine"):
            if all(key in r for r in records):
                entry[key] = [float(r[key]) for r in records]
        series[name] = entry
    return series


def plot_curves(workdir: Path, histories: dict[str, list[dict]]) -> list[Path]:
    """Draw ``plots/alignment.png`` (validation MSE and cosine per epoch) and ``plots/task_curves.png``.

    ``histories``: stage name -> per-epoch records (``epoch``, ``score`` and
    for ``align_*`` / ``continual_*`` stages ``mse`` and ``cosine``). A panel
    without data is left out, a figure without panels is not written.
    Returns the paths written.
    """
    plots = Path(workdir) / "plots"
    written = []
    series = alignment_series(histories)
    panels = [(key, label) for key, label in (("mse", "validation MSE (per token)"), ("cosine", "validation cosine"))
              if any(key in s for s in series.values())]
    if panels:
        fig = Figure(figsize=(5.5 * len(panels), 4.0))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        windows = sorted({n.split("_", 1)[1] for n in series})
        colours = {w: f"C{i}" for i, w in enumerate(windows)}
        for ax, (key, label) in zip(axes, panels):
            for name, s in series.items():
                if key in s:
                    style = "--" if name.startswith("continual_") else "-"
                    ax.plot(s["epoch"], s[key], style, marker="o", color=colours[name.split("_", 1)[1]], label=name)
            for name, s in series.items():  # where stage 2 takes over from stage 1
                if name.startswith("continual_") and ("align_" + name.removeprefix("continual_")) in series:
                    ax.axvline(s["epoch"][0] - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("epoch (stage 1, then stage 2)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save(fig, plots / "alignment.png"))

    task = {n: r for n, r in histories.items()
            if not n.startswith(ALIGNMENT_PREFIXES) and r and all("dev" in x for x in r)}
    if task:
        fig = Figure(figsize=(7.0, 4.5))
        ax = fig.subplots()
        for name, records in task.items():
            ax.plot(_epochs(records), [float(r["dev"]) for r in records], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("dev score")
        ax.set_title("dev score per epoch (task stages)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, plots / "task_curves.png"))
    return written


def plot_results(workdir: Path, results: dict) -> Path:
    """Draw ``plots/metric_by_row.png``: test headline metric per row, teacher and probe as reference lines."""
    data = _validated(results)
    nums = _Numbers(data)
    names = [r["name"] for r in data["rows"]]
    values = [nums.test[n] for n in names]
    colours = ["0.45" if n in ("teacher", "student_probe", "student_ft")
               else ("C3" if n.endswith("noalign_frozen") else "C0") for n in names]
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2.0), 4.5))
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), values, color=colours)
    for label in ax.bar_label(bars, labels=[nums.value(v) for v in values], fontsize=8, padding=2):
        label.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.5})  # readable over the lines
    for ref, style in (("teacher", "--"), ("student_probe", ":")):
        if ref in nums.test:
            ax.axhline(nums.test[ref], color="black", linestyle=style, linewidth=1, label=f"{ref} {nums.value(nums.test[ref])}")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(min(0.0, min(values)), max(values) * 1.12 if max(values) > 0 else 1.0)
    ax.set_ylabel(f"test {nums.metric}")
    ax.set_title(f"{data['task']}: test {nums.metric} per row")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, Path(workdir) / "plots" / "metric_by_row.png")


# ---------------------------------------------------------------- scalars and summaries


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
    if timing:
        parts.append(" ".join(timing))
    if record.get("tokens_per_s") is not None:
        parts.append(f"{_short_number(float(record['tokens_per_s']))} tok/s")
    if record.get("cosine") is not None:
        parts.append(f"cosine {float(record['cosine']):.3f}")
    return " | ".join([f"[{stage}]" + (f" {parts[0]}" if parts else ""), *parts[1:]])
