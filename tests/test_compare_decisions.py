"""The scheduler's decisions in the comparison: ``ikkuna_decisions.jsonl`` and ``freeze_reason``.

Hand-written experiment files (no Ray); see tests/experiment_files.py.
"""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from ikkuna_tune import compare
from ikkuna_tune.tune.convergence import Decision
from tests.experiment_files import (
    DECISIONS_FILE,
    FREEZE_STEM,
    FREEZE_STEM_REASON,
    STOP_STUCK,
    handmade,
    report,
    write_decisions,
    write_trial,
)

COLUMNS = [
    "trial_id",
    "iteration",
    "action",
    "layer",
    "rule",
    "values",
    "in_force",
    "carried_out",
]
FREEZE_VALUES = "similarity=0.995, distance_from_init=0.12, live_fraction=1, metric_gain=0"
FREEZE_ROW = {
    "trial_id": "aaaaa_00000",
    "iteration": 2,
    "action": "freeze",
    "layer": "stem",
    "rule": "converged",
    "values": FREEZE_VALUES,
    "in_force": True,
    "carried_out": True,  # stem is reported frozen from report 3
}
STOP_ROW = {
    "trial_id": "aaaaa_00001",
    "iteration": 2,
    "action": "stop",
    "layer": None,
    "rule": "stuck: no progress and no layer moving",
    "values": "progress=0.004",
    "in_force": True,
    "carried_out": None,  # (a stop)
}


def test_the_fake_files_are_what_the_scheduler_writes() -> None:
    freeze = Decision(**FREEZE_STEM)
    assert freeze.as_dict() == FREEZE_STEM and Decision(**STOP_STUCK).as_dict() == STOP_STUCK
    assert freeze.describe() == FREEZE_STEM_REASON
    assert compare.DECISIONS_FILE == DECISIONS_FILE


def test_decisions_file_constant_matches_the_scheduler() -> None:
    pytest.importorskip("ray.tune")
    from ikkuna_tune.tune.scheduler import DECISIONS_FILE as SCHEDULERS

    assert compare.DECISIONS_FILE == SCHEDULERS


@pytest.fixture
def experiment(tmp_path):
    return handmade(tmp_path)


def test_decisions_table(experiment) -> None:
    table = compare.decisions(compare.load(experiment))
    assert list(table.columns) == COLUMNS
    assert table.to_dict("records") == [FREEZE_ROW, STOP_ROW]
    assert str(table["iteration"].dtype) == "Int64"


def test_summary_says_why_layers_froze_and_trials_stopped(experiment) -> None:
    table = compare.summary(compare.load(experiment), metric="loss", mode="min")
    columns = list(table.columns)
    assert columns[columns.index("stopped_early") :] == [
        "stopped_early",
        "stopped_by",
        "frozen_layers",
        "freeze_reasons",
        "frozen_fraction",
        "compute_saved",
    ]
    table = table.set_index("trial_id")
    assert table["stopped_by"].tolist() == [
        None,
        "stuck: no progress and no layer moving at report 2 (progress=0.004)",
        None,
    ]
    assert table["freeze_reasons"].tolist() == [
        {"stem": f"converged at report 2 ({FREEZE_VALUES})"},
        {},
        {},
    ]


def test_freeze_reasons_from_the_results_when_there_is_no_decisions_file(experiment) -> None:
    (experiment / "train_aaaaa_00000_0_lr=0.01" / DECISIONS_FILE).unlink()
    config = {"lr": 0.5, "model": {"width": 8}}
    results = [
        report("bbbbb_00000", config, 1),
        report("bbbbb_00000", config, 2, ("stem", "block.0"), reasons={"stem": "by hand"}),
    ]
    write_trial(experiment, "train_bbbbb_00000_3", config, results)
    df = compare.load(experiment)
    table = compare.decisions(df)
    assert table.to_dict("records") == [
        FREEZE_ROW,  # the same row, read from freeze_reason/stem
        STOP_ROW,
        {  # not the scheduler's format: the reason as reported, report unknown
            "trial_id": "bbbbb_00000",
            "iteration": None,  # <NA> in the table
            "action": "freeze",
            "layer": "stem",
            "rule": "by hand",
            "values": "",
            "in_force": True,
            "carried_out": True,  # a reason is reported for a layer held frozen
        },
    ]
    summary = compare.summary(df).set_index("trial_id")
    assert summary.loc["aaaaa_00000", "freeze_reasons"] == {
        "stem": f"converged at report 2 ({FREEZE_VALUES})"
    }
    assert summary.loc["bbbbb_00000", "freeze_reasons"] == {"stem": "by hand"}
    assert summary.loc["bbbbb_00000", "frozen_layers"] == ["stem", "block.0"]


