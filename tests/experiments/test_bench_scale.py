"""bench_scale: the scheduler sees real results, and the written experiment loads whole."""

from __future__ import annotations

import json

from experiments.bench_scale import PER_LAYER, main, scheduler_result_ms, write_experiment


def test_the_written_experiment_loads_every_value_it_holds(tmp_path) -> None:
    from ikkuna_tune import compare

    experiment = write_experiment(tmp_path, trials=2, layers=3, iterations=4)
    df = compare.load(experiment)
    assert sorted(df["trial_id"].unique()) == ["scale_00000", "scale_00001"]
    per_layer = df[df["layer"].notna()]
    assert set(per_layer["metric"]) == set(PER_LAYER)
    assert set(per_layer["layer"]) == {"block0.conv", "block1.conv", "block2.conv"}
    # the values are those written (a random draw per value): compare one with the file
    folder = next(p for p in experiment.iterdir() if "scale_00001" in p.name)
    third = json.loads((folder / "result.json").read_text().splitlines()[2])
    row = df[(df["trial_id"] == "scale_00001") & (df["training_iteration"] == 3)
             & (df["metric"] == "weights_norm2") & (df["layer"] == "block1.conv")]  # fmt: skip
    assert row["value"].tolist() == [third["weights_norm2"]["block1.conv"]]


def test_the_scheduler_judges_the_timed_results() -> None:
    """The timed results are taken into the trials' histories (not refused as malformed)."""
    from ikkuna_tune.tune import scheduler as scheduler_module

    seen: list[int] = []
    original = scheduler_module.SVCCAScheduler._decide

    def counted(self, trial_id, view, result):  # type: ignore[no-untyped-def]
        before = view.history.reports
        decision = original(self, trial_id, view, result)
        seen.append(view.history.reports - before)
        return decision

    scheduler_module.SVCCAScheduler._decide = counted  # type: ignore[method-assign]
    try:
        assert scheduler_result_ms(trials=3, layers=2, reports=5, calls=4) > 0
    finally:
        scheduler_module.SVCCAScheduler._decide = original  # type: ignore[method-assign]
    assert seen == [1, 1, 1, 1]


def test_a_quick_run_prints_every_measure() -> None:
    out = main(["--quick"])
    assert set(out) == {"scheduler_ms", "freeze_candidates_ms", "compare"}
    assert all(v > 0 for v in out["scheduler_ms"].values())
    assert all(v["rows"] > 0 for v in out["compare"].values())
