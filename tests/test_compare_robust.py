"""compare.load on damaged and incomplete result files: what can be loaded is loaded.

Hand-written experiment files (no Ray); see tests/experiment_files.py.
"""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest
from matplotlib.text import Text

from ikkuna_tune import compare
from tests.experiment_files import LAYERS, handmade, report, write_decisions, write_trial

CONFIG = {"lr": 0.5, "model": {"width": 8}}


def _loss(df, trial_id: str) -> list[tuple[int, float]]:
    rows = df[(df["trial_id"] == trial_id) & (df["metric"] == "loss")]
    return [(int(i), round(float(v), 9)) for i, v in zip(rows["training_iteration"], rows["value"])]


def _lines(*results: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in results)


# ------------------------------------------------------------------------ metrics without values
def test_an_all_nan_metric_is_known_but_has_no_values(tmp_path) -> None:
    experiment = tmp_path / "sweep"
    for index in range(2):
        results = [report(f"t{index}", CONFIG, i) for i in (1, 2)]
        for result in results:
            result["acc"] = math.nan  # Tune writes NaN
            result["sim"]["head"] = None
        write_trial(experiment, f"train_t{index}", CONFIG, results)
    df = compare.load(experiment)
    assert "acc" not in compare.metrics(df)  # no rows: nothing to plot
    assert df.attrs["empty_metrics"] == {"acc": False}  # sim has values in other layers
    message = r"^Metric 'acc' was reported but has no values in any trial \(every value is NaN"
    with pytest.raises(ValueError, match=message):
        compare.plot_layers(df, metric="acc")
    with pytest.raises(ValueError, match=message):
        compare.write_report(df, tmp_path / "out", metric="acc")
    table = compare.summary(df, metric="acc")  # the summary shows NaN, as for a trial without it
    assert table["best_acc"].isna().all() and table["best_iteration"].isna().all()
    assert compare.layers(df, "sim") == ["stem", "block.0"]  # head never had a value
    with pytest.raises(ValueError, match=r"^Unknown metric 'nope'.*; without values: acc$"):
        compare.plot_layers(df, metric="nope")


def test_a_value_reported_as_nan_stays_and_is_marked_where_a_missing_one_goes(tmp_path) -> None:
    """A loss that diverged to NaN at iteration 2 looked like a healthy trial that stopped
    reporting: the NaN stays (the plots mark it as not finite from there), while a value not
    reported (null), and the step times that are NaN when no step was timed, go."""
    experiment = tmp_path / "sweep"
    results = [report("t0", CONFIG, i) for i in (1, 2, 3)]
    results[1]["loss"] = results[2]["loss"] = math.nan  # as Tune writes it: NaN
    results[1]["sim"]["head"] = math.nan  # a similarity that could not be computed
    results[2]["sim"]["head"] = None  # not measured since the last report
    results[2]["step_seconds"] = math.nan  # no step timed
    write_trial(experiment, "train_t0", CONFIG, results)
    df = compare.load(experiment)
    assert [(i, math.isnan(v)) for i, v in _loss(df, "t0")] == [(1, False), (2, True), (3, True)]
    head = df[(df["metric"] == "sim") & (df["layer"] == "head")]
    assert list(head["training_iteration"]) == [1, 2]  # the null at 3 is left out
    assert math.isnan(head["value"].iloc[1])
    steps = df[df["metric"] == "step_seconds"]
    assert list(steps["training_iteration"]) == [1, 2]
    table = compare.summary(df, metric="loss", mode="min")
    assert table["best_loss"].iloc[0] == pytest.approx(results[0]["loss"])
    figure = compare.plot_layers(df, metric="loss")
    (marks,) = [c for c in figure.axes[0].collections if c.get_gid() == "not finite"]
    assert marks.get_offsets().tolist() == [[2.0, results[0]["loss"]]]


def test_a_per_layer_metric_without_values(tmp_path) -> None:
    experiment = tmp_path / "sweep"
    results = [report("t0", CONFIG, i) for i in (1, 2)]
    for result in results:
        result["cka"] = dict.fromkeys(LAYERS, None)
    write_trial(experiment, "train_t0", CONFIG, results)
    df = compare.load(experiment)
    assert df.attrs["empty_metrics"] == {"cka": True}
    with pytest.raises(ValueError, match="Metric 'cka' was reported but has no values"):
        compare.plot_layers(df, metric="cka")
    with pytest.raises(ValueError, match="Metric 'cka' is reported per layer; pick a network"):
        compare.summary(df, metric="cka")


def test_null_values_load_as_missing_and_keep_columns_numeric(tmp_path) -> None:
    """The first report writes null for per-layer values not measured yet."""
    experiment = tmp_path / "sweep"
    results = [report("t0", CONFIG, i) for i in (1, 2, 3)]
    results[0]["sim"] = dict.fromkeys(LAYERS, None)
    results[0]["acc"], results[1]["acc"], results[2]["acc"] = None, 0.5, None
    results[0]["flag"], results[1]["flag"], results[2]["flag"] = None, True, False
    for result in results:
        result["never"] = None  # not measured in any report so far
    write_trial(experiment, "train_t0", CONFIG, results)
    df = compare.load(experiment)
    assert df["value"].dtype == float
    sim = df[(df["metric"] == "sim") & (df["layer"] == "head")]
    assert sim["training_iteration"].tolist() == [2, 3]
    assert sim["value"].tolist() == pytest.approx([0.7, 0.8])
    acc = df[df["metric"] == "acc"]
    assert acc["training_iteration"].tolist() == [2] and acc["value"].tolist() == [0.5]
    flag = df[df["metric"] == "flag"]
    assert flag["value"].tolist() == [1.0, 0.0]
    assert df.attrs["empty_metrics"] == {"never": False}
    with pytest.raises(ValueError, match="Metric 'never' was reported but has no values"):
        compare.plot_layers(df, metric="never")


# --------------------------------------------------------------------------- damaged files
def test_bad_lines_are_skipped_with_one_warning_naming_file_and_lines(tmp_path, caplog) -> None:
    experiment = handmade(tmp_path)
    trial = write_trial(experiment, "train_ddddd_00000_3", CONFIG, [])
    data = (
        _lines(report("ddddd_00000", CONFIG, 1))
        + b'{"loss": 1.0, "name": "caf\xe9 \xff"}\n'  # not UTF-8
        + b"garbage\n"
        + b"[1, 2]\n"  # JSON, but not a result
        + _lines(report("ddddd_00000", CONFIG, 2))
        + b'{"loss": 0.1, "training_iter'  # half-written
    )
    (trial / "result.json").write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    path = trial / "result.json"
    warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"Skipping unreadable lines 2, 3, 4, 6 of {path}")
    assert _loss(df, "ddddd_00000") == [(1, 2.5), (2, 1.5)]
    assert df.attrs["trials"]["ddddd_00000"]["results"] == 2
    assert len(_loss(df, "aaaaa_00000")) == 4  # the other trials are all there


