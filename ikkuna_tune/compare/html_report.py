"""``report.html``: the comparison as one self-contained, interactive page (plotly).

The page embeds plotly.js and the figures' data, so it opens offline from disk (no network, no
server). It holds the per-layer panels (:func:`layers_figure`), the freeze timeline
(:func:`timeline_figure`), the summary table and the scheduler's decisions. Hovering a line or
marker shows the trial's config and values; clicking a line, a marker or a trial id in the
table highlights that trial in every figure (click again to clear); a legend entry or the
"shown" box of a table row hides a trial. ``report.html#highlight=<trial>&hide=<trial>,<trial>``
opens the page that way.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex

from ikkuna_tune.compare.frame import (
    FROZEN,
    check_budget,
    check_color_by,
    check_metric,
    check_tidy,
    freeze_iterations,
    iterations_run,
    layers,
    shown_value,
    sort_key,
    stopped_early,
    trial_infos,
    trial_label,
    trial_values,
)
from ikkuna_tune.compare.styles import (
    AUTO,
    LINESTYLES,
    resolve_style_by,
    trial_colours,
    trial_styles,
)
from ikkuna_tune.compare.timeline import timeline_data

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

__all__ = ["HTML_REPORT", "layers_figure", "timeline_figure", "write_html_report"]

#: The report's file name in the output directory.
HTML_REPORT = "report.html"
#: Opacity of the trials not highlighted.
_DIMMED = 0.15
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon")


def _config_lines(config: Mapping[str, Any]) -> str:
    """A trial's config for a hover label: ``name=value`` lines, HTML-escaped."""
    return "<br>".join(
        html.escape(f"{name}={shown_value(value)}") for name, value in sorted(config.items())
    )


def _hover(trial_id: str, config: Mapping[str, Any], *lines: str) -> str:
    """A hovertemplate: the trial in bold, its config, then ``lines`` (templates, as given)."""
    parts = [f"<b>{html.escape(trial_id)}</b>", _config_lines(config), *lines]
    return "<br>".join(part for part in parts if part) + "<extra></extra>"


def _escape_template(text: str) -> str:
    """Text shown literally in a hovertemplate (plotly reads ``%{`` as a placeholder)."""
    return html.escape(text).replace("%{", "%&#123;")


