"""The Exporter's construction-time warnings say what is true: a parameter the user froze is
not expected in an optimizer (fine-tuning), a layer that is a block of other modules gets no
weight or bias metrics, and the advice about parameters no layer holds is what would help."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from tests.test_exporter_unowned import WithToken
from tests.test_freeze_restore import LoRALinear


@pytest.fixture
def messages(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="ikkuna_tune")
    return lambda text: [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: int = 8, features: int = 4) -> None:
    opt.zero_grad()
    F.cross_entropy(model(torch.randn(batch, features)), torch.randint(0, 3, (batch,))).backward()
    opt.step()


def test_no_optimizer_warning_when_every_trainable_parameter_is_in_the_optimizer(messages):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[2].bias.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    bus = MessageBus()
    got: list[tuple[str, str]] = []
    ik.CallbackSubscriber(
        ["weight_updates", "bias_updates"], lambda m: got.append((m.kind, m.key)), bus
    )
    with ik.Exporter(model, opt, bus):
        _step(model, opt)
    assert messages("optimizer") == []
    assert ("weight_updates", "2") in got and ("weight_updates", "0") in got
    assert ("bias_updates", "2") not in got  # the frozen bias does not change: no update


def test_no_optimizer_warning_for_a_frozen_base_weight(messages):
    model = nn.Sequential(LoRALinear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ik.Exporter(model, opt, MessageBus()).close()
    assert messages("optimizer") == []


def test_a_trainable_parameter_in_no_optimizer_is_still_named(messages):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    model[2].requires_grad_(False)  # frozen by the user: not expected in the optimizer
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # '3' trains but is not given
    ik.Exporter(model, opt, MessageBus()).close()
    warned = messages("none of the")
    assert len(warned) == 1
    assert "['3']" in warned[0] and "'2'" not in warned[0] and "'0'" not in warned[0]


def test_blocks_chosen_with_depth_are_named_as_getting_no_weight_metrics(messages):
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    got: list[str] = []
    ik.CallbackSubscriber(
        ["weights", "weight_gradients", "weight_updates"], lambda m: got.append(m.key), bus
    )
    with ik.Exporter(model, opt, bus, depth=1) as exporter:
        assert list(exporter.modules) == ["0", "1"]
        _step(model, opt)
    warned = messages("hold no parameter of their own")
    assert len(warned) == 1
    assert "['0', '1']" in warned[0]
    for kind in ("weights", "weight_gradients", "weight_updates"):
        assert kind in warned[0]
    assert got == []  # what the warning says: nothing is published for them


def test_no_block_warning_for_leaf_layers_or_a_block_holding_parameters_itself(messages):
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 3))
    ik.Exporter(model, message_bus=MessageBus()).close()
    ik.Exporter(nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus(), depth=1).close()
    assert messages("hold no parameter of their own") == []
    ik.Exporter(model, message_bus=MessageBus(), depth=1).close()
    warned = messages("hold no parameter of their own")
    assert len(warned) == 1 and "['0']" in warned[0] and "'1'" not in warned[0]


def test_no_depth_advice_for_parameters_on_the_model_itself(messages):
    ik.Exporter(WithToken(), message_bus=MessageBus()).close()
    warned = messages("held by modules")
    assert len(warned) == 1 and "'<model>': ['token']" in warned[0]
    assert "depth=" not in warned[0]  # no depth makes the model a layer
    assert "no layer at any depth" in warned[0]


def test_depth_advice_names_the_depth_and_what_it_costs(messages):
    ik.Exporter(nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus()).close()
    warned = messages("held by modules")
    assert len(warned) == 1
    assert "depth=1 makes ['self_attn'] layers" in warned[0]
    assert "submodules then get no weight, gradient or update metrics" in warned[0]
    # and the advice holds: at that depth 'self_attn' is a layer whose weight is in_proj_weight
    with ik.Exporter(
        nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus(), depth=1
    ) as exporter:
        assert "self_attn" in exporter.modules
        weights = {name: attr for name, _, attr in exporter._role_layers["weight"]}
        assert weights["self_attn"] == "in_proj_weight"


def test_a_layer_replaced_after_the_exporter_was_made_is_warned_about_once(caplog) -> None:
    """Transfer learning swaps in a new head after watching: the Exporter still tracks the old
    module, so the epoch's end says so, once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ik.Exporter(model, opt) as exporter:
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            exporter.epoch_finished()
            assert "no longer the modules" not in caplog.text
            model[2] = nn.Linear(6, 3)
            for _ in range(2):
                model(torch.randn(2, 4)).sum().backward()
                opt.step()
                exporter.epoch_finished()
    warnings = [r.getMessage() for r in caplog.records if "no longer the modules" in r.getMessage()]
    assert len(warnings) == 1 and "['2']" in warnings[0]


