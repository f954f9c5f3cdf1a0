"""bench_epoch_end: every variant's epoch ends are timed apart from its training epochs."""

from __future__ import annotations

import math

from experiments.bench_epoch_end import VARIANTS, main, run_variant


def test_each_epoch_end_is_timed_apart_from_training() -> None:
    train_seconds, ends = run_variant("digits", "mlp", "both", epochs=2)
    assert len(ends) == 2 and train_seconds > 0 and all(e > 0 for e in ends)


def test_a_reduced_run_gives_a_share_per_variant_and_grid() -> None:
    args = ["--data", "digits", "--families", "mlp", "--epochs", "1", "--repeats", "1"]
    out = main(args)
    cell = out["digits"]["mlp"]
    assert set(cell) == set(VARIANTS) == set(out["median"]) == set(out["demo"])
    assert all(math.isfinite(v) and v > 0 for c in (cell, out["demo"]) for v in c.values())
    assert out["median"] == cell  # one grid: its own median; the demo is apart
    assert "demo" not in main([*args, "--no-demo"])