def layers_figure(
    df: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = "lr",
    *,
    style_by: str | None = AUTO,
    sharey: bool = True,
    columns: int = 4,
    cmap: str = "viridis",
    budget: int | None = None,
) -> Figure:
    """The interactive twin of :func:`plot_layers`: the same panels, colours, line styles and
    marks (star: the layer froze; square: stopped early; x: failed), one legend entry per
    trial (hides the trial in every panel), hover with the trial's config and values. Each
    trace's ``meta`` is its trial id.

    Raises:
        ValueError: as :func:`plot_layers` does.
    """
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    check_tidy(df)
    check_metric(df, metric)
    check_color_by(df, color_by)
    check_budget(budget)
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"Expected `columns` to be a positive integer but got {columns!r}")
    style_by = resolve_style_by(df, color_by, style_by)
    rows = df[df["metric"] == metric]
    names = layers(df, metric)
    panels: list[str | None] = list(names) if names else [None]
    trial_ids = sorted(set(rows["trial_id"]))
    colour_values = trial_values(df, color_by) if color_by else {t: t for t in trial_ids}
    colours = trial_colours({t: colour_values.get(t) for t in trial_ids}, cmap)
    styles = dict.fromkeys(trial_ids, 0)
    style_values = trial_values(df, style_by)
    if style_by is not None:
        styles, _ = trial_styles({t: style_values.get(t) for t in trial_ids})
    infos = trial_infos(df)
    early = stopped_early(infos, iterations_run(df), budget)
    frozen_at = freeze_iterations(df)
    reasons = _freeze_reasons(df)
    order = sorted(trial_ids, key=lambda t: (sort_key(colour_values.get(t)), t))

    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure = make_subplots(
        rows=nrows,
        cols=ncols,
        shared_xaxes="all",
        shared_yaxes="all" if sharey else False,
        subplot_titles=[p if p is not None else metric for p in panels],
        horizontal_spacing=0.04 if sharey else 0.07,
        vertical_spacing=min(0.12, 0.5 / nrows),
    )
    for index, layer in enumerate(panels):
        row, col = index // ncols + 1, index % ncols + 1
        selected = rows[rows["layer"] == layer] if layer is not None else rows
        where = _escape_template(layer) if layer is not None else ""
        for trial_id in order:
            trial = selected[selected["trial_id"] == trial_id]
            if not len(trial):
                continue
            config = infos.get(trial_id, {}).get("config", {})
            colour = to_hex(colours.colour[trial_id])
            xs = trial["training_iteration"].to_numpy(dtype=float)
            ys = trial["value"].to_numpy(dtype=float)
            label = _legend_label(trial_id, color_by, style_by, colour_values, style_values)
            figure.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=label,
                    legendgroup=trial_id,
                    showlegend=index == 0,
                    meta=trial_id,
                    line={"color": colour, "dash": LINESTYLES[styles[trial_id]][1], "width": 2},
                    marker={"size": 4},
                    hovertemplate=_hover(
                        trial_id,
                        config,
                        where,
                        "iteration %{x}",
                        f"{_escape_template(metric)} %{{y:.4g}}",
                    ),
                ),
                row=row,
                col=col,
            )
            marks = []
            if layer is not None and layer in frozen_at.get(trial_id, {}):
                at = frozen_at[trial_id][layer]
                why = reasons.get(trial_id, {}).get(layer, "")
                text = f"{where} frozen from iteration {at}"
                marks.append(("star", 13, colour, "black", at, np.interp(at, xs, ys), text, why))
            if infos.get(trial_id, {}).get("failed"):
                marks.append(("x", 11, "#d62728", "white", xs[-1], ys[-1], "failed here", ""))
            elif early.get(trial_id):
                text = "stopped early here"
                marks.append(("square", 9, colour, "black", xs[-1], ys[-1], text, ""))
            for symbol, size, face, edge, x, y, text, why in marks:
                figure.add_trace(
                    go.Scatter(
                        x=[x],
                        y=[float(y)],
                        mode="markers",
                        legendgroup=trial_id,
                        showlegend=False,
                        meta=trial_id,
                        marker={
                            "symbol": symbol,
                            "size": size,
                            "color": face,
                            "line": {"color": edge, "width": 1},
                        },
                        hovertemplate=_hover(trial_id, config, text, _escape_template(why)),
                    ),
                    row=row,
                    col=col,
                )
    first, last = rows["training_iteration"].min(), rows["training_iteration"].max()
    figure.update_xaxes(range=[first - 0.5, last + 0.5], dtick=1 if _few(rows) else None)
    figure.update_xaxes(title_text="training_iteration", row=nrows)
    figure.update_yaxes(autorange=True)  # plotly.js misses the data when x has a range
    figure.update_yaxes(title_text=metric, col=1)
    title = f"{metric} per layer" if names else metric
    legend_title = ", ".join(n for n in (color_by, style_by) if n) or "trial"
    figure.update_layout(
        title={"text": html.escape(title)},
        height=max(440, 260 * nrows + 140),
        legend={
            "title": {"text": html.escape(legend_title)},
            "groupclick": "togglegroup",
            "font": {"size": 11},
        },
        hovermode="closest",
        template="plotly_white",
        margin={"t": 80},
    )
    return figure


def _few(rows: pd.DataFrame) -> bool:
    return rows["training_iteration"].nunique() <= 20


def _legend_label(
    trial_id: str,
    color_by: str | None,
    style_by: str | None,
    colour_values: Mapping[str, Any],
    style_values: Mapping[str, Any],
) -> str:
    shown = [
        f"{name}={shown_value(values.get(trial_id))}"
        for name, values in ((color_by, colour_values), (style_by, style_values))
        if name
    ]
    return html.escape(f"{trial_id} ({', '.join(shown)})" if shown else trial_id)


