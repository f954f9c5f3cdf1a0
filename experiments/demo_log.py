"""The demo figures of docs/compare.md: run ``ikkuna-tune demo``, print what that page reads.

Runs the demo sweep (8 trials of a small CNN on scikit-learn's digits, steered by
SVCCAScheduler) into a temporary directory and prints its output, then the ``summary.csv`` it
wrote and, per layer, every trial's ``self_similarity`` by iteration with the minimum over the
trials (what docs/compare.md says about the plots). With ``--images DIR`` it copies the demo's two
PNGs there and shoots ``report.html`` with a headless Chromium, the trial that froze the most
layers highlighted, as ``DIR/report.png``.

Run: ``python -m experiments.demo_log --images docs/images`` (about 30 s on 2 CPUs, Chromium
needed for the screenshot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

IMAGES = ("layers_self_similarity.png", "freeze_timeline.png")


def most_frozen(decisions: object) -> str | None:
    """The trial with the most freeze decisions (the first such, by id), or None.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"trial_id": ["b", "a", "b", "c"],
    ...                      "action": ["freeze", "freeze", "freeze", "stop"]})
    >>> most_frozen(rows)
    'b'
    """
    frozen = decisions[decisions["action"] == "freeze"]  # type: ignore[index]
    if frozen.empty:
        return None
    counts = frozen.groupby("trial_id").size()
    return str(counts[counts == counts.max()].index.sort_values()[0])


def print_layer_tables(experiment: Path, metric: str = "self_similarity") -> None:
    """Every trial's ``metric`` per layer by iteration, and the minimum over trials."""
    import pandas as pd

    from ikkuna_tune import compare

    df = compare.load(experiment)
    rows = df[df["metric"] == metric]
    for layer in dict.fromkeys(rows["layer"]):
        table = rows[rows["layer"] == layer].pivot_table(
            index="training_iteration", columns="trial_id", values="value"
        )
        print(f"\n# {metric}/{layer} per trial (rows: training_iteration)")
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(table.round(4).to_string())
        lowest = table.min(axis=1).round(4)
        print(f"# min over trials per iteration: {dict(lowest.items())}")


def screenshot(report: Path, highlight: str | None, target: Path) -> None:
    """``report`` rendered by a headless Chromium into ``target`` (1400 x 1000)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Chromium is needed for the screenshot (apt-get install -y chromium)")
    url = report.resolve().as_uri() + (f"#highlight={highlight}" if highlight else "")
    command = [browser, "--headless", f"--screenshot={target}", "--window-size=1400,1000"]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root otherwise
    subprocess.run([*command, url], check=True, capture_output=True, timeout=120)
    print(f"screenshot of {report.name}#highlight={highlight} -> {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, default=None, help="where to put the figures")
    args = parser.parse_args(argv)
    from ikkuna_tune import compare
    from ikkuna_tune.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="ikkuna_demo_log_"))
    out, storage = work / "demo_out", work / "storage"
    rc = cli(["demo", "-o", str(out), "--storage-path", str(storage)])
    print(f"rc {rc}")
    if rc != 0:
        return rc
    print("\n# summary.csv of the demo")
    print((out / "summary.csv").read_text().rstrip())
    experiment = storage / "ikkuna_demo"
    print_layer_tables(experiment)
    if args.images is not None:
        args.images.mkdir(parents=True, exist_ok=True)
        for name in IMAGES:
            shutil.copyfile(out / name, args.images / name)
            print(f"copied {name} -> {args.images / name}")
        highlight = most_frozen(compare.decisions(compare.load(experiment)))
        screenshot(out / "report.html", highlight, args.images / "report.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
