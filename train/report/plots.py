"""PNG plots of a finished run, drawn with matplotlib's Agg canvas (no pyplot, so no global
backend state is touched)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alad_train import cases
from alad_train.report.contract import validated
from alad_train.report.markdown import PROBE, TEACHER, _Numbers

ALIGNMENT_PREFIXES = ("align_", "continual_")


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


def _colour(row: cases.RowId) -> str:
    """Grey for rows without AlAd, red for the no-alignment ablation, blue for the AlAd cases."""
    if not row.case.windowed:
        return "0.45"
    return "C3" if row.case.adapter == cases.FRESH else "C0"


def plot_results(workdir: Path, results: dict) -> Path:
    """Draw ``plots/metric_by_row.png``: test headline metric per row, teacher and probe as reference lines."""
    data = validated(results)
    nums = _Numbers(data)
    names = [r["name"] for r in data["rows"]]
    values = [nums.test[n] for n in names]
    colours = [_colour(cases.RowId.of_record(r)) for r in data["rows"]]
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2.0), 4.5))
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), values, color=colours)
    for label in ax.bar_label(bars, labels=[nums.value(v) for v in values], fontsize=8, padding=2):
        label.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.5})  # readable over the lines
    for ref, style in ((TEACHER, "--"), (PROBE, ":")):
        if ref in nums.test:
            ax.axhline(nums.test[ref], color="black", linestyle=style, linewidth=1, label=f"{ref} {nums.value(nums.test[ref])}")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(min(0.0, min(values)), max(values) * 1.12 if max(values) > 0 else 1.0)
    ax.set_ylabel(f"test {nums.metric}")
    ax.set_title(f"{data['task']}: test {nums.metric} per row")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, Path(workdir) / "plots" / "metric_by_row.png")