def test_repeated_decisions_and_damaged_lines(experiment, caplog) -> None:
    trial = experiment / "train_aaaaa_00002_2_lr=1.0"
    dead = {"action": "stop", "rule": "dead layer", "iteration": 3, "layer": "head"}
    path = write_decisions(
        trial,
        "aaaaa_00002",
        [
            {**FREEZE_STEM, "iteration": 1, "values": {"similarity": math.nan}},
            {**FREEZE_STEM, "values": {}},  # again after a restore: this one holds
            {**dead, "values": {"live_fraction": 0}},
        ],
    )
    with path.open("ab") as out:
        out.write(b'{"action": "stop", "rule": "\xff"}\n{"no": "action"}\n{"action": "sto')
    blocked = experiment / "train_aaaaa_00001_1_lr=0.1" / DECISIONS_FILE
    blocked.unlink()
    blocked.mkdir()
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert f"Skipping unreadable lines 4, 5, 6 of {path}" in caplog.text
    assert f"Cannot read {blocked}" in caplog.text
    rows = compare.decisions(df)
    rows = rows[rows["trial_id"] == "aaaaa_00002"].to_dict("records")
    assert rows == [
        {
            **FREEZE_ROW,
            "trial_id": "aaaaa_00002",
            "iteration": 1,
            "values": "similarity=nan",
            "in_force": False,  # replaced by the freeze after the restore
            "carried_out": None,  # ordered again: not told apart from one the run left
        },
        {
            **FREEZE_ROW,
            "trial_id": "aaaaa_00002",
            "values": "",
            # the trial's flags have stem trainable at report 3, after the order: it did not
            # carry it out, and did not end under it
            "in_force": False,
            "carried_out": False,
        },
        {
            "trial_id": "aaaaa_00002",
            "iteration": 3,
            "action": "stop",
            "layer": "head",
            "rule": "dead layer",
            "values": "live_fraction=0",
            "in_force": True,
            "carried_out": None,
        },
    ]
    row = compare.summary(df).set_index("trial_id").loc["aaaaa_00002"]
    assert row["stopped_by"] == "dead layer head at report 3 (live_fraction=0)"
    assert row["freeze_reasons"] == {}  # stem ended trainable: no freeze held


def test_no_decisions() -> None:
    rows = [("a", 1, "acc", None, 0.5)]
    df = pd.DataFrame(rows, columns=["trial_id", "training_iteration", "metric", "layer", "value"])
    table = compare.decisions(df)
    assert list(table.columns) == COLUMNS and not len(table)
    row = compare.summary(df).iloc[0]
    assert row["stopped_by"] is None and row["freeze_reasons"] == {}


def test_write_report_writes_the_decisions(experiment, tmp_path) -> None:
    out = tmp_path / "out"
    comparison = compare.compare_experiment(experiment, out, metric="sim", color_by=None)
    assert comparison.decisions.to_dict("records") == [FREEZE_ROW, STOP_ROW]
    assert [p.name for p in comparison.files] == [
        "layers_sim.png",
        "freeze_timeline.png",
        "summary.csv",
        "decisions.csv",
        "report.html",
    ]
    written = pd.read_csv(out / "decisions.csv")
    assert written.columns.tolist() == COLUMNS
    assert written["values"].tolist() == [FREEZE_VALUES, "progress=0.004"]
    assert written["in_force"].tolist() == [True, True]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["freeze_reasons"].fillna("").tolist() == [
        f"stem: converged at report 2 ({FREEZE_VALUES})",
        "",
        "",
    ]
    assert summary["stopped_by"].fillna("").tolist() == [
        "",
        "stuck: no progress and no layer moving at report 2 (progress=0.004)",
        "",
    ]
    plain = tmp_path / "plain"
    config = {"lr": 0.1}
    write_trial(plain / "sweep", "train_t0", config, [report("t0", config, 1, ("stem",))])
    files = compare.write_report(compare.load(plain / "sweep"), plain, metric="sim", html=False)
    assert [p.name for p in files] == ["layers_sim.png", "freeze_timeline.png", "summary.csv"]


