"""``ikkuna-tune``: the command line. It parses arguments and calls plain functions.

``ikkuna-tune compare EXPERIMENT_DIR`` draws the comparison of a finished experiment
(:func:`ikkuna_tune.compare.compare_experiment`: PNG plots, summary.csv, decisions.csv and the
interactive report.html) and prints its per-trial summary and the
scheduler's decisions (:func:`ikkuna_tune.compare.decisions`: each freeze and stop with its rule
and values); ``ikkuna-tune demo`` runs the demo sweep
(:func:`ikkuna_tune.examples.demo.run_demo`, which needs the ``examples`` extra). Mistakes the
user can fix (a wrong path, an unknown metric, an empty experiment, an unreachable cluster, a
missing extra) print one line to stderr and exit with 2.

This module imports only the standard library: each command imports what it needs when it
runs, so ``ikkuna-tune --help`` loads neither torch, Ray, pandas, matplotlib nor plotly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ikkuna_tune.keys import SELF_SIMILARITY

__all__ = ["EXIT_USAGE", "build_parser", "main"]

#: Exit code for errors the user can fix (as argparse uses for bad arguments).
EXIT_USAGE = 2
PROG = "ikkuna-tune"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="See inside neural-network training across a Ray Tune sweep, and act on it.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress; show tracebacks of errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ------------------------------------------------------------------ compare
    compare = commands.add_parser(
        "compare",
        help="plot and summarise a finished experiment",
        description="Draw per-layer small multiples of a metric, the layer freeze timeline and "
        "a per-trial summary of a finished Tune experiment, write them all into one interactive "
        "report.html that opens offline, and list the scheduler's decisions (each frozen layer "
        "and stopped trial with the rule and values behind it); read from disk, Ray need not "
        "run.",
    )
    compare.add_argument(
        "experiment", metavar="EXPERIMENT_DIR", help="experiment directory (<storage>/<name>)"
    )
    compare.add_argument(
        "--metric", default=SELF_SIMILARITY, help=f"metric to plot per layer ({SELF_SIMILARITY})"
    )
    compare.add_argument(
        "--color-by",
        default="auto",
        help="config parameter that colours the trials (auto: lr, or another learning rate "
        "parameter, or the one with the most values; 'none' colours by trial)",
    )
    compare.add_argument(
        "--style-by",
        default="auto",
        help="config parameter that sets the line style, to tell apart trials of one colour "
        "(auto: the one that does; 'none': all solid)",
    )
    compare.add_argument(
        "--free-y",
        action="store_true",
        help="give each layer's panel its own y-axis (default: one shared y-axis)",
    )
    compare.add_argument(
        "--budget",
        type=_positive_int,
        default=None,
        metavar="N",
        help="iterations a trial runs unless stopped early, for stopped_early and "
        "compute_saved; at least the longest trial's (the default)",
    )
    compare.add_argument(
        "--no-html", action="store_true", help="do not write the interactive report.html"
    )
    compare.add_argument(
        "--summary-metric",
        default=None,
        help="network-wide metric whose best value the summary shows "
        "(default: test_accuracy when reported)",
    )
    compare.add_argument(
        "--mode", choices=("max", "min"), default="max", help="best is max or min (max)"
    )
    compare.add_argument(
        "-o", "--out", default=".", metavar="DIR", help="output directory (current directory)"
    )
    compare.set_defaults(handler=_compare)

    # --------------------------------------------------------------------- demo
    # The demo sweep lives in ikkuna_tune.examples.demo (imported only when this command runs):
    # run_demo(address=, quick=, storage_path=, out_dir=) returns a mapping with "summary"
    # (the compare.summary table), "files" and "experiment" (its path), which are printed.
    demo = commands.add_parser(
        "demo",
        help="run the demo sweep with SVCCAScheduler and compare its trials",
        description="Run a real sweep with SVCCAScheduler on bundled data, then print the "
        "summary and write the plots.",
    )
    demo.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)",
    )
    demo.add_argument("--quick", action="store_true", help="a smaller, faster sweep")
    demo.add_argument(
        "-o",
        "--out",
        default="ikkuna_demo",
        metavar="DIR",
        help="where the plots, report.html, summary.csv and decisions.csv go, and Tune's "
        "results unless --storage-path is given (default: ikkuna_demo)",
    )
    demo.add_argument(
        "--storage-path",
        default=None,
        help="where Tune writes the experiment (default: DIR/ray_results); each run is a new "
        "experiment there: ikkuna_demo, then ikkuna_demo_2, ...",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _compare(args: argparse.Namespace) -> int:
    from ikkuna_tune.compare import compare_experiment

    color_by = None if args.color_by.lower() == "none" else args.color_by
    style_by = None if args.style_by.lower() == "none" else args.style_by
    try:
        comparison = compare_experiment(
            args.experiment,
            args.out,
            metric=args.metric,
            color_by=color_by,
            summary_metric=args.summary_metric,
            mode=args.mode,
            style_by=style_by,
            sharey=not args.free_y,
            budget=args.budget,
            html=not args.no_html,
        )
    except ValueError as error:
        raise _naming_the_option(error, args) from error
    _print_summary(comparison.summary)
    _print_decisions(comparison.decisions)
    for path in comparison.files:
        print(f"wrote {path}")
    return 0


def _naming_the_option(error: ValueError, args: argparse.Namespace) -> ValueError:
    """``error`` about a metric, prefixed with the option that named it (``--metric`` by
    default, which the user may never have typed); any other error as it is."""
    text = str(error)
    options = [
        ("--metric", args.metric, SELF_SIMILARITY),
        ("--summary-metric", args.summary_metric, None),
    ]
    if "is reported per layer; pick a network-wide" in text:  # only the summary's is
        options = options[1:]
    for option, value, default in options:
        if value is not None and text.startswith(
            (f"Unknown metric {value!r}", f"Metric {value!r}")
        ):
            given = " (the default)" if value == default else ""
            return ValueError(f"{option} {value}{given}: {text}")
    for option, what in (("--color-by", "color_by"), ("--style-by", "style_by")):
        value = getattr(args, what, None)
        if text.startswith(f"Unknown {what} parameter {value!r}"):
            return ValueError(f"{option} {value}: {text}")
    return error


def _demo(args: argparse.Namespace) -> int:
    try:
        from ikkuna_tune.examples.demo import run_demo
    except ModuleNotFoundError as error:
        if error.name not in ("ikkuna_tune.examples", "ikkuna_tune.examples.demo"):
            raise
        raise _UsageError("the demo is not available in this installation") from error
    try:
        result = run_demo(
            address=args.address,
            quick=args.quick,
            storage_path=args.storage_path,
            out_dir=args.out,
        )
    except ImportError as error:  # a missing package, such as the examples extra's: one line
        raise _UsageError(str(error)) from error
    if isinstance(result, Mapping):
        if result.get("summary") is not None:
            _print_summary(result["summary"])
        if result.get("decisions") is not None:
            _print_decisions(result["decisions"])
        for path in result.get("files", ()):
            print(f"wrote {path}")
        if result.get("experiment"):
            print(f"experiment: {result['experiment']}")
            print(f"TensorBoard logs: tensorboard --logdir {result['experiment']}")
    elif result is not None:
        print(result)
    return 0


def _print_summary(table: Any) -> None:
    """The summary table; each freeze's reason is in the decisions printed after it."""
    shown = table.drop(columns=["freeze_reasons"], errors="ignore")
    shown["frozen_layers"] = [", ".join(names) or "-" for names in shown["frozen_layers"]]
    if "stopped_by" in shown.columns:
        shown["stopped_by"] = [why or "-" for why in shown["stopped_by"]]
    print(shown.to_string(index=False))


def _print_decisions(table: Any) -> None:
    """The scheduler's decisions (:func:`ikkuna_tune.compare.decisions`), if any."""
    if not len(table):
        return
    from pandas import NA as _NA  # (pandas is loaded: the table is a DataFrame)

    shown = table.copy()
    shown["layer"] = [layer or "-" for layer in shown["layer"]]
    columns = [
        [str(name), *("-" if v is None or v is _NA else str(v) for v in shown[name])]
        for name in shown
    ]
    widths = [max(len(cell) for cell in column) for column in columns]
    numeric = [name == "iteration" for name in shown.columns]  # right-aligned
    print()
    print("scheduler decisions:")
    for cells in zip(*columns):
        line = "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric)
        )
        print(line.rstrip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {text!r}")
    return value


class _UsageError(Exception):
    """An error the user can fix, reported as one line."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ikkuna-tune`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage message
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (ValueError, OSError, ConnectionError, _UsageError) as error:
        if args.verbose:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
