"""What a finished run leaves for people to read: results, plots, scalars.

- :mod:`.contract`: ``write_results`` checks the results.json contract and writes results.json
  and results.md atomically;
- :mod:`.markdown`: ``results.md`` (table, gap recovered, the fairness / alignment / cost sections);
- :mod:`.statistics`: paired bootstrap intervals of the comparisons and the gap recovered;
- :mod:`.plots`: dev curves and the metric-by-row bar chart;
- :mod:`.console`: ``ScalarLogger`` (TensorBoard event files) and ``format_summary`` (one line per stage).
"""

from alad_train.report.console import ScalarLogger, format_summary
from alad_train.report.writing import write_results
from alad_train.report.markdown import gap_recovered, render_markdown, still_rising
from alad_train.report.plots import alignment_series, plot_curves, plot_results
from alad_train.report.statistics import intervals, run_intervals

__all__ = ["ScalarLogger", "alignment_series", "format_summary", "gap_recovered", "plot_curves", "plot_results",
           "intervals", "render_markdown", "run_intervals", "still_rising", "write_results"]