def _restored_trial(root, later_reasons):
    """A trial that froze 'stem' at report 4 of a run it then left (restored from the checkpoint
    of report 2) and whose new run ends with ``later_reasons`` per report 3..6."""
    config = {"lr": 0.1, "model": {"width": 8}}
    abandoned = {**FREEZE_STEM, "iteration": 4, "values": {"similarity": 0.111}}
    kept = {**FREEZE_STEM, "iteration": 3, "values": {"similarity": 0.999}}
    results = [report("ccccc_00000", config, i, reasons={"stem": ""}) for i in (1, 2, 3, 4)]
    results.append(
        report(
            "ccccc_00000", config, 5, ("stem",), reasons={"stem": Decision(**abandoned).describe()}
        )
    )
    for i in (3, 4, 5, 6):  # the new run after the restore
        reason = later_reasons(i, Decision(**kept).describe())
        frozen = ("stem",) if reason else ()
        results.append(report("ccccc_00000", config, i, frozen, reasons={"stem": reason}))
    experiment = root / "restored"
    trial = write_trial(experiment, "train_ccccc_00000_0_lr=0.1", config, results)
    write_decisions(
        trial, "ccccc_00000", [abandoned, kept] if later_reasons(6, "x") else [abandoned]
    )
    return experiment


def test_the_summary_gives_the_reason_of_the_run_the_results_come_from(tmp_path) -> None:
    # the file holds the left run's freeze (report 4) and the new run's (report 3): the summary
    # gives the one the trial's last report names, not the one of the highest report
    experiment = _restored_trial(tmp_path, lambda i, reason: reason if i >= 4 else "")
    df = compare.load(experiment)
    row = compare.summary(df, "loss", mode="min").iloc[0]
    assert row["frozen_layers"] == ["stem"]
    assert row["freeze_reasons"] == {"stem": "converged at report 3 (similarity=0.999)"}
    assert len(compare.decisions(df)) == 2  # the log keeps both decisions


def test_a_freeze_the_new_run_never_made_is_no_reason_in_the_summary(tmp_path) -> None:
    experiment = _restored_trial(tmp_path, lambda i, reason: "")
    df = compare.load(experiment)
    row = compare.summary(df, "loss", mode="min").iloc[0]
    assert row["frozen_layers"] == [] and row["freeze_reasons"] == {}
    assert compare.decisions(df)["iteration"].tolist() == [4]


def test_a_freeze_ordered_at_the_last_report_is_in_the_summary(tmp_path) -> None:
    config = {"lr": 0.1, "model": {"width": 8}}
    results = [report("ddddd_00000", config, i, reasons={"stem": ""}) for i in (1, 2, 3)]
    trial = write_trial(tmp_path / "sweep", "train_ddddd_00000_0_lr=0.1", config, results)
    write_decisions(trial, "ddddd_00000", [{**FREEZE_STEM, "iteration": 3}])
    row = compare.summary(compare.load(tmp_path / "sweep"), "loss", mode="min").iloc[0]
    assert row["frozen_layers"] == []  # ordered at report 3: frozen from report 4 on
    assert row["freeze_reasons"] == {"stem": f"converged at report 3 ({FREEZE_VALUES})"}