def _freeze_reasons(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per trial, per layer: the scheduler's last freeze decision, in words."""
    from ikkuna_tune.compare.tables import _reason

    reasons: dict[str, dict[str, str]] = {}
    for row in df.attrs.get("decisions", []):
        if row["action"] == "freeze" and row.get("layer"):
            reasons.setdefault(str(row["trial_id"]), {})[row["layer"]] = _reason(row, False)
    return reasons


def timeline_figure(
    df: pd.DataFrame,
    color_by: str | None = None,
    *,
    cmap: str = "viridis",
    budget: int | None = None,
) -> Figure:
    """The interactive twin of :func:`plot_freeze_timeline`: a row per trial, a marker per
    frozen layer at its own height within the row, the stop marks beneath them; hover shows
    the trial's config, the layer, the iteration and the scheduler's reason. Each trace's
    ``meta`` is its trial id.

    Raises:
        ValueError: as :func:`plot_freeze_timeline` does.
    """
    from plotly import graph_objects as go

    t = timeline_data(df, color_by, budget)
    infos, iterations, trial_ids, values = t.infos, t.iterations, t.trial_ids, t.values
    early, names, frozen_at, offsets = t.early, t.names, t.frozen_at, t.offsets
    reasons = _freeze_reasons(df)
    row_px = max(36, 14 * len(names))
    layer_colours = [to_hex(c) for c in colormaps[cmap](np.linspace(0.0, 0.9, max(len(names), 1)))]

    figure = go.Figure()
    for position, trial_id in enumerate(trial_ids):
        last = int(iterations.get(trial_id, 0))
        config = infos[trial_id].get("config", {})
        if last:
            figure.add_trace(
                go.Scatter(
                    x=[0.5, last + 0.5],
                    y=[position, position],
                    mode="lines",
                    line={"color": "#e3e3e3", "width": 0.7 * row_px},
                    showlegend=False,
                    meta=trial_id,
                    hovertemplate=_hover(trial_id, config, f"ran {last} iteration(s)"),
                )
            )
        if infos[trial_id].get("failed") or early.get(trial_id):
            failed = bool(infos[trial_id].get("failed"))
            figure.add_trace(
                go.Scatter(
                    x=[last],
                    y=[position],
                    mode="markers",
                    name="failed" if failed else "stopped early",
                    legendgroup="failed" if failed else "stopped early",
                    showlegend=False,
                    meta=trial_id,
                    marker={
                        "symbol": "x-thin-open" if failed else "line-ns-open",
                        "size": 0.5 * row_px if failed else 0.8 * row_px,
                        "color": "#d62728" if failed else "black",
                        "line": {"width": 3, "color": "#d62728" if failed else "black"},
                    },
                    hovertemplate=_hover(
                        trial_id, config, ("failed" if failed else "stopped early") + f" at {last}"
                    ),
                )
            )
    shown_legend: set[str] = set()
    for index, layer in enumerate(names):
        for position, trial_id in enumerate(trial_ids):
            if layer not in frozen_at.get(trial_id, {}):
                continue
            at = frozen_at[trial_id][layer]
            why = reasons.get(trial_id, {}).get(layer, "")
            figure.add_trace(
                go.Scatter(
                    x=[at],
                    y=[position + offsets[index]],
                    mode="markers",
                    name=html.escape(layer),
                    legendgroup=f"layer:{layer}",
                    showlegend=layer not in shown_legend,
                    meta=trial_id,
                    marker={
                        "symbol": _SYMBOLS[index % len(_SYMBOLS)],
                        "size": min(11, max(6, 0.8 * row_px * 0.56 / max(len(names) - 1, 1))),
                        "color": layer_colours[index],
                        "line": {"color": "white", "width": 1},
                    },
                    hovertemplate=_hover(
                        trial_id,
                        infos[trial_id].get("config", {}),
                        f"{_escape_template(layer)} frozen from iteration {at}",
                        _escape_template(why),
                    ),
                )
            )
            shown_legend.add(layer)
    for label, symbol, colour in (
        ("stopped early", "line-ns-open", "black"),
        ("failed", "x-thin-open", "#d62728"),
    ):
        if any(getattr(t, "legendgroup", None) == label for t in figure.data):
            figure.add_trace(  # the legend entry of the marks (they have one per trial)
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    marker={
                        "symbol": symbol,
                        "size": 14,
                        "color": colour,
                        "line": {"width": 3, "color": colour},
                    },
                )
            )
    labels = [html.escape(trial_label(t, color_by, values.get(t))) for t in trial_ids]
    figure.update_yaxes(
        tickvals=list(range(len(trial_ids))),
        ticktext=labels,
        range=[len(trial_ids) - 0.5, -0.5],
        title_text="trial",
        zeroline=False,
    )
    longest = max(iterations.values(), default=0)
    figure.update_xaxes(
        title_text="training_iteration",
        dtick=1 if longest <= 20 else None,
        range=[0.3, longest + 0.7],
    )
    figure.update_layout(
        title={"text": "Layer freeze timeline" + ("" if names else ": no layer was frozen")},
        height=140 + row_px * max(len(trial_ids), 1),
        legend={"title": {"text": "layer frozen"}},
        hovermode="closest",
        template="plotly_white",
    )
    return figure


# ------------------------------------------------------------------------------------ page
def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return html.escape(" ".join(str(v) for v in value))
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
  function fromAddress() {
    var wanted = new URLSearchParams(window.location.hash.slice(1));
    (wanted.get('hide') || '').split(',').filter(Boolean).forEach(function (trial) {
      hidden.add(trial);
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
    color_by: str | None = "lr",
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
    """
    from plotly.offline import get_plotlyjs

    figures = {
        "layers": layers_figure(
            df, metric, color_by, style_by=style_by, sharey=sharey, budget=budget
        )
    }
    if FROZEN in set(df["metric"]):
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
