"""The SVCCA benchmark: its pause measure against a hand computation, and a tiny whole run."""

from __future__ import annotations

import pytest

from experiments import bench_svcca


def test_paused_fraction_counts_the_excess_of_slow_chunks_only() -> None:
    # median 1.0; chunks over 3.0 are stops: (5 - 1) + (11 - 1) = 14 of a total of 24.9
    chunks = [1.0, 1.0, 0.9, 1.1, 2.9, 5.0, 11.0, 1.0, 1.0]
    assert bench_svcca.paused_fraction(chunks) == pytest.approx(14 / 24.9)
    assert bench_svcca.paused_fraction([1.0, 1.2, 0.8]) == 0.0
    assert bench_svcca.paused_fraction([]) == 0.0


def test_quick_run_agrees_with_the_reference_and_reports_pauses(capsys) -> None:
    summary = bench_svcca.main(
        ["--quick", "--repeats", "1", "--pause-probe", "0.05", "--threads", "0"]
    )
    assert summary["cases"] == 8
    assert summary["failures_ours"] == 0
    assert summary["max_abs_diff"] <= 1e-6
    for key in ("paused_fraction_before", "paused_fraction_after"):
        assert 0.0 <= summary[key] < 1.0
    assert capsys.readouterr().out.count("\n") == 9  # one line per case, then the summary


def test_negative_pause_probe_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench_svcca.main(["--quick", "--pause-probe", "-1"])