def test_a_freeze_ordered_at_a_report_the_new_run_never_reached_is_not_in_force(tmp_path) -> None:
    # the left run ordered 'stem' frozen at report 5; restored from report 2, the trial ended
    # (failed) at report 4: report 5 is of the run it left
    config = {"lr": 0.1, "model": {"width": 8}}
    results = [report("eeeee_00000", config, i, reasons={"stem": ""}) for i in (1, 2, 3, 4, 5)]
    results += [report("eeeee_00000", config, i, reasons={"stem": ""}) for i in (3, 4)]
    trial = write_trial(tmp_path / "sweep", "train_eeeee_00000_0_lr=0.1", config, results)
    write_decisions(trial, "eeeee_00000", [{**FREEZE_STEM, "iteration": 5}])
    row = compare.summary(compare.load(tmp_path / "sweep"), "loss", mode="min").iloc[0]
    assert row["iterations_run"] == 4
    assert row["frozen_layers"] == [] and row["freeze_reasons"] == {}
    made = compare.decisions(compare.load(tmp_path / "sweep"))
    assert made[["iteration", "in_force"]].values.tolist() == [[5, False]]  # kept, marked


def test_the_timeline_shows_a_refrozen_layer_from_its_last_freeze_and_reason_in_force() -> None:
    """A layer frozen at 2, unfrozen at 3 (its learning rate changed), frozen again from 4:
    the marker is at 4 with the freeze in force at the end, not the first freeze's reason
    nor that of a later freeze that never held."""
    from ikkuna_tune.compare.frame import TIDY_COLUMNS

    flags = [0, 1, 0, 1, 1]
    rows = [("a", i + 1, "frozen", "stem", float(f)) for i, f in enumerate(flags)]
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)

    def row(it: int, action: str, rule: str, value: float, in_force: bool) -> dict:
        return {"trial_id": "a", "iteration": it, "action": action, "layer": "stem",
                "rule": rule, "values": {"similarity": value}, "in_force": in_force}  # fmt: skip

    df.attrs["decisions"] = [
        row(1, "freeze", "converged", 0.995, False),
        row(3, "unfreeze", "learning rate changed", 0.0, False),
        row(3, "freeze", "converged", 0.998, True),
        row(4, "freeze", "converged", 0.5, False),
    ]
    assert compare.freeze_iterations(df) == {"a": {"stem": 4}}
    (stem,) = [t for t in compare.timeline_figure(df).data if t.name == "stem"]
    assert list(stem.x) == [4]
    assert "stem frozen from iteration 4" in stem.hovertemplate
    assert "converged at report 3 (similarity=0.998)" in stem.hovertemplate


UNFREEZE_STEM = {
    "action": "unfreeze",
    "rule": "learning rate changed",
    "iteration": 4,
    "layer": "stem",
    "values": {"lr_scale": 0.1},
}


@pytest.mark.parametrize(
    ("refrozen", "with_reasons", "expected"),
    [
        (False, True, [[2, "freeze", False], [4, "unfreeze", True]]),
        (True, True, [[2, "freeze", False], [4, "unfreeze", False], [5, "freeze", True]]),
        (False, False, [[2, "freeze", False], [4, "unfreeze", True]]),
    ],
)
def test_an_unfreeze_the_trial_ended_under_is_in_force(
    tmp_path, refrozen, with_reasons, expected
) -> None:
    """'stem' frozen at report 2 and released at report 4 (its learning rate dropped): a trial
    that ends with it trainable ended under the unfreeze (every row read not in force, so no
    row said why the layer trained at the end); frozen again at 5, the new freeze is; without
    reasons in the results, the last written change holds."""
    config = {"lr": 0.1, "model": {"width": 8}}
    frozen_at = {3, 6} if refrozen else {3}  # frozen/stem from the report after each order
    described = {i: Decision(**{**FREEZE_STEM, "iteration": i}).describe() for i in (2, 5)}
    results = []
    for i in range(1, 7):
        frozen = ("stem",) if i in frozen_at else ()
        reason = described[2 if i < 5 else 5] if frozen else ""
        reasons = {"stem": reason} if with_reasons else None
        results.append(report("fffff_00000", config, i, frozen, reasons=reasons))
    trial = write_trial(tmp_path / "sweep", "train_fffff_00000_0_lr=0.1", config, results)
    written = [FREEZE_STEM, UNFREEZE_STEM] + ([{**FREEZE_STEM, "iteration": 5}] if refrozen else [])
    write_decisions(trial, "fffff_00000", written)
    made = compare.decisions(compare.load(tmp_path / "sweep"))
    assert made[["iteration", "action", "in_force"]].values.tolist() == expected


