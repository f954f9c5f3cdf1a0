"""``report.html``: the comparison as one self-contained, interactive page (plotly).

The page embeds plotly.js and the figures' data, so it opens offline from disk (no network, no
server). It holds the per-layer panels (:func:`layers_figure`), the freeze timeline
(:func:`timeline_figure`), the summary table and the scheduler's decisions. Hovering a line or
marker shows the trial's config and values; clicking a line, a marker or a trial id in the
table highlights that trial in every figure (click again to clear); a legend entry or the
"shown" box of a table row hides a trial. ``report.html#highlight=<trial>&hide=<trial>,<trial>``
opens the page that way.

The figures come from :mod:`~ikkuna_tune.compare.plotly_figures`; this module assembles the
page around them: the tables, the style and the script that links figures and tables.

plotly is imported only when a figure is made, so importing :mod:`ikkuna_tune.compare` does not.
Rendering is checked in a real browser by ``tests/test_report_html.py``: the page counts the
figures it drew in ``#ikkuna-status[data-rendered]`` and writes any JavaScript error into
``#ikkuna-errors``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune.compare.frame import FROZEN
from ikkuna_tune.compare.plotly_figures import layers_figure, timeline_figure
from ikkuna_tune.compare.styles import AUTO, resolve_color_by

__all__ = ["HTML_REPORT", "layers_figure", "timeline_figure", "write_html_report"]

#: The report's file name in the output directory.
HTML_REPORT = "report.html"
#: Opacity of the trials not highlighted.
_DIMMED = 0.15


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(str(v) for v in value))  # (as the CLI's table does)
    if isinstance(value, Mapping):
        return html.escape("; ".join(f"{k}: {v}" for k, v in value.items()))
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else html.escape(f"{value:.4g}")
    return html.escape(str(value))


_COLUMN_HELP = {
    "compute_saved": "fraction of the full-budget training work skipped: iterations not run "
    "after an early stop, plus the frozen parameter fraction times the iterations it was "
    "frozen for (see compare.compute_saved)",
    "frozen_fraction": "fraction of parameters frozen in the last report",
    "stopped_early": "Tune stopped the trial before the budget (default: the longest trial)",
}


def _summary_table(table: pd.DataFrame) -> str:
    head = "".join(
        f'<th title="{html.escape(_COLUMN_HELP.get(str(c), ""))}">{html.escape(str(c))}</th>'
        for c in table.columns
    )
    body = []
    for _, row in table.iterrows():
        trial = html.escape(str(row["trial_id"]), quote=True)
        cells = []
        for column in table.columns:
            if column == "trial_id":
                cells.append(f'<td><a href="#" class="trial-link">{_cell(row[column])}</a></td>')
            else:
                cells.append(f"<td>{_cell(row[column])}</td>")
        shown = '<td><input type="checkbox" class="trial-shown" checked></td>'
        body.append(f'<tr data-trial="{trial}">{shown}{"".join(cells)}</tr>')
    return (
        f'<table id="summary"><thead><tr><th>shown</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _decisions_table(made: pd.DataFrame) -> str:
    if not len(made):
        return "<p>No scheduler decisions.</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in made.columns)
    body = "".join(
        f'<tr data-trial="{html.escape(str(row["trial_id"]), quote=True)}">'
        + "".join(f"<td>{_cell(row[c])}</td>" for c in made.columns)
        + "</tr>"
        for _, row in made.iterrows()
    )
    return f'<table id="decisions"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_HEAD_SCRIPT = """
