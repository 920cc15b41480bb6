"""What a finished run leaves for people to read: results, plots, scalars.

- :mod:`.contract`: ``write_results`` checks the results.json contract and writes results.json
  and results.md atomically;
- :mod:`.markdown`: ``results.md`` (table, gap recovered, the fairness / alignment / cost sections);
- :mod:`.plots`: dev curves and the metric-by-row bar chart;
- :mod:`.console`: ``ScalarLogger`` (TensorBoard event files) and ``format_summary`` (one line per stage).
"""

from alad_train.report.console import ScalarLogger, format_summary
from alad_train.report.contract import write_results
from alad_train.report.markdown import gap_recovered, render_markdown, still_rising
from alad_train.report.plots import alignment_series, plot_curves, plot_results

__all__ = ["ScalarLogger", "alignment_series", "format_summary", "gap_recovered", "plot_curves", "plot_results",
           "render_markdown", "still_rising", "write_results"]
