"""Update-to-weight ratios with several optimizers, against the textbook formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("per_message", [False, True], ids=["batched", "per-message"])
@pytest.mark.parametrize("kinds", [("weight_updates", "weights"), ("bias_updates", "biases")])
def test_every_layer_of_every_optimizer_gets_its_ratio(per_message: bool, kinds) -> None:
    model = _model()
    # three optimizers over disjoint layers, stepped one after the other
    opts = [
        torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9),
        torch.optim.Adam(model[2].parameters(), lr=0.01),
        torch.optim.SGD(model[4].parameters(), lr=0.05),
    ]
    bus = MessageBus()
    ik.RatioSubscriber(list(kinds), bus, backend=None)
    got: dict[tuple[str, int], float] = {}
    ik.CallbackSubscriber(
        [f"{kinds[0]}_{kinds[1]}_ratio"],
        lambda m: got.__setitem__((m.key, m.global_step), float(m.data)),
        bus,
    )
    if per_message:  # a subscription that takes no batches sends the kind message by message
        ik.CallbackSubscriber([kinds[0]], lambda m: None, bus)
    attr = "weight" if kinds[1] == "weights" else "bias"
    expected: dict[tuple[str, int], float] = {}
    with ik.Exporter(model, opts, bus):
        for step in range(3):
            before = {n: getattr(model[int(n)], attr).detach().clone() for n in ("0", "2", "4")}
            for opt in opts:
                opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            for opt in opts:
                opt.step()
            for name, old in before.items():
                new = getattr(model[int(name)], attr).detach()
                expected[(name, step)] = float((new - old).norm() / old.norm())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