@pytest.mark.parametrize("depth", [None, 1])
def test_a_layer_added_after_the_exporter_was_made_is_warned_about_once(caplog, depth) -> None:
    """A layer appended after watching (a second head) gets no metrics and automatic freezing
    cannot see it: the epoch's end says so, once, naming the layers the Exporter would have
    chosen (with ``depth=1`` the top-level module, not what lies inside it). A layer's
    parametrisation added later (weight norm) adds no layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ik.Exporter(model, opt, depth=depth) as exporter:
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            nn.utils.parametrizations.weight_norm(model[0])
            exporter.epoch_finished()
            assert "were added" not in caplog.text
            model.append(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
            opt.add_param_group({"params": list(model[3].parameters())})
            for _ in range(2):
                model(torch.randn(2, 4)).sum().backward()
                opt.step()
                exporter.epoch_finished()
    warnings = [r.getMessage() for r in caplog.records if "were added" in r.getMessage()]
    assert warnings == [
        f"Layers {['3.1'] if depth is None else ['3']} were added to the model after the "
        "Exporter was created: nothing is published for them (no metrics, no SVCCA) and "
        "automatic freezing cannot see them. Watch the model anew (a new Exporter, or ik.watch "
        "in a new trial) after changing its layers"
    ]
    assert "no longer the modules" not in caplog.text


def test_a_layer_compiled_where_it_is_after_watching_is_neither_replaced_nor_added(caplog):
    """``model[2] = torch.compile(model[2])`` after watching keeps the tracked module (it is
    ``'2._orig_mod'`` now, and its hooks still run): no layer was replaced or added."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    seen: list[str] = []
    with ik.Exporter(model, opt, message_bus=bus) as exporter:
        ik.CallbackSubscriber(["activations"], lambda m: seen.append(m.key), bus)
        model[2] = torch.compile(model[2], backend="eager")
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
            exporter.epoch_finished()
    assert "2" in seen  # (the tracked module still runs)
    assert "were added" not in caplog.text and "no longer the modules" not in caplog.text


class _Attention(nn.Module):
    """A transformer layer on 4 tokens of width 8, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(x.reshape(-1, 4, 8)).mean(1))


def _epochs(model, opt, exporter, epochs: int = 2, parts: bool = False) -> None:
    for _ in range(epochs):
        x, y = torch.randn(6, 32), torch.randint(0, 3, (6,))
        opt.zero_grad()
        out = model.fc(model.enc(x.reshape(-1, 4, 8)).mean(1)) if parts else model(x)
        F.cross_entropy(out, y).backward()
        opt.step()
        exporter.epoch_finished()


def _recording_activations(
    model: nn.Module,
) -> tuple[torch.optim.Optimizer, MessageBus, set[str]]:
    """SGD on ``model``, a bus, and the set of layers its activations arrive from."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bus = MessageBus()
    seen: set[str] = set()
    ik.CallbackSubscriber(["activations"], lambda m: seen.add(m.key), bus)
    return opt, bus, seen


def test_a_layer_its_parent_never_calls_is_named_once_at_the_first_epoch_end(messages):
    """MultiheadAttention multiplies by out_proj's weight without calling out_proj: with
    activations subscribed, the first epoch end names it (once), and only it."""
    torch.manual_seed(0)
    model = _Attention()
    opt, bus, seen = _recording_activations(model)
    with ik.Exporter(model, opt, bus) as exporter:
        _epochs(model, opt, exporter)
        tracked = set(exporter.modules)
    warned = messages("never called in a forward pass")
    assert len(warned) == 1
    assert "enc.self_attn.out_proj" in tracked and "enc.self_attn.out_proj" not in seen
    uncalled = sorted(tracked - seen)
    assert uncalled == ["enc.self_attn.out_proj"]
    assert str(uncalled) in warned[0]


