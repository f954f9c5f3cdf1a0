"""demo_log: the trial to highlight, and the per-layer tables the README reads, on a
hand-written experiment."""

from __future__ import annotations

from experiments.demo_log import most_frozen, print_layer_tables
from ikkuna_tune import compare
from tests.experiment_files import handmade


def test_the_trial_that_froze_most_is_highlighted(tmp_path) -> None:
    decisions = compare.decisions(compare.load(handmade(tmp_path)))
    assert set(decisions["action"]) == {"freeze", "stop"}
    assert most_frozen(decisions) == "aaaaa_00000"  # the only one with a freeze
    assert most_frozen(decisions[decisions["action"] == "stop"]) is None


def test_layer_tables_give_each_trial_and_the_minimum_over_trials(tmp_path, capsys) -> None:
    print_layer_tables(handmade(tmp_path), metric="sim")
    text = capsys.readouterr().out
    for layer in ("stem", "block.0", "head"):
        assert f"# sim/{layer} per trial (rows: training_iteration)" in text
    # block.0 reports 0.8 * lr: its minimum over the trials (lr 0.01, 0.1, 1.0) is lr 0.01's
    block = text.split("# sim/block.0")[1].split("# min over trials per iteration: ")[1]
    assert block.splitlines()[0] == "{1: 0.008, 2: 0.008, 3: 0.008, 4: 0.008}"
