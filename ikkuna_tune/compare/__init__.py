"""Compare the trials of a Tune experiment: one tidy DataFrame, plots and a summary table.

Everything here works on finished experiments read from disk, without Ray running::

    from ikkuna_tune import compare

    df = compare.load("~/ray_results/my_sweep")  # or an ExperimentAnalysis / ResultGrid
    compare.plot_layers(df, metric="self_similarity", color_by="lr").savefig("layers.png")
    compare.plot_freeze_timeline(df).savefig("freeze.png")
    table = compare.summary(df, metric="test_accuracy", mode="max")  # one row per trial
    why = compare.decisions(df)  # what SVCCAScheduler froze and stopped, and why
    compare.write_report(df, "plots/")  # the PNGs, summary.csv, decisions.csv, report.html

The tidy DataFrame has one row per reported number: ``trial_id``, one column per config
parameter (nested configs flattened as ``a/b``), ``training_iteration``, ``metric``, ``layer``
and ``value``. Tune flattens the nested per-layer reports of :func:`ikkuna_tune.report`
(``{"self_similarity": {"conv1": 0.99}}``) to ``self_similarity/conv1``; such a name becomes
metric ``self_similarity``, layer ``conv1``. Network-wide metrics have no layer (None;
``df['layer'].isna()`` selects them).
Non-numeric values, values not reported (``null``, a key missing from a result) and Tune's
bookkeeping fields (``done``, ``timestamp``, ``pid``...) are left out. A value reported as NaN
(a diverged loss) stays, read from a trial's ``result.json``, and the plots mark it as not
finite, as they mark an infinity; the step times, NaN when no step was timed, and the frames of
a Ray object or of ``progress.csv``, where a NaN cannot be told from a value not reported, are
left out. Booleans become 0/1.

What is known about each trial beyond its numbers (status, whether it failed, whether Tune
stopped it, its directory, its config, also for trials that never reported) is kept in
``df.attrs["trials"]``, which :func:`summary` and :func:`plot_freeze_timeline` read. The
scheduler's decisions are in ``df.attrs["decisions"]`` (see :func:`decisions`), and metrics that
were reported but never with a value (every value NaN or ``null``) in
``df.attrs["empty_metrics"]`` (name -> reported per layer), so that asking for one says so.
These entries are shared by the frames derived from ``df``, not copied into each
(:class:`~ikkuna_tune.compare.frame.SharedDict`): assign a new object to change one frame's.

The work is split by job: :mod:`~ikkuna_tune.compare.trials` reads each trial's files (or a
Ray object), :mod:`~ikkuna_tune.compare.decision_log` the scheduler's decisions,
:mod:`~ikkuna_tune.compare.loading` turns them into the tidy frame,
:mod:`~ikkuna_tune.compare.frame` answers questions about the frame,
:mod:`~ikkuna_tune.compare.tables` makes the summary and decisions,
:mod:`~ikkuna_tune.compare.styles` colours and styles the trials,
:mod:`~ikkuna_tune.compare.timeline` gathers the freeze timeline's rows (for both renderings),
:mod:`~ikkuna_tune.compare.plots` draws with matplotlib,
:mod:`~ikkuna_tune.compare.plotly_figures` draws the same figures with plotly (imported only
then), :mod:`~ikkuna_tune.compare.html_report` writes them into the interactive page and
:mod:`~ikkuna_tune.compare.report` writes everything.

Damaged files do not stop a load: lines of ``result.json`` (or of the scheduler's
``ikkuna_decisions.jsonl``) that are not UTF-8 JSON objects are skipped with one warning per
file naming its path and the lines, and a file that cannot be read is skipped with a warning
naming it.
"""

from ikkuna_tune.compare.decision_log import DECISIONS_FILE, FREEZE_REASON
from ikkuna_tune.compare.frame import (
    FROZEN,
    TIDY_COLUMNS,
    config_columns,
    freeze_iterations,
    layers,
    metrics,
)
from ikkuna_tune.compare.html_report import HTML_REPORT, write_html_report
from ikkuna_tune.compare.loading import BOOKKEEPING, load
from ikkuna_tune.compare.plotly_figures import layers_figure, timeline_figure
from ikkuna_tune.compare.plots import plot_freeze_timeline, plot_layers
from ikkuna_tune.compare.report import Comparison, compare_experiment, write_report
from ikkuna_tune.compare.styles import LINESTYLES, MAX_LEGEND_COLOURS, auto_style_by
from ikkuna_tune.compare.tables import DECISION_COLUMNS, compute_saved, decisions, summary
from ikkuna_tune.compare.timeline import freezable_layers

__all__ = [
    "BOOKKEEPING",
    "DECISIONS_FILE",
    "DECISION_COLUMNS",
    "FREEZE_REASON",
    "FROZEN",
    "HTML_REPORT",
    "LINESTYLES",
    "MAX_LEGEND_COLOURS",
    "TIDY_COLUMNS",
    "Comparison",
    "auto_style_by",
    "compare_experiment",
    "compute_saved",
    "config_columns",
    "decisions",
    "freezable_layers",
    "freeze_iterations",
    "layers",
    "layers_figure",
    "load",
    "metrics",
    "plot_freeze_timeline",
    "plot_layers",
    "summary",
    "timeline_figure",
    "write_html_report",
    "write_report",
]