class _Plain(nn.Module):
    """The same shapes as :class:`_Attention`, every layer called."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.fc = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(x.reshape(-1, 4, 8)).mean(1))


@pytest.mark.parametrize("parts", [False, True], ids=["model", "its parts"])
def test_no_uncalled_layer_warning_when_every_layer_runs(messages, parts: bool) -> None:
    torch.manual_seed(0)
    model = _Plain()
    opt, bus, seen = _recording_activations(model)
    with ik.Exporter(model, opt, bus) as exporter:
        _epochs(model, opt, exporter, parts=parts)
    assert seen == {"enc", "fc"}
    assert messages("never called in a forward pass") == []


def test_no_uncalled_layer_warning_for_hooks_registered_after_the_last_pass(messages):
    torch.manual_seed(0)
    model = _Attention()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bus = MessageBus()
    with ik.Exporter(model, opt, bus) as exporter:
        _epochs(model, opt, exporter, epochs=1)
        _step(model, opt, batch=6, features=32)
        ik.CallbackSubscriber(["activations"], lambda m: None, bus)  # hooks from now on
        exporter.epoch_finished()  # no pass since: nothing is known about the layers yet
        assert messages("never called in a forward pass") == []
        _step(model, opt, batch=6, features=32)
        exporter.epoch_finished()  # a pass with the hooks: now out_proj is known uncalled
    assert len(messages("never called in a forward pass")) == 1


def test_a_layer_the_loop_calls_outside_the_models_forward_is_not_named(messages):
    """An auxiliary head the training loop runs itself (not in ``forward``) is called."""
    torch.manual_seed(0)
    model = _Plain()
    model.aux = nn.Linear(8, 3)
    opt, bus, seen = _recording_activations(model)
    with ik.Exporter(model, opt, bus) as exporter:
        for _ in range(2):
            x, y = torch.randn(6, 32), torch.randint(0, 3, (6,))
            opt.zero_grad()
            features = model.enc(x.reshape(-1, 4, 8)).mean(1)
            loss = F.cross_entropy(model(x), y) + F.cross_entropy(model.aux(features), y)
            loss.backward()
            opt.step()
            exporter.epoch_finished()
    assert seen == {"enc", "fc", "aux"}
    assert messages("never called in a forward pass") == []


class _Calibrated(nn.Module):
    """A layer applied in eval mode only (a calibration head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.calib = nn.Linear(32, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.training else self.calib(out)


def test_a_layer_the_epoch_end_probe_calls_is_not_named(messages) -> None:
    torch.manual_seed(0)
    model = _Calibrated()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bus = MessageBus()
    ik.CallbackSubscriber(["activations"], lambda m: None, bus)
    with ik.Exporter(model, opt, bus) as exporter:
        ik.SVCCASubscriber(torch.randn(40, 32), 20, message_bus=bus, backend=None, track_init=False)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(6, 32)), torch.randint(0, 3, (6,))).backward()
            opt.step()
            exporter.epoch_finished()
    assert messages("never called in a forward pass") == []


def test_a_failed_check_while_the_exporter_is_built_leaves_nothing_behind() -> None:
    """A test-accuracy subscriber on the bus whose data the model cannot take: the Exporter
    refuses, and neither its hooks nor its place on the bus stay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    bus = MessageBus()
    bad = torch.utils.data.TensorDataset(torch.randn(8, 5), torch.randint(0, 3, (8,)))
    sub = ik.TestAccuracySubscriber(bad, forward_fn=model, batch_size=4, message_bus=bus)
    with pytest.raises(ValueError, match="cannot evaluate the model"):
        ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), bus)
    assert not model._forward_pre_hooks and not model._forward_hooks
    sub.detach()
    with ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), bus) as exporter:
        assert exporter.message_bus is bus
