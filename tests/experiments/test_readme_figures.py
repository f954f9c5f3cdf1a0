"""Every figure in the README's "Measured" table appears in the log its row names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
HEADER_FIELDS = ("# command:", "# date:", "# commit:", "# machine:", "# versions:")
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e-?\d+)?")


def measured_rows() -> list[list[str]]:
    """The cells of the rows of the README's "Measured" table (header and rule left out)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Measured", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    return [c for c in cells[2:] if c]


def _log_numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)}


def appears(figure: str, numbers: set[float]) -> bool:
    """``figure`` (as the README writes it) is a number of the log, rounded as written, or
    that number as a percentage; a loss the README gives as a magnitude ("1.7 points") matches
    a negative delta."""
    mantissa, _, exponent = figure.partition("e")
    decimals = len(mantissa.split(".")[1])
    value = float(figure)
    tolerance = 0.5 * 10 ** (-decimals + int(exponent or 0)) * (1 + 1e-9)
    return any(
        abs(m - value) <= tolerance or abs(100 * m - value) <= tolerance
        for n in numbers
        for m in (n, abs(n))
    )


def test_the_table_has_rows_and_each_names_a_log() -> None:
    rows = measured_rows()
    assert len(rows) >= 8
    for cells in rows:
        assert len(cells) == 4, cells
        assert re.fullmatch(r"`[\w.]+\.txt`", cells[3]), cells[3]


@pytest.mark.parametrize("cells", measured_rows(), ids=lambda c: c[3].strip("`"))
def test_every_figure_of_a_row_is_in_its_log(cells: list[str]) -> None:
    log = RESULTS / cells[3].strip("`")
    text = log.read_text()
    header = [line for line in text.splitlines()[:8] if line.startswith("# ")]
    for field in HEADER_FIELDS:
        assert any(line.startswith(field) for line in header), f"{log.name} lacks {field!r}"
    numbers = _log_numbers(text)
    figures = NUMBER.findall(cells[2])
    assert figures, f"no figure in {cells[2]!r}"
    missing = [f for f in figures if not appears(f, numbers)]
    assert not missing, f"{missing} of the README are not in {log.name}"


@pytest.mark.parametrize("log", sorted(RESULTS.glob("*.txt")), ids=lambda p: p.name)
def test_every_log_starts_with_its_header(log: Path) -> None:
    header = [line for line in log.read_text().splitlines()[:8] if line.startswith("# ")]
    missing = [f for f in HEADER_FIELDS if not any(line.startswith(f) for line in header)]
    assert not missing, f"{log.name} lacks {missing}"


def test_the_fidelity_table_is_in_the_fidelity_log() -> None:
    """The per-grid table of the README's SVCCAScheduler section comes from one log."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**How faithful it is**", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 6
    numbers = _log_numbers((RESULTS / "cpu_bench_fidelity.txt").read_text())
    figures = [f for row in rows for f in NUMBER.findall(row)]
    assert len(figures) >= 24
    missing = [f for f in figures if not appears(f, numbers)]
    assert not missing, f"{missing} of the fidelity table are not in cpu_bench_fidelity.txt"


def test_the_check_catches_a_figure_that_is_not_in_the_log() -> None:
    numbers = _log_numbers('{"ratio": 1.0551, "accuracy": 0.9562}')
    assert appears("1.055", numbers) and appears("95.6", numbers) and appears("1.06", numbers)
    assert not appears("1.07", numbers) and not appears("95.7", numbers)
    assert appears("5.6e-11", _log_numbers("max abs diff 5.64e-11"))
    assert not appears("5.6e-11", _log_numbers("max abs diff 5.64e-10"))