def test_an_unfreeze_made_in_a_run_the_trial_left_is_not_in_force(tmp_path) -> None:
    """The run a trial left froze 'stem' at report 2 and released it at 4; restored from the
    checkpoint of report 1, its new run (reports 2-6) never froze 'stem': the trial ended
    trainable, but not under that unfreeze (it was read in force)."""
    config = {"lr": 0.1, "model": {"width": 8}}
    freeze = {**FREEZE_STEM, "iteration": 2}
    results = []
    for i in (1, 2, 3, 4, 5):  # the run it left: frozen at report 3, released during 4
        frozen = ("stem",) if i == 3 else ()
        reason = Decision(**freeze).describe() if frozen else ""
        results.append(report("ggggg_00000", config, i, frozen, reasons={"stem": reason}))
    results += [report("ggggg_00000", config, i, (), reasons={"stem": ""}) for i in range(2, 7)]
    trial = write_trial(tmp_path / "sweep", "train_ggggg_00000_0_lr=0.1", config, results)
    write_decisions(trial, "ggggg_00000", [freeze, UNFREEZE_STEM])
    made = compare.decisions(compare.load(tmp_path / "sweep"))
    assert made[["iteration", "action", "in_force"]].values.tolist() == [
        [2, "freeze", False],
        [4, "unfreeze", False],
    ]


def test_a_freeze_released_before_a_report_showed_it_was_carried_out(experiment) -> None:
    """A trial whose learning rate had already moved released the freeze at its first step:
    no report shows the layer frozen, but the release (only of a layer held frozen) says the
    freeze was carried out (it read False, "refused")."""
    release = {
        "action": "unfreeze",
        "rule": "learning rate changed",
        "iteration": 3,
        "layer": "stem",
        "values": {"lr_ratio": 0.1},
    }
    write_decisions(
        experiment / "train_aaaaa_00002_2_lr=1.0", "aaaaa_00002", [FREEZE_STEM, release]
    )
    rows = compare.decisions(compare.load(experiment))
    rows = rows[rows["trial_id"] == "aaaaa_00002"].to_dict("records")
    assert [(r["action"], r["carried_out"]) for r in rows] == [
        ("freeze", True),
        ("unfreeze", None),
    ]


def test_a_recorded_stop_marks_the_trial_in_the_summary_the_panels_and_the_timeline(
    tmp_path,
) -> None:
    """A trial the scheduler recorded a stop of, whose results never say ``done`` (HyperBand
    stopped it while paused): the summary, the layer panels and the freeze timeline all mark
    it stopped early (the panels and the timeline did not: the report's figures showed it
    as having run its course)."""
    from ikkuna_tune.compare.panels import layer_panels
    from ikkuna_tune.compare.timeline import timeline_data

    experiment = tmp_path / "sweep"
    config0 = {"lr": 0.01, "model": {"width": 8}}
    write_trial(
        experiment,
        "train_aaaaa_00000_0_lr=0.01",
        config0,
        [report("aaaaa_00000", config0, i, ("stem",)) for i in (1, 2, 3, 4)],
    )
    config1 = {"lr": 0.1, "model": {"width": 16}}
    paused = write_trial(
        experiment,
        "train_aaaaa_00001_1_lr=0.1",
        config1,
        [report("aaaaa_00001", config1, i) for i in (1, 2)],  # no result says done
    )
    write_decisions(paused, "aaaaa_00001", [STOP_STUCK])
    df = compare.load(experiment)
    expected = {"aaaaa_00000": False, "aaaaa_00001": True}
    table = compare.summary(df, metric="loss", mode="min").set_index("trial_id")
    assert table["stopped_early"].to_dict() == expected
    assert layer_panels(df, "sim", None, None, None, 4, "viridis").early == expected
    assert timeline_data(df, None, None).early == expected
