"""Arguments checked where they enter take NumPy's numbers as Python's (a sweep's values from
``tune.grid_search(np.arange(...))``) and refuse NumPy's bools as Python's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ikkuna_tune as ik
from ikkuna_tune.checks import check_fraction, check_int, check_int_or_epoch


def test_numpy_numbers_are_taken_as_python_ones() -> None:
    assert type(check_int("n", np.int64(8))) is int
    assert type(check_int_or_epoch("frequency", np.int32(5))) is int
    assert check_fraction("freeze_at", np.float32(0.5)) == 0.5
    subscriber = ik.SVCCASubscriber(torch.randn(16, 4), np.int64(8), backend=None)
    assert type(subscriber.batch_size) is int
    scheduler = ik.SVCCAScheduler(patience=np.int64(3), freeze_at=np.float32(0.95))
    # the rules reach the decision log as JSON: NumPy's integers would not serialise
    json.dumps({"patience": scheduler.rules.patience, "freeze_at": scheduler.rules.freeze_at})


@pytest.mark.parametrize("value", [np.bool_(True), True, 2.0, "3"])
def test_bools_floats_and_strings_are_no_integers(value: object) -> None:
    with pytest.raises(ValueError, match="to be an integer >= 1 but got"):
        check_int("patience", value)


def test_inputs_of_the_wrong_shape_are_refused_where_they_enter(tmp_path) -> None:
    from torch import nn

    from ikkuna_tune import compare

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1)) as exporter:
        with pytest.raises(ValueError, match=r"Expected a layer name \(a str; one call per"):
            exporter.freeze(["0"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="got the watched model or one of its layers"):
            exporter.wrap_loss(model)
        with pytest.raises(ValueError, match="got the watched model or one of its layers"):
            exporter.wrap_loss(model[2])
        exporter.wrap_loss(nn.CrossEntropyLoss())
    # a loss the model keeps as a module of its own is no layer: wrapped
    model.criterion = nn.CrossEntropyLoss()
    with ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1)) as exporter:
        exporter.wrap_loss(model.criterion)
    with pytest.raises(ValueError, match="Expected `subscribers` to be a list of subscribers"):
        ik.instrument(lambda config: None, {"norm": ik.NormSubscriber("weights", backend=None)})
    with pytest.raises(ValueError, match="Expected `frozen_fractions` to be a sequence"):
        compare.compute_saved(0.5, 2)  # type: ignore[arg-type]
    import pandas as pd

    rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
    df = pd.DataFrame(
        rows, columns=["trial_id", "lr", "training_iteration", "metric", "layer", "value"]
    )
    assert compare.metrics(df, per_layer=False) == ["loss"]
    with pytest.raises(
        ValueError, match="Expected `per_layer` to be True or False but got 'False'"
    ):
        compare.metrics(df, per_layer="False")  # type: ignore[arg-type]
