"""ikkuna_tune.examples.demo: the trainable's ``train_seconds``, and the demo's clear error
without the examples extra (the demo sweep itself runs, as the README shows it, in
tests/tune/test_demo_readme.py; its data loading is tested in tests/examples/test_data.py)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch

from ikkuna_tune.examples import demo


class _FakeClock:
    """A ``time`` stand-in whose ``perf_counter`` moves only when the test says so: each kind of
    work advances it by its own, known amount, so what a trainable counts is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[tuple[str, float]] = []

    def perf_counter(self) -> float:
        return self.now

    def advance(self, kind: str, seconds: float) -> None:
        self.now += seconds
        self.log.append((kind, seconds))

    def spent(self, *kinds: str) -> float:
        return sum(seconds for kind, seconds in self.log if kind in kinds)


class _Module:
    """A module with some functions replaced (every other attribute is the module's own)."""

    def __init__(self, module: ModuleType, **overrides: Callable[..., Any]) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _timed(clock: _FakeClock, kind: str, seconds: float, fn: Callable[..., Any]) -> Callable:
    def timed(*args: Any, **kwargs: Any) -> Any:
        clock.advance(kind, seconds)
        return fn(*args, **kwargs)

    return timed


#: fake seconds each kind of work takes: set-up and reporting dwarf the epochs' work
SETUP, REPORT, STEP, EPOCH_END = 1000.0, 100000.0, 1.0, 10.0


def _fidelity_trial() -> tuple[ModuleType, Callable, Callable, dict[str, Any], list[str]]:
    from experiments import fidelity_trial

    config = {"family": "mlp", "data": "digits", "lr": 0.05, "epochs": 3, "batch_size": 256}
    return (
        fidelity_trial,
        fidelity_trial.train_trial,
        fidelity_trial.subscribers,
        config,
        ["load", "build_model"],
    )


def _demo() -> tuple[ModuleType, Callable, Callable, dict[str, Any], list[str]]:
    config = {"lr": 0.05, "width": 4, "epochs": 3, "data": "digits", "batch_size": 256}
    return demo, demo.train_cnn, demo.demo_subscribers, config, ["load_dataset", "SmallCNN"]


@pytest.mark.parametrize("which", [_demo, _fidelity_trial], ids=["demo", "fidelity_trial"])
def test_train_seconds_count_the_epochs_only(which, monkeypatch) -> None:
    """``train_seconds`` (behind every compute ratio) is the time in the epochs: training steps
    and the subscribers' epoch-end work, not loading data, building the model, creating and
    attaching the subscribers or reporting. A fake clock that only those pieces of work move
    makes every second accounted for exactly."""
    import ikkuna_tune as ik
    from ikkuna_tune.exporter import Exporter

    module, train, make_subscribers, config, setup_functions = which()
    clock = _FakeClock()
    monkeypatch.setattr(module, "time", clock)
    # set-up: data, model, subscribers, watch; then reporting
    for name in setup_functions:
        monkeypatch.setattr(module, name, _timed(clock, "setup", SETUP, getattr(module, name)))
    monkeypatch.setattr(ik, "watch", _timed(clock, "setup", SETUP, ik.watch))
    monkeypatch.setattr(ik, "report", _timed(clock, "report", REPORT, ik.report))
    # the epochs: each training step's loss, and the subscribers' work at every epoch end
    loss = _timed(clock, "step", STEP, torch.nn.functional.cross_entropy)
    monkeypatch.setattr(module, "F", _Module(torch.nn.functional, cross_entropy=loss))
    monkeypatch.setattr(
        Exporter, "epoch_finished", _timed(clock, "epoch_end", EPOCH_END, Exporter.epoch_finished)
    )
    trainable = ik.instrument(train, _timed(clock, "setup", SETUP, make_subscribers))

    trainable(config)

    reports = ik.local_results()
    assert [r["epoch"] for r in reports] == [0, 1, 2]
    # what the epochs took, by the clock's own log: every step and epoch end up to each report
    expected, in_epochs = [], 0.0
    for kind, seconds in clock.log:
        if kind in ("step", "epoch_end"):
            in_epochs += seconds
        if kind == "report":
            expected.append(in_epochs)
    steps_per_epoch = math.ceil(1500 / 256)  # 1,500 training digits in batches of 256
    assert expected == [(e + 1) * (steps_per_epoch * STEP + EPOCH_END) for e in range(3)]
    assert [r["train_seconds"] for r in reports] == expected
    # the run did spend the set-up and reporting time, far more than the epochs took, and
    # none of it counted
    assert clock.spent("setup") >= 5 * SETUP and clock.spent("report") == 3 * REPORT
    assert clock.now == clock.spent("setup", "report", "step", "epoch_end")
    assert 0.0 <= reports[-1]["test_accuracy"] <= 1.0


def test_the_demo_without_the_examples_extra_says_what_to_install(tmp_path, monkeypatch) -> None:
    import ray

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails even if installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(ImportError, match=re.escape('pip install "ikkuna_tune[examples]"')):
        demo.run_demo(quick=True, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # it stopped before doing anything
