"""Writing a comparison: the PNG plots, ``summary.csv``, ``decisions.csv`` and ``report.html``."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ikkuna_tune.checks import check_bool
from ikkuna_tune.compare.frame import (
    FROZEN,
    check_budget,
    check_metric,
    check_mode,
    check_tidy,
    metrics,
)
from ikkuna_tune.compare.html_report import HTML_REPORT, write_html_report
from ikkuna_tune.compare.loading import ExperimentLike, load
from ikkuna_tune.compare.plots import plot_freeze_timeline, plot_layers
from ikkuna_tune.compare.styles import AUTO, resolve_color_by, resolve_style_by
from ikkuna_tune.compare.tables import DECISION_COLUMNS, decisions, summary

__all__ = ["Comparison", "compare_experiment", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class Comparison:
    """What :func:`compare_experiment` made: the summary table, the files it wrote and the
    scheduler's :func:`decisions`.

    Examples:
        >>> comparison = Comparison(summary=pd.DataFrame(), files=[Path("summary.csv")])
        >>> comparison.files[0].name, len(comparison.decisions)  # no decisions by default
        ('summary.csv', 0)
        >>> list(comparison.decisions.columns)
        ['trial_id', 'iteration', 'action', 'layer', 'rule', 'values', 'in_force', 'carried_out']
    """

    summary: pd.DataFrame
    files: list[Path]
    decisions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(DECISION_COLUMNS))
    )


def compare_experiment(
    experiment: ExperimentLike,
    out_dir: str | PathLike[str],
    metric: str = "self_similarity",
    color_by: str | None = AUTO,
    summary_metric: str | None = None,
    mode: str = "max",
    *,
    style_by: str | None = AUTO,
    sharey: bool = True,
    budget: int | None = None,
    html: bool = True,
) -> Comparison:
    """:func:`load` an experiment and :func:`write_report` its comparison into ``out_dir``.

    Raises:
        ValueError: as :func:`load` and :func:`write_report` do.

    Examples:
        >>> import json, tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     sweep = Path(root, "sweep")
        ...     for i, lr in enumerate([0.1, 0.01]):
        ...         trial = sweep / f"train_abcde_0000{i}"
        ...         trial.mkdir(parents=True)
        ...         _ = (trial / "params.json").write_text(json.dumps({"lr": lr}))
        ...         result = {"training_iteration": 1, "loss": lr, "frozen": {"fc": 0}}
        ...         _ = (trial / "result.json").write_text(json.dumps(result))
        ...     made = compare_experiment(sweep, Path(root, "out"), metric="loss", html=False)
        >>> [path.name for path in made.files], made.summary["trial_id"].tolist()
        (['layers_loss.png', 'freeze_timeline.png', 'summary.csv'], ['abcde_00000', 'abcde_00001'])
    """
    check_mode(mode)
    check_budget(budget)
    check_out_dir(out_dir)
    df = load(experiment)
    options = _Options.checked(df, metric, color_by, style_by, sharey, budget, html)
    table = _summary_for_report(df, options, summary_metric, mode)
    made = decisions(df)
    files = _write(df, table, made, out_dir, options, title=_title(experiment))
    return Comparison(summary=table, files=files, decisions=made)


def write_report(
    df: pd.DataFrame,
    out_dir: str | PathLike[str],
    metric: str = "self_similarity",
    color_by: str | None = AUTO,
    summary_metric: str | None = None,
    mode: str = "max",
    *,
    style_by: str | None = AUTO,
    sharey: bool = True,
    budget: int | None = None,
    html: bool = True,
) -> list[Path]:
    """Write ``layers_<metric>.png``, ``freeze_timeline.png``, ``summary.csv``,
    ``decisions.csv`` and ``report.html`` of a tidy DataFrame into ``out_dir`` (created if
    needed); returns the paths written.

    ``summary_metric`` is the network-wide metric whose best value the summary shows; None
    takes ``test_accuracy`` when the trials report it. ``style_by`` and ``sharey`` are those of
    :func:`plot_layers`; ``budget`` is that of :func:`summary` (also for the plots' marks of
    trials stopped early). The freeze timeline is left out, with a warning, when the trials
    report no ``frozen/<layer>``, and ``decisions.csv`` (the table of :func:`decisions`) when
    there are no scheduler decisions. ``report.html`` (see
    :func:`ikkuna_tune.compare.html_report.write_html_report`: the same figures, interactive,
    and both tables, in one file that opens offline) is left out with ``html=False``. An output
    that an earlier comparison wrote into ``out_dir`` and this one does not write is removed,
    with a warning (it would be read as this experiment's); the hidden ``.ikkuna_compare.json``
    there lists what was written, and no other file is touched. Every argument is checked
    before anything is written. In ``summary.csv`` the frozen layers are written as a JSON
    list and the freeze reasons ``layer: reason; layer: reason``.

    Raises:
        ValueError: as :func:`plot_layers` and :func:`summary` do.

    Examples:
        >>> import tempfile
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, 1, "loss", None, lr) for t, lr in [("a", 0.1), ("b", 0.01)]]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> with tempfile.TemporaryDirectory() as out:
        ...     [path.name for path in write_report(df, out, metric="loss", html=False)]
        ['layers_loss.png', 'summary.csv']
    """
    check_tidy(df)
    check_budget(budget)
    check_out_dir(out_dir)
    options = _Options.checked(df, metric, color_by, style_by, sharey, budget, html)
    table = _summary_for_report(df, options, summary_metric, mode)
    return _write(df, table, decisions(df), out_dir, options, title="ikkuna_tune comparison")


@dataclass(frozen=True)
class _Options:
    """What to draw, checked against the frame (``style_by`` resolved)."""

    metric: str
    color_by: str | None
    style_by: str | None
    sharey: bool
    budget: int | None
    html: bool

    @classmethod
    def checked(
        cls,
        df: pd.DataFrame,
        metric: str,
        color_by: str | None,
        style_by: str | None,
        sharey: bool,
        budget: int | None,
        html: bool,
    ) -> _Options:
        check_metric(df, metric)
        color_by = resolve_color_by(df, color_by)
        style = resolve_style_by(df, color_by, style_by)
        sharey, html = check_bool("sharey", sharey), check_bool("html", html)
        return cls(metric, color_by, style, sharey, budget, html)


def _summary_for_report(
    df: pd.DataFrame, options: _Options, summary_metric: str | None, mode: str
) -> pd.DataFrame:
    check_mode(mode)
    if summary_metric is None and "test_accuracy" in metrics(df, per_layer=False):
        if mode == "min":
            raise ValueError(
                "Expected a summary metric to go with mode='min' (--mode min) but got none: "
                "the default, test_accuracy, is an accuracy, whose best is its highest; pass "
                "summary_metric= (--summary-metric) naming the metric to minimise, such as a "
                "loss, or leave mode at 'max'"
            )
        summary_metric = "test_accuracy"
    return summary(df, metric=summary_metric, mode=mode, budget=options.budget)


def _title(experiment: ExperimentLike) -> str:
    if isinstance(experiment, (str, PathLike)):
        return f"ikkuna_tune comparison: {Path(experiment).resolve().name}"  # '.' too
    path = getattr(experiment, "experiment_path", None)
    return f"ikkuna_tune comparison: {Path(str(path)).name}" if path else "ikkuna_tune comparison"


def check_out_dir(out_dir: str | PathLike[str]) -> None:
    """Raise ``ValueError`` unless ``out_dir`` is a directory or can be made one.

    Examples:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as blocking:
        ...     try:
        ...         check_out_dir(Path(blocking.name, "plots"))
        ...     except ValueError as error:
        ...         print(str(error).endswith("is a file"))
        True
    """
    if not isinstance(out_dir, (str, PathLike)):
        raise ValueError(
            f"Expected `out_dir` to be a path (a str or a Path) but got {type(out_dir).__name__}"
        )
    out = Path(out_dir)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(
            f"Expected the output directory {str(out)!r} to be a directory (it is created if "
            f"missing) but {str(blocking)!r} is a file"
        )


def _write(
    df: pd.DataFrame,
    table: pd.DataFrame,
    made: pd.DataFrame,
    out_dir: str | PathLike[str],
    options: _Options,
    title: str,
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    path = out / f"layers_{_safe_name(options.metric)}.png"
    figure = plot_layers(
        df,
        metric=options.metric,
        color_by=options.color_by,
        style_by=options.style_by,
        sharey=options.sharey,
        budget=options.budget,
    )
    _save(figure, path)
    files.append(path)
    if FROZEN in set(df["metric"].unique()):
        path = out / "freeze_timeline.png"
        _save(plot_freeze_timeline(df, color_by=options.color_by, budget=options.budget), path)
        files.append(path)
    else:
        logger.warning("The trials report no frozen/<layer>: no freeze timeline")
    path = out / "summary.csv"
    written = table.copy()
    # a JSON list: layer names may hold spaces (a ModuleDict key), so a joined string cannot
    # be read back (['enc', '1'] and ['enc 1'] were both 'enc 1')
    written["frozen_layers"] = [json.dumps(list(names)) for names in written["frozen_layers"]]
    written["freeze_reasons"] = [
        "; ".join(f"{name}: {why}" for name, why in reasons.items())
        for reasons in written["freeze_reasons"]
    ]
    written.to_csv(path, index=False)
    files.append(path)
    if len(made):
        path = out / "decisions.csv"
        made.to_csv(path, index=False)
        files.append(path)
    if options.html:
        path = write_html_report(
            df,
            out / HTML_REPORT,
            table,
            made,
            metric=options.metric,
            color_by=options.color_by,
            style_by=options.style_by,
            sharey=options.sharey,
            budget=options.budget,
            title=title,
        )
        files.append(path)
    _remove_stale(out, files)
    logger.info("Wrote %s", ", ".join(str(f) for f in files))
    return files


#: The file in an output directory that lists what the last comparison into it wrote.
MANIFEST = ".ikkuna_compare.json"
#: Outputs that stand for the whole experiment whatever the metric: one left by a comparison
#: of another experiment would be read as this one's.
_ONE_PER_EXPERIMENT = ("freeze_timeline.png", "decisions.csv", HTML_REPORT)


def _remove_stale(out: Path, files: list[Path]) -> None:
    """Remove the outputs the last comparison into ``out`` wrote (as its manifest lists them)
    that stand for a whole experiment and that this one did not write (a freeze timeline or
    decisions of another experiment, an HTML report with ``html=False``): left there, they
    would be read as this experiment's. A figure of another metric stays, and a file no
    comparison wrote is never touched. Then list this comparison's outputs."""
    manifest = out / MANIFEST
    earlier: list[str] = []
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))
        if isinstance(listed, list):
            earlier = [name for name in listed if isinstance(name, str)]
    except (OSError, ValueError):
        pass  # no manifest (a first comparison), or an unreadable one: nothing is removed
    written = {path.name for path in files}
    for name in earlier:
        path = out / name
        # a figure of another metric (layers_<metric>.png) is not stale: it says what it shows
        if name in _ONE_PER_EXPERIMENT and name not in written and path.is_file():
            path.unlink()
            logger.warning(
                "Removed %s, written by an earlier comparison: this one writes none", path
            )
    manifest.write_text(json.dumps(sorted(written)), encoding="utf-8")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=110)