def test_unreadable_files_are_skipped_with_a_warning_naming_them(tmp_path, caplog) -> None:
    experiment = handmade(tmp_path)
    broken = experiment / "train_ddddd_00000_3"
    (broken / "result.json").mkdir(parents=True)  # cannot be read as a file
    (broken / "params.json").write_text(json.dumps({"lr": 0.5}))
    odd_params = write_trial(experiment, "train_ddddd_00001_4", CONFIG, [])
    (odd_params / "result.json").write_bytes(_lines(report("ddddd_00001", CONFIG, 1)))
    (odd_params / "params.json").unlink()
    (odd_params / "params.json").mkdir()
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert f"Cannot read {broken / 'result.json'}" in caplog.text
    assert f"Cannot read {odd_params / 'params.json'}" in caplog.text
    trials = df.attrs["trials"]
    assert trials["ddddd_00000"]["results"] == 0 and trials["ddddd_00000"]["config"] == {"lr": 0.5}
    # the config comes from the results when params.json cannot be read
    assert trials["ddddd_00001"]["config"] == {"lr": 0.5, "model/width": 8}
    assert _loss(df, "ddddd_00001") == [(1, 2.5)]
    assert {"aaaaa_00000", "aaaaa_00001", "aaaaa_00002"} <= set(df["trial_id"])


# ------------------------------------------------------------------------------- trial ids
def test_a_null_line_or_null_trial_id_keeps_the_trial_id(tmp_path, caplog) -> None:
    experiment = tmp_path / "sweep"
    trial = write_trial(experiment, "train_ddddd_00000_0", CONFIG, [])
    (trial / "result.json").write_bytes(
        _lines(report("ddddd_00000", CONFIG, 1), report("ddddd_00000", CONFIG, 2)) + b"null\n"
    )
    nulls = write_trial(experiment, "train_eeeee_00000_1", CONFIG, [])
    results = [report("eeeee_00000", CONFIG, 1), report("eeeee_00000", CONFIG, 2)]
    results[-1]["trial_id"] = None  # a last line without a usable trial id
    (nulls / "result.json").write_bytes(_lines(*results))
    none = write_trial(experiment, "my_trial", CONFIG, [])
    results = [report("x", CONFIG, 1)]
    results[0]["trial_id"] = None
    (none / "result.json").write_bytes(_lines(*results))
    digits = write_trial(experiment, "train_fffff_00000_2", CONFIG, [])
    (digits / "result.json").write_bytes(_lines({**report("x", CONFIG, 1), "trial_id": "00012"}))
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert f"Skipping unreadable line 3 of {trial / 'result.json'}" in caplog.text
    # as written; else the directory name: its Tune trial id, or the whole name
    assert sorted(df.attrs["trials"]) == ["00012", "ddddd_00000", "eeeee_00000", "my_trial"]
    assert sorted(set(df["trial_id"])) == ["00012", "ddddd_00000", "eeeee_00000", "my_trial"]
    assert df.attrs["trials"]["ddddd_00000"]["results"] == 2
    assert df["trial_id"].map(type).eq(str).all()


def test_progress_csv_with_null_trial_ids(tmp_path) -> None:
    experiment = tmp_path / "sweep"
    trial = experiment / "train_ggggg_00000_0"
    trial.mkdir(parents=True)
    (trial / "progress.csv").write_text(
        "training_iteration,trial_id,loss,sim/head\n1,ggggg_00000,1.0,\n2,,0.5,0.9\n"
    )
    df = compare.load(experiment)
    assert sorted(df.attrs["trials"]) == ["ggggg_00000"]
    assert _loss(df, "ggggg_00000") == [(1, 1.0), (2, 0.5)]


def test_an_experiment_with_only_values_missing(tmp_path) -> None:
    experiment = tmp_path / "sweep"
    write_trial(experiment, "train_t0", CONFIG, [{"training_iteration": 1, "acc": None}])
    message = r"sweep has no values: 1 trial\(s\) reported 1 result\(s\), every value NaN, null"
    with pytest.raises(ValueError, match=message + r" or text \(without values: acc\)$"):
        compare.load(experiment)


def test_trial_status_comes_from_the_experiment_state_tune_would_choose(tmp_path) -> None:
    import os

    experiment = handmade(tmp_path)

    def state(status: str) -> str:
        trials = [
            [json.dumps({"relative_logdir": d.name, "trial_id": d.name.split("_")[1] + "_"
                         + d.name.split("_")[2], "status": status}), "{}"]
            for d in sorted(experiment.iterdir()) if d.is_dir()
        ]  # fmt: skip
        return json.dumps({"trial_data": trials})

    older = experiment / "experiment_state-2026-11-30_01-00-00.json"
    newer = experiment / "experiment_state-2026-11-30_02-00-00.json"  # Tuner.restore's run
    newer.write_text(state("TERMINATED"))
    older.write_text(state("RUNNING"))
    # the resumed driver writes the old file too, last: the latest name, not the latest write
    os.utime(older, (newer.stat().st_mtime + 5, newer.stat().st_mtime + 5))
    trials = compare.load(experiment).attrs["trials"]
    assert {t["status"] for t in trials.values()} == {"TERMINATED"}


def test_metrics_named_like_fields_of_older_rays_are_kept(tmp_path) -> None:
    """Ray 2.60 adds no ``episodes_total``, ``timesteps_total`` or ``warmup_time`` to a
    result: a user's metrics of these names were dropped from the frame, unannounced."""
    experiment = tmp_path / "sweep"
    rows = [
        {**report("rrrrr_00000", CONFIG, i), "episodes_total": 10 * i, "timesteps_total": 7 * i,
         "warmup_time": 0.25 * i}
        for i in (1, 2)
    ]  # fmt: skip
    write_trial(experiment, "train_rrrrr_00000_0", CONFIG, rows)
    df = compare.load(experiment)
    for name, unit in (("episodes_total", 10), ("timesteps_total", 7), ("warmup_time", 0.25)):
        values = df[df["metric"] == name]["value"].tolist()
        assert values == pytest.approx([unit, 2 * unit]), name