window.ikkunaErrors = [];
function ikkunaRecordError(text) {
  window.ikkunaErrors.push(String(text));
  var box = document.getElementById('ikkuna-errors');
  if (box) { box.textContent = window.ikkunaErrors.join('\\n'); box.hidden = false; }
}
window.addEventListener('error', function (event) {
  ikkunaRecordError((event.message || 'error') +
    (event.filename ? ' (' + event.filename + ':' + event.lineno + ')' : ''));
});
window.addEventListener('unhandledrejection', function (event) {
  var reason = event.reason;
  ikkunaRecordError('unhandled rejection: ' + (reason && reason.message ? reason.message : reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    ikkunaRecordError('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
})();
"""


_BODY_SCRIPT = """
(function () {
  var hidden = new Set();
  var highlighted = null;
  var status = document.getElementById('ikkuna-status');
  var plots = Array.prototype.slice.call(document.querySelectorAll('.ikkuna-plot'));
  function update() {
    plots.forEach(function (div) {
      if (!div.data) { return; }
      var opacity = div.data.map(function (t) {
        return highlighted === null || !t.meta || t.meta === highlighted ? 1 : DIMMED;
      });
      var visible = div.data.map(function (t) {
        if (t.meta && hidden.has(t.meta)) { return false; }
        return t.visible === false || t.visible === undefined ? true : t.visible;
      });
      Plotly.restyle(div, {opacity: opacity, visible: visible});
    });
    document.querySelectorAll('tr[data-trial]').forEach(function (row) {
      var trial = row.getAttribute('data-trial');
      row.classList.toggle('highlighted', trial === highlighted);
      row.classList.toggle('hidden-trial', hidden.has(trial));
      var box = row.querySelector('.trial-shown');
      if (box) { box.checked = !hidden.has(trial); }
    });
  }
  window.ikkunaHighlight = function (trial) {
    highlighted = highlighted === trial ? null : trial;
    update();
  };
  window.ikkunaShow = function (trial, shown) {
    if (shown) { hidden.delete(trial); } else { hidden.add(trial); }
    update();
  };
  window.ikkunaReset = function () { hidden.clear(); highlighted = null; update(); };
  document.querySelectorAll('tr[data-trial]').forEach(function (row) {
    var trial = row.getAttribute('data-trial');
    var link = row.querySelector('.trial-link');
    if (link) {
      link.addEventListener('click', function (event) {
        event.preventDefault();
        window.ikkunaHighlight(trial);
      });
    }
    var box = row.querySelector('.trial-shown');
    if (box) {
      box.addEventListener('change', function () { window.ikkunaShow(trial, box.checked); });
    }
  });
  document.getElementById('ikkuna-reset').addEventListener('click', window.ikkunaReset);
  var rendered = 0;
  plots.forEach(function (div) {
    var figure = JSON.parse(document.getElementById(div.id + '-data').textContent);
    var config = {responsive: true, displaylogo: false};
    Plotly.newPlot(div, figure.data, figure.layout, config).then(function () {
      div.on('plotly_click', function (event) {
        var trial = event.points.length ? event.points[0].data.meta : null;
        if (trial) { window.ikkunaHighlight(trial); }
      });
      rendered += 1;
      status.setAttribute('data-rendered', String(rendered));
      if (rendered === plots.length) { fromAddress(); }
    }).catch(function (error) { ikkunaRecordError('plot ' + div.id + ': ' + error); });
  });
  // report.html#highlight=<trial>&hide=<trial>,<trial> opens with that trial highlighted and
  // those hidden
  // (an id may hold a comma, as a copied trial's '<id>@<directory>' does, and URL encoders
  // write the list's commas as %2C: the decoded list is read as the longest runs of its
  // comma-separated parts that are trial ids)
  function fromAddress() {
    var wanted = new URLSearchParams(window.location.hash.slice(1));
    var known = new Set();
    var widest = 1;  // the most comma-separated parts in one trial id
    document.querySelectorAll('tr[data-trial]').forEach(function (row) {
      var id = row.getAttribute('data-trial');
      known.add(id);
      widest = Math.max(widest, id.split(',').length);
    });
    wanted.getAll('hide').forEach(function (list) {
      var parts = list.split(',');
      for (var i = 0; i < parts.length; i += 1) {
        var end = i;
        for (var j = Math.min(parts.length, i + widest) - 1; j > i; j -= 1) {
          if (known.has(parts.slice(i, j + 1).join(','))) { end = j; break; }
        }
        var id = parts.slice(i, end + 1).join(',');
        if (id) { hidden.add(id); }
        i = end;
      }
    });
    highlighted = wanted.get('highlight') || null;
    update();
    status.setAttribute('data-ready', '1');
  }
})();
"""


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
p.help { color: #555; margin-top: 0.2em; }
#ikkuna-errors { background: #fee; color: #900; border: 1px solid #c66; padding: 0.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th[title]:not([title=""]) { text-decoration: underline dotted; cursor: help; }
tr.highlighted td { background: #fff3bf; }
tr.hidden-trial td { color: #aaa; }
button { margin: 0.4em 0; }
"""


def write_html_report(
    df: pd.DataFrame,
    path: str | PathLike[str],
    table: pd.DataFrame,
    made: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = AUTO,
    *,
    style_by: str | None = AUTO,
    sharey: bool = True,
    budget: int | None = None,
    title: str = "ikkuna_tune comparison",
) -> Path:
    """Write the comparison as one self-contained HTML page; returns its path.

    ``table`` is the :func:`summary` and ``made`` the :func:`decisions` of ``df``. The page
    holds plotly.js itself, the figures of :func:`layers_figure` (of ``metric``) and, when
    the trials report ``frozen/<layer>``, :func:`timeline_figure`, then the two tables.

    Raises:
        ValueError: as :func:`layers_figure` does.

    Examples:
        >>> import tempfile
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> from ikkuna_tune.compare.tables import decisions, summary
        >>> rows = [("a", i, "frozen", "fc", i - 1.0) for i in (1, 2)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     path = Path(out, "report.html")
        ...     _ = write_html_report(df, path, summary(df), decisions(df), "frozen", None)
        ...     page = path.read_text(encoding="utf-8")
        >>> path.name, 'id="plot-layers"' in page, 'id="plot-timeline"' in page
        ('report.html', True, True)
    """
    from plotly.offline import get_plotlyjs

    color_by = resolve_color_by(df, color_by)
    figures = {
        "layers": layers_figure(
            df, metric, color_by, style_by=style_by, sharey=sharey, budget=budget
        )
    }
    if FROZEN in set(df["metric"].unique()):
        figures["timeline"] = timeline_figure(df, color_by, budget=budget)
    sections = []
    for name, figure in figures.items():
        data = figure.to_json().replace("</", "<\\/")
        sections.append(
            f'<div id="plot-{name}" class="ikkuna-plot"></div>\n'
            f'<script type="application/json" id="plot-{name}-data">{data}</script>'
        )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script>{_HEAD_SCRIPT}</script>
<script>{get_plotlyjs()}</script>
</head>
<body>
<pre id="ikkuna-errors" hidden></pre>
<div id="ikkuna-status" data-plots="{len(figures)}" data-rendered="0" hidden></div>
<h1>{html.escape(title)}</h1>
<p class="help">Hover a line or marker for the trial's config and values. Click a line, a
marker or a trial id to highlight that trial everywhere (click again to clear). Click a legend
entry or untick "shown" to hide a trial; double-click a legend entry to show only it.
<button id="ikkuna-reset" type="button">show all</button></p>
{sections[0]}
{"".join(sections[1:])}
<h2>Summary</h2>
{_summary_table(table)}
<h2>Scheduler decisions</h2>
{_decisions_table(made)}
<script>{_BODY_SCRIPT.replace("DIMMED", repr(_DIMMED))}</script>
</body>
</html>
"""
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out
