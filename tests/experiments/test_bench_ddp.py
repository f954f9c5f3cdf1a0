"""bench_ddp in its quickest run: 2 workers publish the 1-worker values, and freezing the
convolutions takes exactly their bytes out of every step's all-reduce."""

from __future__ import annotations

from experiments.bench_ddp import main

KEYS = {
    "metrics_max_rel_diff",
    "allreduce_bytes_ratio_frozen",
    "frozen_parameter_share",
    "step_time_ratio_frozen",
    "targets",
}


def test_the_quick_run_meets_its_targets() -> None:
    out = main(["--quick"])
    assert KEYS <= out.keys()
    assert out["targets"] == {
        "metrics_within_1e-5": True,
        "bytes_fall_by_frozen_share_within_5pct": True,
    }
    # SmallCNN's conv1 (1*16*9 + 16 = 160) and conv2 (16*32*9 + 32 = 4,640) of 105,866
    # parameters, float32: exactly their bytes fewer
    assert out["frozen_layers"] == ["conv1", "conv2"]
    assert out["allreduce_bytes_per_step"] == [4 * 105_866, 4 * (105_866 - 4_800)]
    assert out["frozen_weights_identical_on_ranks"]
    assert out["step_time_ratio_frozen"] > 0