def test_a_trial_stopped_while_paused_is_stopped_early(tmp_path) -> None:
    """HyperBand's halving stops the trials it drops while they are paused: no result says
    ``done`` and Tune's final state still lists them as paused (as it does a trial paused at
    the end of its budget). Such a trial was read as one that ended by itself (not stopped
    early, nothing saved); one that did end by itself after fewer iterations (its own loop)
    is still not stopped early."""
    experiment = tmp_path / "sweep"
    runs = {"00000": (4, "PAUSED"), "00001": (2, "PAUSED"), "00002": (2, "TERMINATED")}
    trials = []
    for index, (number, (iterations, status)) in enumerate(runs.items()):
        trial_id, config = f"hhhhh_{number}", {"lr": 0.1 * (index + 1), "model": {"width": 8}}
        results = [report(trial_id, config, i) for i in range(1, iterations + 1)]
        trial = write_trial(experiment, f"train_{trial_id}_{index}", config, results)
        state = {"relative_logdir": trial.name, "trial_id": trial_id, "status": status}
        trials.append([json.dumps(state), "{}"])
    (experiment / "experiment_state-2026-12-01_01-00-00.json").write_text(
        json.dumps({"trial_data": trials})
    )
    table = compare.summary(compare.load(experiment), "loss", mode="min").set_index("trial_id")
    assert table["stopped_early"].to_dict() == {
        "hhhhh_00000": False,  # paused at the end of its budget: the longest trial
        "hhhhh_00001": True,
        "hhhhh_00002": False,
    }
    assert table.loc["hhhhh_00001", "compute_saved"] == pytest.approx(0.5)


def test_a_trial_the_scheduler_recorded_as_stopped_is_stopped_early(tmp_path) -> None:
    """By timing, Tune's final state lists a trial HyperBand stopped while paused as
    terminated, with no result saying ``done``: the stop SVCCAScheduler recorded (in force)
    says it was stopped early all the same; one it recorded in a run the trial left does not."""
    experiment = tmp_path / "sweep"
    stop = {"action": "stop", "rule": "HyperBandScheduler (stopped while paused)",
            "layer": None, "values": {"acc": 0.4}}  # fmt: skip
    for index, (number, iterations) in enumerate((("00000", 4), ("00001", 2))):
        trial_id, config = f"sssss_{number}", {"lr": 0.1 * (index + 1), "model": {"width": 8}}
        results = [report(trial_id, config, i) for i in range(1, iterations + 1)]
        trial = write_trial(experiment, f"train_{trial_id}_{index}", config, results)
        write_decisions(trial, trial_id, [{**stop, "iteration": iterations}])
    table = compare.summary(compare.load(experiment), "loss", mode="min").set_index("trial_id")
    assert table["stopped_early"].to_dict() == {"sssss_00000": False, "sssss_00001": True}


@pytest.mark.parametrize("source", ["result.json", "progress.csv"])
def test_a_metric_named_with_a_slash_is_network_wide(tmp_path, source) -> None:
    import pandas as pd

    experiment = tmp_path / "sweep"
    rows = [
        {"training_iteration": i, "trial_id": "ttttt_00000", "val/accuracy": 0.5 + i / 10,
         "sim": {"conv": 0.9}, "frozen": {"conv": 0}}
        for i in (1, 2)
    ]  # fmt: skip
    trial = write_trial(experiment, "train_ttttt_00000_0", {"lr": 0.1}, rows)
    if source == "progress.csv":  # Tune's flattened copy only: the nesting is gone
        pd.json_normalize(rows, sep="/").to_csv(trial / "progress.csv", index=False)
        (trial / "result.json").unlink()
    df = compare.load(experiment)
    assert compare.layers(df) == ["conv"]
    assert "val/accuracy" in compare.metrics(df, per_layer=False)
    values = df[df["metric"] == "val/accuracy"]
    assert values["value"].tolist() == pytest.approx([0.6, 0.7])
    assert values["layer"].isna().all()


def test_trial_directories_the_newest_experiment_state_does_not_list_are_warned_of(
    tmp_path, caplog
) -> None:
    # the same experiment name run twice: Tune adds the second run's trials beside the first's
    # and lists only its own in the newer experiment state
    experiment = handmade(tmp_path)
    listed = sorted(d for d in experiment.iterdir() if d.is_dir())[:1]
    trials = [
        [json.dumps({"relative_logdir": d.name, "trial_id": "aaaaa_00000", "status": "TERMINATED"}),
         "{}"]
        for d in listed
    ]  # fmt: skip
    state = experiment / "experiment_state-2026-11-30_02-00-00.json"
    state.write_text(json.dumps({"trial_data": trials}))
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        df = compare.load(experiment)
    assert df["trial_id"].nunique() == 3  # nothing reported is lost
    (warning,) = [r.getMessage() for r in caplog.records if "experiment state" in r.getMessage()]
    assert warning.startswith("2 trial directories of")
    unlisted = sorted(d.name for d in experiment.iterdir() if d.is_dir())[1:]
    assert all(name in warning for name in unlisted)


def test_an_error_file_older_than_the_results_is_a_resumed_failure(tmp_path) -> None:
    # no experiment state: a trial resumed after a failure (Tuner.restore(resume_errored=True))
    # keeps its error file, older than the results it reported afterwards
    import os

    experiment = tmp_path / "sweep"
    config = {"lr": 0.1}
    resumed, failed = (
        write_trial(
            experiment,
            f"train_fffff_0000{index}_{index}",
            config,
            [report(f"fffff_0000{index}", config, i) for i in (1, 2)],
            error=True,
        )
        for index in (0, 1)
    )
    error_time = (resumed / "error.txt").stat().st_mtime
    os.utime(resumed / "result.json", (error_time + 5, error_time + 5))
    os.utime(failed / "result.json", (error_time - 5, error_time - 5))
    trials = compare.load(experiment).attrs["trials"]
    assert trials["fffff_00000"]["failed"] is False
    assert trials["fffff_00001"]["failed"] is True


def test_when_the_last_failure_occurred_tells_a_resumed_trial_from_a_failed_one(
    tmp_path, caplog
) -> None:
    # Tune copies a trial's files to its storage at once at the trial's end, so their times
    # tell nothing there (a resumed trial's error file was the newest, and it read as failed);
    # error.txt says when each failure occurred, in the form of each result's date
    import os

    experiment = tmp_path / "sweep"
    config = {"lr": 0.1}
    dates = {1: "2026-12-02_06-58-59", 2: "2026-12-02_06-59-00", 3: "2026-12-02_06-59-02"}
    trials = {}
    for index, (failed_at, reports) in enumerate(
        [("2026-12-02_06-59-00", (1, 2, 3)), ("2026-12-02_06-59-02", (1, 2, 3))]
    ):
        rows = [{**report(f"ddddd_0000{index}", config, i), "date": dates[i]} for i in reports]
        trial = write_trial(experiment, f"train_ddddd_0000{index}_{index}", config, rows)
        (trial / "error.txt").write_text(
            f"Failure # 1 (occurred at {failed_at})\nRuntimeError: boom\n"
        )
        os.utime(trial / "result.json", (1_800_000_000, 1_800_000_000))
        os.utime(trial / "error.txt", (1_800_000_001, 1_800_000_001))  # the newest file
        trials[index] = trial
    # a state that cannot be read is said, and the statuses come from the files
    (experiment / "experiment_state-2026-12-02_06-58-58.json").write_text('{"trial_data": [')
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        loaded = compare.load(experiment).attrs["trials"]
    assert loaded["ddddd_00000"]["failed"] is False  # failed at 06-59-00, reported at 06-59-02
    assert loaded["ddddd_00001"]["failed"] is True  # failed after its last report
    (warning,) = [r.getMessage() for r in caplog.records if "Cannot read" in r.getMessage()]
    assert "experiment_state-2026-12-02_06-58-58.json" in warning


