"""The step profile's bookkeeping, on the CPU (nothing is recorded on a device there)."""

from __future__ import annotations

import pytest

from experiments import bench_step_profile


def test_profile_reports_each_run_in_order_with_consistent_times() -> None:
    out = bench_step_profile.main(
        ["--device", "cpu", "--model", "cnn", "--width", "4", "--batch-size", "4",
         "--warmup", "1", "--steps", "3", "--profile-steps", "1"]
    )  # fmt: skip
    assert [r["variant"] for r in out["runs"]] == ["plain", "every", "plain", "every"]
    for run in out["runs"]:
        # the host has queued the last step before the device can have finished it
        assert 0 < run["issue_ms"] <= run["wall_ms"]
        assert run["host_cpu_ms"] > 0
        assert run["device_ms"] == 0  # a CPU records nothing on a device
    assert out["extra_device_ms"] == {}


def test_bad_step_counts_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench_step_profile.main(["--device", "cpu", "--steps", "0"])
