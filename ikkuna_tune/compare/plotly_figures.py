"""The interactive (plotly) twins of the matplotlib figures, for ``report.html``: the per-layer
panels (:func:`layers_figure`) and the freeze timeline (:func:`timeline_figure`), with the same
colours, line styles and marks, a hover label with each trial's config and values, and each
trace's trial id in its ``meta`` (what the page's highlighting reads).

plotly is imported only when a figure is made, so importing :mod:`ikkuna_tune.compare` does not.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex

from ikkuna_tune.compare.frame import (
    shown_value,
    sort_key,
    trial_label,
)
from ikkuna_tune.compare.panels import last_finite, layer_panels, nonfinite_runs
from ikkuna_tune.compare.styles import (
    AUTO,
    LINESTYLES,
    resolve_color_by,
)
from ikkuna_tune.compare.timeline import timeline_data

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

__all__ = ["layers_figure", "timeline_figure"]

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon")


def _config_lines(config: Mapping[str, Any]) -> str:
    """A trial's config for a hover label: ``name=value`` lines, shown literally (a parameter
    set to None reads ``None``: it is in the config)."""
    return "<br>".join(
        _escape_template(f"{name}={'None' if value is None else shown_value(value)}")
        for name, value in sorted(config.items())
    )


def _hover(trial_id: str, config: Mapping[str, Any], *lines: str) -> str:
    """A hovertemplate: the trial in bold, its config, then ``lines`` (templates, as given)."""
    parts = [f"<b>{_escape_template(trial_id)}</b>", _config_lines(config), *lines]
    return "<br>".join(part for part in parts if part) + "<extra></extra>"


def _text(text: str) -> str:
    """Text plotly shows literally (a title, a legend entry, a tick label): its markup's
    ``<``, ``>`` and ``&`` escaped. Quotes stay as they are: plotly decodes no ``&quot;``,
    and they are no markup in its text."""
    return html.escape(text, quote=False)


def _escape_template(text: str) -> str:
    """Text shown literally in a hovertemplate (plotly reads ``%{`` as a placeholder)."""
    return _text(text).replace("%{", "%&#123;")


def _mark_trace(
    trial_id: str, style: tuple[str, int, str, str], x: float, y: float, hover: str
) -> Any:
    """One mark of ``trial_id`` at ``(x, y)``: a trace in the trial's legend group, without a
    legend entry of its own; ``style`` is its symbol, size, face and edge colour."""
    import plotly.graph_objects as go

    symbol, size, face, edge = style
    return go.Scatter(
        x=[x],
        y=[y],
        mode="markers",
        legendgroup=trial_id,
        showlegend=False,
        meta=trial_id,
        marker={"symbol": symbol, "size": size, "color": face, "line": {"color": edge, "width": 1}},
        hovertemplate=hover,
    )


def _end_mark(
    trial_id: str, infos: dict[str, Any], early: dict[str, bool], colour: str
) -> tuple[str, int, str, str, str] | None:
    """The mark at a trial's end, if it failed or was stopped early: symbol, size, face and
    edge colour, and what it says."""
    if infos.get(trial_id, {}).get("failed"):
        return "x", 11, "#d62728", "white", "failed here"
    if early.get(trial_id):
        return "square", 9, colour, "black", "stopped early here"
    return None


def layers_figure(
    df: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = AUTO,
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

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, i, "self_similarity", "fc", 0.9 + i / 100)
        ...         for t, lr in [("a", 0.1), ("b", 0.01)] for i in (1, 2)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> figure = layers_figure(df, metric="self_similarity", color_by="lr")
        >>> [(trace.meta, trace.name) for trace in figure.data]
        [('b', 'b (lr=0.01)'), ('a', 'a (lr=0.1)')]
    """
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    color_by = resolve_color_by(df, color_by)
    plan = layer_panels(df, metric, color_by, style_by, budget, columns, cmap)
    rows, panels, trial_ids, style_by = plan.rows, plan.panels, plan.trial_ids, plan.style_by
    nrows, ncols, colours, styles = plan.nrows, plan.ncols, plan.colours, plan.styles
    colour_values, style_values = plan.colour_values, plan.style_values
    infos, early, frozen_at = plan.infos, plan.early, plan.frozen_at
    reasons = _freeze_reasons(df)
    order = sorted(trial_ids, key=lambda t: (sort_key(colour_values.get(t)), t))
    figure = make_subplots(
        rows=nrows,
        cols=ncols,
        shared_xaxes="all",
        shared_yaxes="all" if sharey else False,
        subplot_titles=[_text(p if p is not None else metric) for p in panels],
        horizontal_spacing=0.04 if sharey else 0.07,
        vertical_spacing=min(0.12, 0.5 / nrows),
    )
    measured = set(rows["trial_id"].unique())
    shown: set[str] = set()  # trials with a legend entry
    ends: list[float] = []  # where trials without values of the metric ended (their marks)
    for index, layer in enumerate(panels):
        row, col = index // ncols + 1, index % ncols + 1
        selected = rows[rows["layer"] == layer] if layer is not None else rows
        where = _escape_template(layer) if layer is not None else ""
        panel_values = selected["value"].to_numpy(dtype=float)
        finite = panel_values[np.isfinite(panel_values)]
        # a mark with no finite value of its trial to stand on stands at the panel's top
        top = float(finite.max()) if len(finite) else 0.0
        for trial_id in order:
            trial = selected[selected["trial_id"] == trial_id]
            config = infos.get(trial_id, {}).get("config", {})
            colour = to_hex(colours.colour[trial_id])
            label = _legend_label(trial_id, color_by, style_by, colour_values, style_values)
            if not len(trial):
                if trial_id not in measured and trial_id in plan.last:
                    # ended before its first value of the metric: its end mark, at the top,
                    # which carries its legend entry
                    end = _end_mark(trial_id, infos, early, colour)
                    if end is not None:
                        symbol, size, face, edge, text = end
                        hover = _hover(trial_id, config, f"{text} (no {metric} before)", "")
                        trace = _mark_trace(
                            trial_id, (symbol, size, face, edge), plan.last[trial_id], top, hover
                        )
                        trace.update(name=label, showlegend=trial_id not in shown)
                        figure.add_trace(trace, row=row, col=col)
                        shown.add(trial_id)
                        ends.append(plan.last[trial_id])
                continue
            xs = trial["training_iteration"].to_numpy(dtype=float)
            ys = trial["value"].to_numpy(dtype=float)
            figure.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=label,
                    legendgroup=trial_id,
                    showlegend=trial_id not in shown,  # once, in its first panel
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
            shown.add(trial_id)
            marks = []
            if layer is not None and layer in frozen_at.get(trial_id, {}):
                at = frozen_at[trial_id][layer]
                why = reasons.get(trial_id, {}).get(layer, "")
                text = f"{where} frozen from iteration {at}"
                marks.append(("star", 13, colour, "black", at, np.interp(at, xs, ys), text, why))
            for first, last in nonfinite_runs(ys):  # values the line cannot show (NaN, inf)
                text = f"not finite ({ys[first]}) at iteration {xs[first]:g}"
                if last > first:
                    text = f"{text} to {xs[last]:g}"
                y = last_finite(ys, first)
                y = top if math.isnan(y) else y
                marks.append(("triangle-up", 11, colour, "#d62728", xs[first], y, text, ""))
            # marks of the trial's end stand at its last iteration (a layer's line can end
            # before, at its freeze), on the last value the line shows
            end, stop_x = last_finite(ys), plan.last.get(trial_id, xs[-1])
            end = top if math.isnan(end) else end  # (no finite value: at the panel's top)
            ended = _end_mark(trial_id, infos, early, colour)
            if ended is not None:
                symbol, size, face, edge, text = ended
                marks.append((symbol, size, face, edge, stop_x, end, text, ""))
            for symbol, size, face, edge, x, y, text, why in marks:
                if not np.isfinite(y):
                    continue  # no finite value to stand on
                hover = _hover(trial_id, config, text, _escape_template(why))
                trace = _mark_trace(trial_id, (symbol, size, face, edge), x, float(y), hover)
                figure.add_trace(trace, row=row, col=col)
    # (a trial stopped at report 1, before its first self-similarity, is marked there)
    first = min([rows["training_iteration"].min(), *ends])
    last = max([rows["training_iteration"].max(), *ends])
    figure.update_xaxes(range=[first - 0.5, last + 0.5], dtick=1 if _few(rows) else None)
    figure.update_xaxes(title_text="training_iteration", row=nrows)
    figure.update_yaxes(autorange=True)  # plotly.js misses the data when x has a range
    figure.update_yaxes(title_text=metric, col=1)
    title = f"{metric} per layer" if panels[0] is not None else metric
    legend_title = ", ".join(n for n in (color_by, style_by) if n) or "trial"
    figure.update_layout(
        title={"text": _text(title)},
        height=max(440, 260 * nrows + 140),
        legend={
            "title": {"text": _text(legend_title)},
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
    return _text(f"{trial_id} ({', '.join(shown)})" if shown else trial_id)


def _freeze_reasons(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per trial, per layer: the scheduler's freeze decision in force at the trial's end (else
    its last freeze decision), in words."""
    from ikkuna_tune.compare.tables import _reason

    reasons: dict[str, dict[str, str]] = {}
    in_force: set[tuple[str, str]] = set()
    for row in df.attrs.get("decisions", []):
        if row["action"] == "freeze" and row.get("layer"):
            key = (str(row["trial_id"]), row["layer"])
            if key in in_force and not row.get("in_force"):
                continue  # a later freeze that is not in force does not replace one that is
            if row.get("in_force"):
                in_force.add(key)
            reasons.setdefault(key[0], {})[key[1]] = _reason(row, False)
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

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, i, "frozen", "fc", float(t == "a" and i == 2))
        ...         for t, lr in [("a", 0.1), ("b", 0.01)] for i in (1, 2)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> figure = timeline_figure(df, color_by="lr")
        >>> figure.layout.yaxis.ticktext, [(t.meta, t.name, t.x) for t in figure.data[-1:]]
        (('b (lr=0.01)', 'a (lr=0.1)'), [('a', 'fc', (2,))])
    """
    from plotly import graph_objects as go

    color_by = resolve_color_by(df, color_by)
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
                    name=_text(layer),
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
    labels = [_text(trial_label(t, color_by, values.get(t))) for t in trial_ids]
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