def test_config_keys_named_like_the_long_forms_columns_are_prefixed(tmp_path) -> None:
    # "reported_nan" is the long form's own column of NaN values that were reported: a config
    # key of that name stopped loading with pandas' "cannot insert reported_nan"
    experiment = tmp_path / "sweep"
    for index, lr in enumerate([0.1, 0.2]):
        config = {"lr": lr, "reported_nan": index, "metric": "acc"}
        rows = [report(f"ccccc_0000{index}", config, i) for i in (1, 2)]
        write_trial(experiment, f"train_ccccc_0000{index}_{index}", config, rows)
    df = compare.load(experiment)
    loss = df[(df["metric"] == "loss") & (df["training_iteration"] == 2)].set_index("trial_id")
    assert loss["config/reported_nan"].to_dict() == {"ccccc_00000": 0, "ccccc_00001": 1}
    assert set(loss["config/metric"]) == {"acc"} and set(loss["metric"]) == {"loss"}
    assert loss["value"].to_dict() == pytest.approx({"ccccc_00000": 1.1, "ccccc_00001": 1.2})


def test_an_integer_config_value_stays_an_integer_where_another_trial_lacks_the_key(
    tmp_path,
) -> None:
    experiment = tmp_path / "sweep"
    configs = [{"lr": 0.1, "width": 8, "seed": 2**63 + 5}, {"lr": 0.2}]  # a 64-bit seed too
    for index, config in enumerate(configs):
        rows = [report(f"wwwww_0000{index}", config, i) for i in (1, 2)]
        write_trial(experiment, f"train_wwwww_0000{index}_{index}", config, rows)
    table = compare.summary(compare.load(experiment)).set_index("trial_id")
    assert table.loc["wwwww_00000", "seed"] == 2**63 + 5  # (the nullable integers overflowed)
    assert str(table["width"].dtype) == "Int64" and table.loc["wwwww_00000", "width"] == 8
    assert table.loc["wwwww_00001", "width"] is pd.NA
    assert str(table["lr"].dtype) == "float64"  # numbers stay numbers (nlargest, log10, corr)
    assert table.nlargest(1, "width").index.tolist() == ["wwwww_00000"]
    csv = table.to_csv()
    assert ",8," in csv and "8.0" not in csv


def test_a_plain_tune_trial_beside_instrumented_ones_reads_slashed_metrics_alike(tmp_path) -> None:
    # a sweep whose plain trials call tune.report: they report no frozen/<layer>, and their
    # "val/acc" (or nested {"val": {"acc": ...}}) is the same network-wide metric as in the
    # instrumented trials, not metric "val" of layers "acc" and "loss"
    experiment = tmp_path / "sweep"
    for index, instrumented in enumerate([True, False]):
        rows = []
        for i in (1, 2):
            row = {
                "training_iteration": i,
                "trial_id": f"ttttt_0000{index}",
                "val": {"acc": 0.5 + i / 10 + index / 100, "loss": 1.0 / i},
            }
            if instrumented:
                row.update({"sim": {"conv": 0.9}, "frozen": {"conv": 0}})
            rows.append(row)
        write_trial(
            experiment, f"train_ttttt_0000{index}_{index}", {"plain": not instrumented}, rows
        )
    df = compare.load(experiment)
    assert compare.layers(df) == ["conv"]
    assert {"val/acc", "val/loss"} <= set(compare.metrics(df, per_layer=False))
    assert "val" not in compare.metrics(df, per_layer=True)
    summary = compare.summary(df, "val/acc")
    assert summary.set_index("trial_id")["best_val/acc"].to_dict() == pytest.approx(
        {"ttttt_00000": 0.7, "ttttt_00001": 0.71}
    )


