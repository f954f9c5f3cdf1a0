"""freeze + unfreeze restores what freeze changed, and only that: each parameter's own
``requires_grad`` (a parameter the user froze stays frozen) and the training modes of the layer's
modules, also across a checkpoint of the Exporter's state."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


class LoRALinear(nn.Module):
    """A pretrained weight the user froze, and two trainable low-rank factors."""

    def __init__(self, inputs: int, outputs: int, rank: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(outputs, inputs), requires_grad=False)
        self.lora_A = nn.Parameter(torch.zeros(rank, inputs))
        self.lora_B = nn.Parameter(torch.randn(outputs, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight + self.lora_B @ self.lora_A).T


def _finetuned() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # a bias the user keeps fixed
    return model


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _exporter(model: nn.Module) -> ik.Exporter:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return ik.Exporter(model, opt, MessageBus())


def test_freeze_then_unfreeze_restores_every_parameters_flag() -> None:
    model = _finetuned()
    before = _flags(model)
    with _exporter(model) as exporter:
        layers = list(exporter.modules)
        assert layers == ["0", "2", "3"]
        # every ordered choice of one or two layers that leaves something trainable, frozen in
        # that order and unfrozen in every order
        for size in (1, 2):
            for chosen in itertools.permutations(layers, size):
                if not exporter.leaves_trainable(chosen[0], chosen[1:]):
                    continue
                for order in itertools.permutations(chosen):
                    for name in chosen:
                        exporter.freeze(name)
                    held = [p for n in chosen for p in exporter.modules[n].module.parameters()]
                    assert not any(p.requires_grad for p in held)
                    for name in order:
                        exporter.unfreeze(name)
                    assert exporter.frozen == ()
                    assert _flags(model) == before, (chosen, order)


def test_user_frozen_parameters_keep_their_gradient_untouched_and_trainable_ones_lose_it() -> None:
    model = _finetuned()
    with _exporter(model) as exporter:
        torch.nn.functional.mse_loss(model(torch.randn(3, 4)), torch.zeros(3, 2)).backward()
        exporter.freeze("0")
        assert model[0].lora_A.grad is None and model[0].lora_B.grad is None
        exporter.unfreeze("0")
        assert _flags(model) == _flags(_finetuned())


def test_shared_parameters_stay_frozen_until_every_layer_holding_them_is_unfrozen() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    model[1].weight = model[0].weight  # tied weights
    before = _flags(model)
    for first, second in itertools.permutations(["0", "1"]):
        with ik.Exporter(model, message_bus=MessageBus()) as exporter:
            exporter.freeze("0")
            exporter.freeze("1")
            exporter.unfreeze(first)
            assert not model[0].weight.requires_grad  # still held by the other frozen layer
            exporter.unfreeze(second)
            assert _flags(model) == before


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x)))


@pytest.mark.parametrize("model_training", [True, False])
def test_unfreeze_gives_back_the_modes_the_user_set_inside_the_layer(model_training) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(4, 2)).train(model_training)
    model[0].bn.train(not model_training)  # a BatchNorm the user holds in the other mode
    with ik.Exporter(model, message_bus=MessageBus(), depth=1) as exporter:
        before = _modes(model)
        exporter.freeze("0")
        model.train(model_training)
        model(torch.randn(5, 4))
        assert not any(m.training for m in model[0].modules())  # held in eval while frozen
        exporter.unfreeze("0")
        assert _modes(model) == before


def test_unfrozen_layer_still_takes_the_models_current_mode() -> None:
    model = nn.Sequential(Block(), nn.Linear(4, 2)).eval()
    with ik.Exporter(model, message_bus=MessageBus(), depth=1) as exporter:
        exporter.freeze("0")
        model.train()
        exporter.unfreeze("0")
        assert all(m.training for m in model.modules())


def _through_a_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as the Tune session loads it


def test_the_flags_from_before_freezing_survive_a_checkpoint() -> None:
    model = _finetuned()
    before = _flags(model)
    with _exporter(model) as exporter:
        exporter.freeze("0")
        exporter.freeze("2")
        state = _through_a_file(exporter.state_dict())
    # the restored model object carries the frozen flags (a pickled or reused model): the
    # checkpoint, not the model, says what the flags were before freezing
    restored = copy.deepcopy(model)
    assert not any(_flags(restored)[n] for n in ("0.lora_A", "0.lora_B", "2.weight"))
    with _exporter(restored) as exporter:
        exporter.load_state_dict(state)
        assert exporter.frozen == ("0", "2")
        exporter.unfreeze("2")
        exporter.unfreeze("0")
        assert _flags(restored) == before


def test_an_older_checkpoint_without_the_flags_still_loads() -> None:
    model = _finetuned()
    with _exporter(model) as exporter:
        exporter.freeze("0")
        state = _through_a_file(exporter.state_dict())
    state.pop("frozen_state", None)  # as an older version saved it
    fresh = _finetuned()  # built as the trial builds it: the user's own flags
    with _exporter(fresh) as exporter:
        exporter.load_state_dict(state)
        assert exporter.frozen == ("0",)
        exporter.unfreeze("0")
        assert _flags(fresh) == _flags(_finetuned())


def test_a_restored_freeze_is_not_announced_again() -> None:
    def announced(model: nn.Module, act) -> list[str]:  # type: ignore[no-untyped-def]
        bus, seen = MessageBus(), []
        ik.CallbackSubscriber(["layer_frozen"], lambda m: seen.append(m.data), bus)
        exporter = ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), bus)
        act(exporter)
        exporter.close()
        return seen

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    state: dict = {}
    assert announced(model, lambda e: (e.freeze("0"), state.update(e.state_dict()))) == ["0"]
    restored = copy.deepcopy(model)
    assert announced(restored, lambda e: e.load_state_dict(state)) == []
    assert not restored[0].weight.requires_grad  # frozen all the same
