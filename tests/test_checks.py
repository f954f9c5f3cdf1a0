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