def test_an_output_directory_that_is_a_file_is_a_clear_error(tmp_path) -> None:
    experiment = handmade(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out in (taken, taken / "below"):
        with pytest.raises(ValueError, match=r"to be a directory .* is a file"):
            compare.compare_experiment(experiment, out, metric="sim")


def test_two_directories_with_one_trial_id_are_kept_apart(tmp_path, caplog) -> None:
    """A trial directory copied within the experiment claims the id of the original: the two
    are loaded as two trials, each with its own results, never merged."""
    experiment = tmp_path / "sweep"
    first = {"lr": 0.5, "model": {"width": 8}}
    second = {"lr": 2.0, "model": {"width": 8}}
    write_trial(experiment, "train_t0", first, [report("t0", first, i) for i in (1, 2)])
    write_trial(experiment, "train_t0_copy", second, [report("t0", second, i) for i in (1, 2, 3)])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert "2 trial directories hold trial id 't0'" in caplog.text
    assert sorted(df["trial_id"].unique()) == ["t0@train_t0", "t0@train_t0_copy"]
    assert _loss(df, "t0@train_t0") == [(i, round(2.0 / i + 0.5, 9)) for i in (1, 2)]
    assert _loss(df, "t0@train_t0_copy") == [(i, round(2.0 / i + 2.0, 9)) for i in (1, 2, 3)]
    table = compare.summary(df).set_index("trial_id")
    assert table.loc["t0@train_t0", "lr"] == 0.5 and table.loc["t0@train_t0_copy", "lr"] == 2.0


@pytest.mark.parametrize("source", ["result.json", "progress.csv"])
def test_config_without_params_json_keeps_its_types(tmp_path, source) -> None:
    """Without params.json the config comes from the results; an integer stays an integer,
    also where every reported value is a number (an integer trial id, no text or flag)."""
    experiment = tmp_path / "sweep"
    config = {"lr": 0.5, "batch": 32, "model": {"width": 8}}
    results = [report("t0", config, i) for i in (1, 2)]
    for result in results:
        result["trial_id"] = 7
        del result["phase"], result["done"]
    trial = write_trial(experiment, "train_t0", config, results)
    (trial / "params.json").unlink()
    if source == "progress.csv":
        frame = pd.json_normalize(
            [json.loads(line) for line in (trial / "result.json").read_text().splitlines()],
            sep="/",
        )
        frame.to_csv(trial / "progress.csv", index=False)
        (trial / "result.json").unlink()
    df = compare.load(experiment)
    loaded = df.attrs["trials"]["7"]["config"]
    assert loaded == {"lr": 0.5, "batch": 32, "model/width": 8}
    assert type(loaded["batch"]) is int and type(loaded["model/width"]) is int


def test_a_second_comparison_into_one_directory_leaves_nothing_of_the_first(tmp_path, caplog):
    """The first experiment has scheduler decisions and freezes, the second neither: its
    comparison into the same directory removes the first one's decisions.csv, freeze timeline
    and (written without HTML) report.html, with a warning, rather than leave them beside its
    own summary."""
    first = handmade(tmp_path / "one")
    second = tmp_path / "two" / "sweep"
    config = {"lr": 0.5, "model": {"width": 8}}
    results = [report("t0", config, i) for i in (1, 2)]
    for result in results:
        del result["frozen"]
    write_trial(second, "train_t0", config, results)
    out = tmp_path / "out"
    compare.compare_experiment(first, out, metric="sim")
    assert {"decisions.csv", "freeze_timeline.png", "report.html"} <= {
        p.name for p in out.iterdir()
    }
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        written = compare.compare_experiment(second, out, metric="sim", html=False)
    shown = sorted(p.name for p in out.iterdir() if p.name != ".ikkuna_compare.json")
    assert shown == sorted(p.name for p in written.files)
    for name in ("decisions.csv", "freeze_timeline.png", "report.html"):
        assert f"Removed {out / name}, written by an earlier comparison" in caplog.text
    assert set(pd.read_csv(out / "summary.csv")["trial_id"]) == {"t0"}


def test_files_no_comparison_wrote_are_never_removed(tmp_path) -> None:
    """The default output directory is the current one: a report.html or decisions.csv of the
    user's own there is left alone (only what an earlier comparison wrote is removed)."""
    experiment = tmp_path / "sweep"
    config = {"lr": 0.5, "model": {"width": 8}}
    write_trial(experiment, "train_t0", config, [report("t0", config, i) for i in (1, 2)])
    out = tmp_path / "here"
    out.mkdir()
    for name in ("report.html", "decisions.csv", "notes.txt"):
        (out / name).write_text("the user's own")
    compare.compare_experiment(experiment, out, metric="sim", html=False)
    for name in ("report.html", "decisions.csv", "notes.txt"):
        assert (out / name).read_text() == "the user's own"


def test_comparing_two_metrics_into_one_directory_keeps_both_figures(tmp_path) -> None:
    experiment = handmade(tmp_path)
    out = tmp_path / "out"
    compare.compare_experiment(experiment, out, metric="sim")
    compare.compare_experiment(experiment, out, metric="frozen")
    assert {"layers_sim.png", "layers_frozen.png"} <= {p.name for p in out.iterdir()}


def test_a_trial_nan_from_its_first_report_is_marked_in_both_renderings(tmp_path) -> None:
    # no finite value of its own to stand on: the mark stands at the panel's top; a NaN in
    # ikkuna_tune's own outputs (a damaged file) is left out, not taken as a value
    from ikkuna_tune.compare.plotly_figures import layers_figure

    experiment = tmp_path / "sweep"
    config = {"lr": 10.0, "model": {"width": 8}}
    write_trial(experiment, "train_ok", CONFIG, [report("ok", CONFIG, i) for i in (1, 2, 3)])
    bad = [report("bad", config, i) for i in (1, 2, 3)]
    for result in bad:
        result["loss"] = math.nan
    bad[1]["frozen_fraction"] = math.nan
    write_trial(experiment, "train_bad", config, bad)
    df = compare.load(experiment)
    assert not len(
        df[(df["trial_id"] == "bad") & (df["metric"] == "frozen_fraction")].query("value != value")
    )
    table = compare.summary(df, metric="loss", mode="min")  # a NaN fraction crashed it
    assert math.isnan(table.set_index("trial_id").loc["bad", "best_loss"])
    top = max(r["loss"] for r in [report("ok", CONFIG, i) for i in (1, 2, 3)])
    (png,) = [
        c
        for c in compare.plot_layers(df, metric="loss").axes[0].collections
        if c.get_gid() == "not finite"
    ]
    assert png.get_offsets().tolist()[0][0] == 1.0
    marks = [t for t in layers_figure(df, metric="loss").data if t.mode == "markers"]
    assert [(t.meta, list(t.x), list(t.y)) for t in marks] == [("bad", [1.0], [top])]


def test_config_values_with_dollar_signs_are_drawn_as_written(tmp_path) -> None:
    # matplotlib reads text between two '$' as math: '$HOME_$USER' failed to draw, '$5-$10'
    # came out in italics; trial names and layer names pass the same way
    experiment = tmp_path / "sweep"
    for index, run in enumerate(["$HOME_$USER", "$5-$10"]):
        config = {"lr": 0.1 * (index + 1), "run": run, "model": {"width": 8}}
        write_trial(experiment, f"train_t{index}", config, [report(f"t{index}", config, 1)])
    df = compare.load(experiment)
    for figure in (
        compare.plot_layers(df, metric="sim", color_by="run"),
        compare.plot_freeze_timeline(df, color_by="run"),
    ):
        figure.canvas.draw()  # where the math was parsed
        shown = [t for t in figure.findobj(Text) if t.get_visible() and "$" in t.get_text()]
        assert any("$HOME_$USER" in t.get_text() for t in shown)
        assert not [t.get_text() for t in shown if t.get_parse_math()]


def test_a_budget_below_the_iterations_a_trial_ran_is_refused(tmp_path) -> None:
    # a trial the scheduler stopped read as not stopped early, with nothing saved, and the
    # numbers looked right
    experiment = tmp_path / "sweep"
    write_trial(experiment, "train_t0", CONFIG, [report("t0", CONFIG, i) for i in (1, 2, 3)])
    df = compare.load(experiment)
    message = r"at least the iterations every trial ran but got 2, while trial t0 ran 3"
    with pytest.raises(ValueError, match=message):
        compare.summary(df, metric="loss", budget=2)
    with pytest.raises(ValueError, match=message):
        compare.plot_freeze_timeline(df, budget=2)
    assert compare.summary(df, metric="loss", budget=3)["stopped_early"].tolist() == [False]


def test_a_config_that_changes_during_a_trial_labels_each_report_with_its_own(
    tmp_path, caplog
) -> None:
    """Population-based training changes a trial's config between reports (and may rewrite
    params.json after its last report): each row carries the config its report was made with,
    as result.json records it, and a warning says the trial's config changed."""
    experiment = tmp_path / "pbt"
    lrs = [0.001, 1.0, 1.0, 0.1]
    results = [
        report("ggggg_00000", {"lr": lr, "model": {"width": 8}}, i) for i, lr in enumerate(lrs, 1)
    ]
    # a mutation after the last report: params.json names an lr the trial never trained with
    write_trial(experiment, "train_ggggg_00000_0", {"lr": 0.2, "model": {"width": 8}}, results)
    steady = {"lr": 0.5, "model": {"width": 16}}
    write_trial(experiment, "train_ggggg_00001_1", steady, [report("ggggg_00001", steady, 1)])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    loss = df[(df["metric"] == "loss") & (df["trial_id"] == "ggggg_00000")]
    assert loss["lr"].tolist() == lrs
    assert loss["model/width"].tolist() == [8] * 4
    other = df[(df["metric"] == "loss") & (df["trial_id"] == "ggggg_00001")]
    assert other["lr"].tolist() == [0.5]
    changed = [r for r in caplog.records if "config changed" in r.getMessage()]
    assert len(changed) == 1 and "ggggg_00000" in changed[0].getMessage()
    assert "'lr'" in changed[0].getMessage()


def test_a_changing_config_is_styled_by_its_last_value_as_summaries_take_it(tmp_path) -> None:
    """Plot colours and legends (trial_values) take a PBT trial's last config, as the summary
    and the warning say, not the config of its first report."""
    from ikkuna_tune.compare.frame import trial_values

    experiment = tmp_path / "pbt"
    lrs = [0.001, 1.0, 0.1]
    results = [report("hhhhh_00000", {"lr": lr}, i) for i, lr in enumerate(lrs, 1)]
    write_trial(experiment, "train_hhhhh_00000_0", {"lr": 0.1}, results)
    df = compare.load(experiment)
    assert trial_values(df, "lr") == {"hhhhh_00000": 0.1}
    assert df.attrs["trials"]["hhhhh_00000"]["config"]["lr"] == 0.1


def test_the_summary_takes_the_last_config_reported_where_params_json_lags(tmp_path) -> None:
    """Tune rewrites params.json when a trial starts: one mutated since (population-based
    training) has its last config in its reports only. The summary and ``attrs`` take that one,
    as the plots and the warning do (they took params.json's)."""
    experiment = tmp_path / "pbt"
    lrs = [0.1, 0.1, 0.05]
    results = [report("jjjjj_00000", {"lr": lr}, i) for i, lr in enumerate(lrs, 1)]
    write_trial(experiment, "train_jjjjj_00000_0", {"lr": 0.1}, results)
    df = compare.load(experiment)
    assert df.attrs["trials"]["jjjjj_00000"]["config"]["lr"] == 0.05
    assert compare.summary(df, "loss", mode="min")["lr"].tolist() == [0.05]


def test_the_last_config_is_that_of_the_last_iteration_whatever_the_row_order(tmp_path) -> None:
    from ikkuna_tune.compare.frame import trial_infos, trial_values

    experiment = tmp_path / "pbt"
    results = [report("iiiii_00000", {"lr": lr}, i) for i, lr in enumerate([0.1, 0.02], 1)]
    write_trial(experiment, "train_iiiii_00000_0", {"lr": 0.02}, results)
    df = compare.load(experiment).sort_values("training_iteration", ascending=False)
    df.attrs = {}  # a frame built elsewhere: the config comes from its rows
    assert trial_values(df, "lr") == {"iiiii_00000": 0.02}
    assert trial_infos(df)["iiiii_00000"]["config"]["lr"] == 0.02


def test_a_restored_trial_keeps_only_the_reports_of_the_run_it_ended_in(tmp_path) -> None:
    """Reports 1-3, a crash, a restore from the checkpoint of report 1, and a stop at report
    2: report 3 of the failed run is no report of the trial."""
    experiment = tmp_path / "sweep"
    results = [report("rrrrr_00000", CONFIG, i) for i in (1, 2, 3)]
    results[2]["loss"] = -5.0  # the failed run's best loss by far
    restored = report("rrrrr_00000", CONFIG, 2, done=True)
    restored["loss"] = 1.5
    write_trial(experiment, "train_rrrrr_00000_0", CONFIG, [*results, restored])
    df = compare.load(experiment)
    assert _loss(df, "rrrrr_00000") == [(1, 2.5), (2, 1.5)]
    row = compare.summary(df, metric="loss", mode="min", budget=5).iloc[0]
    assert row["iterations_run"] == 2 and row["best_loss"] == 1.5
    assert bool(row["stopped_early"]) and row["compute_saved"] == pytest.approx(0.6)


def test_attempts_tune_restarted_as_new_trials_are_left_out(tmp_path, caplog) -> None:
    # Tuner.restore(..., restart_errored=True) runs an errored trial again from scratch under
    # a new id and directory, with the same experiment tag and config; the newest experiment
    # state lists only the new one, as ResultGrid does
    experiment = tmp_path / "sweep"
    date = "2026-11-30_19-51-34"
    rows = {}
    for lr, index in ((0.1, 0), (0.3, 1)):
        config = {"lr": lr}
        tag = f"{index}_lr={lr:.4f}"
        first = f"ttttt_0000{index}"
        # errored in the first run (the first also has its error file)
        write_trial(experiment, f"train_{first}_{tag}_{date}", config,
                    [report(first, {**config}, 1)], error=index == 0)  # fmt: skip
        again = f"9ab{index}cdef"
        rows[again] = write_trial(
            experiment, f"train_{again}_{tag}_2026-11-30_19-52-00", config,
            [report(again, {**config}, i) for i in (1, 2, 3)],
        )  # fmt: skip
    # trials of an earlier run under the same name, with another config, or with the same tag
    # and config but no failure: kept, warned of
    write_trial(experiment, f"train_sssss_00000_0_lr=0.0100_{date}", {"lr": 0.01},
                [report("sssss_00000", {"lr": 0.01}, 1)])  # fmt: skip
    write_trial(experiment, "train_uuuuu_00000_0_lr=0.1000_2026-11-29_10-00-00", {"lr": 0.1},
                [report("uuuuu_00000", {"lr": 0.1}, i) for i in (1, 2)])  # fmt: skip
    # a grid point that finished in the first run: listed by both states (a restore)
    done = [report("ttttt_00002", {"lr": 1.0}, 1)]
    rows["ttttt_00002"] = write_trial(
        experiment, f"train_ttttt_00002_2_lr=1.0000_{date}", {"lr": 1.0}, done
    )

    def entry(name: str, trial_id: str, status: str) -> list[str]:
        line = {"relative_logdir": name, "trial_id": trial_id, "status": status}
        return [json.dumps(line), "{}"]

    trials = [entry(d.name, trial_id, "TERMINATED") for trial_id, d in rows.items()]
    state = experiment / "experiment_state-2026-11-30_19-52-00.json"

    def write_state(resumed: bool | None) -> None:
        runner = {} if resumed is None else {"runner_data": {"_resumed": resumed}}
        state.write_text(json.dumps({"trial_data": trials, **runner}))

    write_state(True)  # Tuner.restore(...) of the first run
    first_run = [
        entry(f"train_ttttt_00000_0_lr=0.1000_{date}", "ttttt_00000", "ERROR"),
        entry(f"train_ttttt_00001_1_lr=0.3000_{date}", "ttttt_00001", "ERROR"),
        entry(rows["ttttt_00002"].name, "ttttt_00002", "TERMINATED"),
    ]
    older = experiment / f"experiment_state-{date}.json"
    older.write_text(json.dumps({"trial_data": first_run, "runner_data": {"_resumed": False}}))
    with caplog.at_level(logging.INFO, logger="ikkuna_tune"):
        df = compare.load(experiment)
    kept = ["9ab0cdef", "9ab1cdef", "sssss_00000", "ttttt_00002", "uuuuu_00000"]
    assert sorted(df["trial_id"].unique()) == kept
    summary = compare.summary(df, "loss", mode="min").set_index("trial_id")
    assert summary.loc["9ab0cdef", "iterations_run"] == 3
    assert not summary.loc["9ab0cdef", "failed"]
    messages = [r.getMessage() for r in caplog.records]
    (left_out,) = [m for m in messages if m.startswith("Leaving out 2 trial directories")]
    assert "train_ttttt_00000_0_lr=0.1000" in left_out and "restart_errored" in left_out
    (warning,) = [m for m in messages if "experiment state" in m and "earlier run" in m]
    assert "sssss_00000" in warning and "uuuuu_00000" in warning and "ttttt" not in warning
    # a state that does not say whether it was resumed: it continues the older one, since it
    # lists a directory that one lists
    write_state(None)
    assert compare.load(experiment)["trial_id"].nunique() == 5
    # the newest state a run of its own (not resumed): nothing left out, all warned of
    for resumed in (False, None):
        write_state(resumed)
        if resumed is None:
            trials.pop()  # and no directory in common with the older state
            write_state(None)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ikkuna_tune"):
            df = compare.load(experiment)
        assert df["trial_id"].nunique() == 7
        assert not [r for r in caplog.records if r.getMessage().startswith("Leaving out")]


def test_a_users_nested_metric_whose_keys_look_like_layers_stays_network_wide(tmp_path) -> None:
    """Per-class accuracies ``{"class_acc": {"stem": ..., "other": ...}}`` beside the layers
    ``stem``, ``block.0``, ``head``: one key names a layer, another none, so the metric is the
    user's, each column network-wide under its whole name; a later call's key (``head#2``) of
    ikkuna_tune's own metric stays that layer's."""
    experiment = tmp_path / "sweep"
    config = {"lr": 0.5, "model": {"width": 8}}
    results = []
    for i in (1, 2):
        result = report("t0", config, i)
        result["class_acc"] = {"stem": 0.1 * i, "other": 0.2 * i}
        result["sim"]["head#2"] = 0.3 * i
        results.append(result)
    write_trial(experiment, "train_t0", config, results)
    frame = compare.load(experiment)
    mine = frame[frame["metric"].str.startswith("class_acc")]
    assert set(mine["metric"]) == {"class_acc/stem", "class_acc/other"}
    assert mine["layer"].isna().all()
    stem = mine[mine["metric"] == "class_acc/stem"].sort_values("training_iteration")
    assert list(stem["value"]) == pytest.approx([0.1, 0.2])
    sim = frame[frame["metric"] == "sim"]
    assert set(sim["layer"]) == {*LAYERS, "head#2"}


def _trial_reports(trial_id: str, config: dict, frozen: dict[str, int], **extra) -> list[dict]:
    rows = [report(trial_id, config, i) for i in (1, 2)]
    for row in rows:
        row["frozen"] = dict(frozen)
        row.update(extra)
    return rows


def test_a_metric_named_node_is_the_users(tmp_path) -> None:
    """Tune 2.60 writes no ``node`` field: a metric of that name is the trial's own and is
    loaded (it was taken for Tune's bookkeeping and dropped without a word)."""
    experiment = tmp_path / "sweep"
    write_trial(experiment, "train_a", CONFIG, _trial_reports("a", CONFIG, {}, node=7.0))
    df = compare.load(experiment)
    assert "node" in compare.metrics(df, per_layer=False)
    assert df[df["metric"] == "node"]["value"].tolist() == [7.0, 7.0]


def test_summary_csv_keeps_layer_names_with_spaces_apart(tmp_path) -> None:
    """Frozen layers ['enc', '1'] and ['enc 1'] (a ModuleDict key may hold a space) read back
    from summary.csv as they were: a JSON list (both were 'enc 1', joined by spaces)."""

    experiment = tmp_path / "sweep"
    apart = {"enc": 1, "1": 1, "enc 1": 0}
    together = {"enc": 0, "1": 0, "enc 1": 1}
    write_trial(experiment, "train_a", CONFIG, _trial_reports("a", CONFIG, apart))
    write_trial(experiment, "train_b", CONFIG, _trial_reports("b", CONFIG, together))
    df = compare.load(experiment)
    out = tmp_path / "out"
    compare.write_report(df, out, metric="frozen", color_by=None, summary_metric="loss", html=False)
    written = pd.read_csv(out / "summary.csv").set_index("trial_id")
    got = {t: sorted(json.loads(v)) for t, v in written["frozen_layers"].items()}
    assert got == {"a": ["1", "enc"], "b": ["enc 1"]}


def test_mode_min_without_a_summary_metric_is_refused_where_accuracy_is_the_default(
    tmp_path,
) -> None:
    """``mode='min'`` (``--mode min``) with no summary metric: the default, test_accuracy, has
    its best at its highest, so ranking it lowest-first showed each trial's worst accuracy as
    its best; refused, naming the remedy."""
    experiment = tmp_path / "sweep"
    write_trial(experiment, "train_a", CONFIG, _trial_reports("a", CONFIG, {}, test_accuracy=0.5))
    df = compare.load(experiment)
    with pytest.raises(ValueError, match=r"summary metric to go with mode='min'.*--summary-metric"):
        compare.write_report(df, tmp_path / "out", metric="sim", mode="min", html=False)
    files = compare.write_report(
        df, tmp_path / "ok", metric="sim", mode="min", summary_metric="loss", html=False
    )
    assert (tmp_path / "ok" / "summary.csv") in files


def test_compute_saved_weighs_each_report_by_its_training_steps(tmp_path) -> None:
    """Two reports per epoch (4 epochs of 4 steps), the second of each after an evaluation,
    with no step since: fc1 and fc2 (0.8853 of the parameters) frozen in the last epoch's 4
    steps of 16 skipped 0.8853 * 4 / 16 of the work, by a count of steps by hand. Without
    ``train_steps`` every report counted as a unit of work, and the step-less reports that
    carried the fraction frozen then made it (0.8853 * 3) / 8 = 0.332."""
    experiment = tmp_path / "sweep"
    fractions = [0.0, 0.0, 0.0, 0.0, 0.0, 0.8853, 0.8853, 0.8853]
    steps = [4, 0, 4, 0, 4, 0, 4, 0]
    rows = []
    for i, (fraction, count) in enumerate(zip(fractions, steps), 1):
        row = report("a", CONFIG, i)
        row.update(frozen_fraction=fraction, train_steps=count)
        rows.append(row)
    write_trial(experiment, "train_a", CONFIG, rows)
    table = compare.summary(compare.load(experiment)).set_index("trial_id")
    by_hand = sum(f * s for f, s in zip(fractions, steps)) / sum(steps)
    assert table.loc["a", "compute_saved"] == round(by_hand, 3) == 0.221
    for row in rows:  # reports without the count: each iteration a unit, as before
        del row["train_steps"]
    older = tmp_path / "older"
    write_trial(older, "train_a", CONFIG, rows)
    table = compare.summary(compare.load(older)).set_index("trial_id")
    assert table.loc["a", "compute_saved"] == round(0.8853 * 3 / 8, 3)


def test_write_report_refuses_an_out_dir_or_flags_of_the_wrong_type(tmp_path) -> None:
    """``html='no'`` was taken as true (report.html written), ``out_dir=None`` raised pathlib's
    own TypeError: each refused, naming the argument."""
    experiment = tmp_path / "sweep"
    write_trial(experiment, "train_a", CONFIG, [report("a", CONFIG, i) for i in (1, 2)])
    df = compare.load(experiment)
    with pytest.raises(ValueError, match=r"`html` to be True or False but got 'no'"):
        compare.write_report(df, tmp_path / "out", metric="sim", html="no")
    with pytest.raises(ValueError, match=r"`sharey` to be True or False but got 1"):
        compare.write_report(df, tmp_path / "out", metric="sim", sharey=1)
    with pytest.raises(ValueError, match=r"`out_dir` to be a path .* but got NoneType"):
        compare.write_report(df, None, metric="sim")


def test_a_parameter_set_to_none_is_labelled_none_not_missing(tmp_path) -> None:
    """``max_grad_norm=None`` (no limit) is a value of the config; a trial whose config lacks
    the key is the one that reads "(missing)"."""
    from ikkuna_tune.compare.frame import trial_label, trial_values
    from ikkuna_tune.compare.plotly_figures import _config_lines

    result = {"training_iteration": 1, "loss": 0.5, "trial_id": "x"}
    write_trial(tmp_path, "t_a_00000", {"lr": 0.1, "clip": None}, [{**result, "trial_id": "a"}])
    write_trial(tmp_path, "t_b_00001", {"lr": 0.2, "clip": 1.0}, [{**result, "trial_id": "b"}])
    write_trial(tmp_path, "t_c_00002", {"lr": 0.3}, [{**result, "trial_id": "c"}])
    df = compare.load(tmp_path)
    values = trial_values(df, "clip")
    assert values == {"a": "None", "b": 1.0, "c": None}
    assert trial_label("a", "clip", values["a"]) == "a (clip=None)"
    assert trial_label("c", "clip", values["c"]) == "c (clip=(missing))"
    assert _config_lines({"clip": None, "lr": 0.1}) == "clip=None<br>lr=0.1"


def test_a_layer_named_like_a_call_of_no_layer_is_a_layer_of_its_own() -> None:
    # a ModuleDict key 'a#2' with no layer 'a': its metrics are per-layer ones (read as calls
    # of a layer 'a' that does not exist, every per-layer metric became network-wide)
    from ikkuna_tune.compare.loading import _per_layer_metrics

    columns = [["frozen/d.a#2", "frozen/d.b", "sim/d.a#2", "sim/d.b", "val/acc"]]
    assert _per_layer_metrics(columns, {"d.a#2", "d.b"}) == {"frozen", "sim"}


def test_reports_of_one_iteration_merge_within_a_run_and_a_restore_still_replaces(
    tmp_path, caplog
) -> None:
    """Tune's ``iterations_since_restore`` tells a restore (it starts again) from a trainable
    that reports one ``training_iteration`` twice (it goes on): the rows of one run merge, the
    later report's values first (a value replaced is warned of), and a restore's rows still
    replace the failed run's from their iteration on."""
    experiment = tmp_path / "sweep"
    rows = []
    for since, (iteration, loss, acc) in enumerate(
        [(1, 2.0, None), (1, None, 0.1), (2, 1.0, None), (2, 0.9, 0.2), (3, -5.0, None)], 1
    ):
        row = report("mmmmm_00000", CONFIG, iteration)
        row.pop("loss")
        row.update({"iterations_since_restore": since})
        row.update({k: v for k, v in (("loss", loss), ("acc", acc)) if v is not None})
        rows.append(row)
    restored = report("mmmmm_00000", CONFIG, 3)  # restored from iteration 2's checkpoint
    restored.update({"iterations_since_restore": 1, "loss": 0.5, "acc": 0.4})
    write_trial(experiment, "train_mmmmm_00000_0", CONFIG, [*rows, restored])
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert _loss(df, "mmmmm_00000") == [(1, 2.0), (2, 0.9), (3, 0.5)]
    acc = df[df["metric"] == "acc"].set_index("training_iteration")["value"].to_dict()
    assert acc == {1: 0.1, 2: 0.2, 3: 0.4}
    assert df.attrs["trials"]["mmmmm_00000"]["results"] == 3
    assert "mmmmm_00000 reported ['loss'] twice for one training_iteration" in caplog.text


def test_a_nan_reported_in_either_report_of_one_iteration_is_kept(tmp_path) -> None:
    """Merging two reports of one iteration within a run keeps a NaN either reported: a loss
    that went NaN in the first report (the second reports the validation) is the
    iteration's, and a NaN in the later report is not filled with the earlier finite value
    (both lost it: the internal record of reported NaNs was merged as a value). Reference:
    the values written in result.json."""
    experiment = tmp_path / "sweep"
    rows = []
    for since, (iteration, values) in enumerate(
        [
            (1, {"loss": 0.7}),
            (1, {"acc": 0.5}),
            (2, {"loss": float("nan")}),
            (2, {"acc": 0.1}),
            (3, {"loss": 0.4, "acc": 0.2}),
            (3, {"loss": float("nan"), "acc": 0.3}),
        ],
        1,
    ):
        row = report("nnnnn_00000", CONFIG, iteration)
        row.pop("loss")
        rows.append({**row, "iterations_since_restore": since, **values})
    write_trial(experiment, "train_nnnnn_00000_0", CONFIG, rows)
    df = compare.load(experiment)
    loss = df[df["metric"] == "loss"].set_index("training_iteration")["value"]
    assert loss[1] == 0.7 and math.isnan(loss[2]) and math.isnan(loss[3])
    acc = df[df["metric"] == "acc"].set_index("training_iteration")["value"].to_dict()
    assert acc == {1: 0.5, 2: 0.1, 3: 0.3}
