"""``report.html`` rendered by a real browser: headless Chromium (from the Debian package
``chromium``, which .ci/run installs) opens the file offline and dumps the DOM it built; every
figure must be drawn by plotly.js and no JavaScript error raised.

Without Chromium these tests fail, naming the package to install: a browser test that passes
without a browser would prove nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from ikkuna_tune import compare
from tests.experiment_files import LAYERS, handmade

TRIALS = ["aaaaa_00000", "aaaaa_00001", "aaaaa_00002"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def df(tmp_path_factory) -> pd.DataFrame:
    return compare.load(handmade(tmp_path_factory.mktemp("html")))


@pytest.fixture(scope="module")
def page(df, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    files = compare.write_report(df, out, metric="sim", color_by="lr", summary_metric="loss")
    assert files[-1] == out / "report.html"
    return files[-1]


# ------------------------------------------------------------------------------ the browser
def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "report.html is tested in headless Chromium but none is installed (looked for "
        f"{', '.join(BROWSERS)} on PATH); install it: apt-get install -y chromium (.ci/run does)"
    )


def _render(page: Path, profile: Path, fragment: str = "") -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, offline."""
    done = subprocess.run(
        [
            _browser(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page must not need it
            "--virtual-time-budget=30000",
            "--dump-dom",
            page.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "</html>" in done.stdout, done.stderr[-3000:]
    return done.stdout


class _Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: _Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Element] = []
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str | None = None, cls: str | None = None) -> list[_Element]:
        return [
            e
            for e in self.walk()
            if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
        ]

    def by_id(self, element_id: str) -> _Element:
        (found,) = [e for e in self.walk() if e.attrs.get("id") == element_id]
        return found

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class _Tree(HTMLParser):
    """The dumped DOM as a tree (the DOM Chromium serialises is well formed)."""

    VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.root = _Element("#document", {}, None)
        self.current = self.root
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = _Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = _Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text += data


def problems(dom: str) -> list[str]:
    """What is wrong with a rendered report: JavaScript errors, figures not drawn."""
    tree = _Tree(dom).root
    found = []
    errors = tree.by_id("ikkuna-errors").all_text().strip()
    if errors:
        found.append(f"JavaScript errors: {errors}")
    status = tree.by_id("ikkuna-status")
    if status.attrs.get("data-rendered") != status.attrs.get("data-plots"):
        found.append(
            f"{status.attrs.get('data-rendered')} of {status.attrs.get('data-plots')} figures drawn"
        )
    for plot in tree.find("div", "ikkuna-plot"):
        if not plot.find("div", "plot-container") or not plot.find("svg", "main-svg"):
            found.append(f"{plot.attrs['id']} has no plotly plot in it")
    return found


# -------------------------------------------------------------------------------- the tests
def test_the_page_is_one_file_that_needs_no_network(page) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", text)  # nothing loaded from outside
    assert not re.search(r"<link[^>]*href=", text)
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js is in the file


def test_report_renders_every_figure_in_chromium_without_errors(df, page, tmp_path) -> None:
    dom = _render(page, tmp_path / "profile")
    assert problems(dom) == []
    tree = _Tree(dom).root
    assert tree.by_id("ikkuna-status").attrs["data-plots"] == "2"
    layers = tree.by_id("plot-layers")
    titles = [e.all_text() for e in layers.find("text", "gtitle")]
    assert titles == ["sim per layer"]
    subplot_titles = [e.all_text() for e in layers.find("text", "annotation-text")]
    assert subplot_titles == LAYERS
    legend = [e.all_text() for e in layers.find("text", "legendtext")]
    assert legend == [f"{t} (lr={lr})" for t, lr in zip(TRIALS, ("0.01", "0.1", "1"))]
    # the shared y-axis spans the values (plotly.js's default -1..4 would mean it missed them)
    ticks = [float(e.all_text().replace("\u2212", "-")) for e in layers.find("g", "ytick")]
    sim = df.loc[df["metric"] == "sim", "value"]
    assert min(ticks) >= sim.min() - 0.2 and max(ticks) <= sim.max() + 0.2, ticks
    timeline = tree.by_id("plot-timeline")
    assert [e.all_text() for e in timeline.find("text", "legendtext")] == ["stem", "stopped early"]
    rows = tree.by_id("summary").find("tr")[1:]
    assert [row.attrs["data-trial"] for row in rows] == TRIALS
    headers = [th.all_text() for th in tree.by_id("summary").find("th")]
    assert headers[:2] == ["shown", "trial_id"] and "compute_saved" in headers
    saved = [row.find("td")[headers.index("compute_saved")].all_text() for row in rows]
    assert saved == ["0.125", "0.5", "0"]


def _opacities(plot) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trace in plot.find("g", "trace"):
        match = re.search(r"opacity:\s*([\d.]+)", trace.attrs.get("style", ""))
        key = match.group(1) if match else "1"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_trial_can_be_highlighted_and_hidden(page, tmp_path) -> None:
    plain = _Tree(_render(page, tmp_path / "a")).root
    # per panel, 3 trial lines and aaaaa_00001's stop mark; aaaaa_00000's star in stem's
    assert _opacities(plain.by_id("plot-layers")) == {"1": 3 * 3 + 3 + 1}
    dom = _render(page, tmp_path / "b", "#highlight=aaaaa_00001&hide=aaaaa_00002")
    assert problems(dom) == []
    tree = _Tree(dom).root
    assert tree.by_id("ikkuna-status").attrs.get("data-ready") == "1"
    # aaaaa_00001 (3 lines, 3 stop marks) at full opacity, aaaaa_00000 (3 lines, 1 star)
    # dimmed, aaaaa_00002 not drawn
    assert _opacities(tree.by_id("plot-layers")) == {"1": 6, "0.15": 4}
    legend = [e.all_text() for e in tree.by_id("plot-layers").find("text", "legendtext")]
    assert legend == [f"{t} (lr={lr})" for t, lr in zip(TRIALS[:2], ("0.01", "0.1"))]
    rows = {row.attrs["data-trial"]: row.classes for row in tree.by_id("summary").find("tr")[1:]}
    assert rows == {
        "aaaaa_00000": set(),
        "aaaaa_00001": {"highlighted"},
        "aaaaa_00002": {"hidden-trial"},
    }


def test_a_trial_whose_id_holds_a_comma_can_be_hidden_from_the_address(tmp_path) -> None:
    # a trial directory copied within the experiment: both copies get '<id>@<directory>', and
    # Tune's directory names hold commas ("lr=0.0100,width=8"); the hide list was split at
    # commas after decoding, so no such trial could be hidden
    import urllib.parse

    experiment = handmade(tmp_path / "data")
    (original,) = [d for d in experiment.iterdir() if d.is_dir() and "aaaaa_00002" in d.name]
    commas = original.rename(experiment / "train_aaaaa_00002_lr=1.0000,width=8")
    shutil.copytree(commas, experiment / "train_aaaaa_00002_lr=1.0000,width=8_copy")
    df = compare.load(experiment)
    ids = sorted(set(df["trial_id"]))
    assert ids[2:] == [f"aaaaa_00002@{commas.name}", f"aaaaa_00002@{commas.name}_copy"]
    page = compare.write_report(df, tmp_path / "out", metric="sim", color_by="lr")[-1]

    def hidden(fragment: str, profile: str) -> list[str]:
        dom = _render(page, tmp_path / profile, fragment)
        assert problems(dom) == []
        rows = _Tree(dom).root.by_id("summary").find("tr")[1:]
        return [row.attrs["data-trial"] for row in rows if "hidden-trial" in row.classes]

    hide = ",".join(urllib.parse.quote(t, safe="") for t in (ids[2], ids[0]))
    assert hidden(f"#hide={hide}", "a") == [ids[0], ids[2]]
    # the whole list encoded, as urlencode writes it (its separating commas as %2C too)
    hide = urllib.parse.urlencode({"hide": ",".join((ids[0], ids[3]))})
    assert "%2C" in hide
    assert hidden(f"#{hide}", "b") == [ids[0], ids[3]]


def test_a_broken_page_is_caught(page, tmp_path) -> None:
    """The checks see a script error and a figure that was not drawn."""
    text = page.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("Plotly.newPlot(div", "Plotly.newPlott(div"), encoding="utf-8")
    found = problems(_render(broken, tmp_path / "a"))
    assert any("JavaScript errors" in p and "newPlott" in p for p in found), found
    assert "0 of 2 figures drawn" in found
    start = text.index('id="plot-timeline-data">') + len('id="plot-timeline-data">')
    bad_data = tmp_path / "bad_data.html"
    bad_data.write_text(text[:start] + "{not json" + text[start:], encoding="utf-8")
    found = problems(_render(bad_data, tmp_path / "b"))
    assert any("JavaScript errors" in p for p in found) and "1 of 2 figures drawn" in found
    assert "plot-timeline has no plotly plot in it" in found


def test_figures_carry_each_trials_config_and_id(df) -> None:
    figure = compare.layers_figure(df, metric="sim", color_by="lr")
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert [t.meta for t in lines] == TRIALS * len(LAYERS)
    assert [t.showlegend for t in lines] == [True] * 3 + [False] * 6
    assert "lr=0.01<br>model/width=8" in lines[0].hovertemplate
    stars = [t for t in figure.data if t.mode == "markers" and t.marker.symbol == "star"]
    (star,) = stars
    assert (star.meta, list(star.x)) == ("aaaaa_00000", [3])
    assert "stem frozen from iteration 3" in star.hovertemplate
    assert "converged at report 2" in star.hovertemplate  # the scheduler's reason
    timeline = compare.timeline_figure(df)
    (stem,) = [t for t in timeline.data if t.name == "stem"]
    assert (stem.meta, list(stem.x), list(stem.y)) == ("aaaaa_00000", [3], [0.0])
