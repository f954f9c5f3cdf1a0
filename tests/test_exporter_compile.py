"""torch.compile: the Exporter sees the user's layers under their own names and publishes the same
values as for the uncompiled model, whether it watches before or after compiling; freezing costs
at most one recompilation per freeze and never runs into dynamo's recompile limit.

The models are compiled with the ``aot_eager`` backend (dynamo and AOTAutograd, no code
generation), which is what decides graph breaks, guards and recompilations.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus

STEPS = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))] * STEPS


def _run(when: str | None, kinds: list[str]) -> tuple[list[str], dict[tuple, torch.Tensor]]:
    """Train STEPS steps; ``when``: compile before watching, after it, or never (None). The
    layer names and every published value by (kind, layer, step)."""
    torch._dynamo.reset()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    for kind in kinds:
        ik.NormSubscriber(kind, message_bus=bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], message_bus=bus, backend=None)
    got: dict[tuple, torch.Tensor] = {}
    published = [f"{kind}_norm2" for kind in kinds] + ["weight_updates_weights_ratio"]
    ik.CallbackSubscriber(
        published, lambda m: got.__setitem__((m.kind, m.key, m.global_step), m.data), bus
    )
    run = model
    if when == "before":
        run = torch.compile(model, backend="aot_eager")
    exporter = ik.Exporter(run, opt, bus)
    if when == "after":
        run = torch.compile(model, backend="aot_eager")
    for x, y in _batches():
        opt.zero_grad()
        F.cross_entropy(run(x), y).backward()
        opt.step()
    exporter.close()
    return list(exporter.modules), got


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("kinds", [["weight_gradients"], ["weight_gradients", "activations"]])
def test_compiled_model_has_the_same_layers_and_values(when: str, kinds: list[str]) -> None:
    names, plain = _run(None, kinds)
    compiled_names, compiled = _run(when, kinds)
    assert compiled_names == names == ["0", "1", "3"]  # no '_orig_mod.' prefix
    assert compiled.keys() == plain.keys() and len(plain) == (len(kinds) + 1) * 3 * STEPS
    for key, value in plain.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-5, atol=1e-6)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_freezing_a_compiled_model_recompiles_at_most_once_per_freeze(caplog) -> None:
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    compiled = torch.compile(model, backend="aot_eager")
    bus = MessageBus()
    exporter = ik.Exporter(compiled, opt, bus)  # the standard set's kinds: parameters only
    ik.NormSubscriber("weight_gradients", message_bus=bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], message_bus=bus, backend=None)

    def train(steps: int) -> None:
        compiled.train()
        for x, y in _batches()[:steps]:
            opt.zero_grad()
            F.cross_entropy(compiled(x), y).backward()
            opt.step()
        exporter.epoch_finished()

    train(STEPS)
    train(STEPS)  # steps move the Exporter's counters: no recompilation for that
    graphs = [_graphs()]
    for name in ("0", "1"):  # a Linear, then a BatchNorm held in eval mode
        exporter.freeze(name)
        frozen = {k: v.clone() for k, v in model[int(name)].state_dict().items()}
        train(STEPS)
        train(STEPS)
        graphs.append(_graphs())
        for key, value in model[int(name)].state_dict().items():
            assert torch.equal(value, frozen[key]), (name, key)
    assert graphs[0] == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(graphs)), graphs
    assert "recompile_limit" not in caplog.text
    exporter.close()
