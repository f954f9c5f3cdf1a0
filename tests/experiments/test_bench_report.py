"""bench_report: a reduced run in the suite's Ray session times every report in its parts."""

from __future__ import annotations

from experiments.bench_report import PARTS, main
from tests.tune.conftest import ray_session  # noqa: F401  (the shared Ray session)


def test_a_reduced_run_times_every_report_in_its_parts(ray_session) -> None:  # noqa: F811
    out = main(["--trials", "2", "--reports", "6", "--warmup", "1"])
    assert out["trials_timed"] == 2 and out["reports"] == 2 * 5
    medians, p90 = out["median_ms"], out["p90_ms"]
    assert set(medians) == set(PARTS)
    # the mailbox was asked at every report, Tune's report took time, and a report's parts
    # never exceed it (own = total - tune - mailbox, per report)
    assert medians["mailbox"] > 0 and medians["tune"] > 0 and medians["own"] >= 0
    assert medians["total"] >= max(medians["tune"], medians["mailbox"])
    assert all(p90[part] >= medians[part] for part in PARTS)
