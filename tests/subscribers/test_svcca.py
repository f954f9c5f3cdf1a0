"""SVCCA subscribers, checked against activations computed by hand on the same probe points."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import NetworkMessage
from ikkuna_tune.subscribers.svcca import BatchedSVCCASubscriber, SVCCASubscriber
from tests.svcca_reference import textbook_svcca


@pytest.fixture
def data() -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(
        torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 5, (40,), generator=g)
    )


def _by_hand(model, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """TinyNet's layer outputs on ``probe`` with plain functional calls; conv folded so that
    every (point, position) is a row and the channels are the columns."""
    with torch.no_grad():
        conv = F.conv2d(probe, model.conv.weight, model.conv.bias)
        fc = F.linear(F.relu(conv).flatten(1), model.fc.weight, model.fc.bias)
    return {"conv": conv.permute(0, 2, 3, 1).reshape(-1, conv.shape[1]), "fc": fc}


def _published(bus: MessageBus) -> list[tuple[str, int, int, str, torch.Tensor]]:
    got: list[tuple[str, int, int, str, torch.Tensor]] = []
    ik.CallbackSubscriber(
        ["self_similarity"],
        lambda m: got.append((m.key, m.global_step, m.epoch, m.tag, m.data)),
        bus,
    )
    return got


def _train(model, opt, data, steps: int) -> None:
    x, y = data.tensors
    for i in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[i::steps]), y[i::steps]).backward()
        opt.step()


def _setup(model, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    return opt, bus, exporter


# ------------------------------------------------------------------------------ publishing
@pytest.mark.parametrize("keep", [None, 0.6])
def test_publishes_self_similarity_per_layer_equal_to_svcca_by_hand(tiny, data, keep) -> None:
    opt, bus, exporter = _setup(tiny)
    kwargs = {} if keep is None else {"keep": keep}
    sub = SVCCASubscriber(data, 20, message_bus=bus, backend=None, max_positions=10**6, **kwargs)
    got = _published(bus)
    probe = data.tensors[0][torch.from_numpy(sub.indices)]
    by_hand = []
    for epoch in range(3):
        _train(tiny, opt, data, 2)
        by_hand.append(_by_hand(tiny, probe))
        step = exporter.global_step
        exporter.epoch_finished()
        if epoch == 0:
            assert got == []  # the first checkpoint only records
            continue
        assert [(key, s, e, tag) for key, s, e, tag, _ in got] == [
            ("conv", step, epoch, "default"),
            ("fc", step, epoch, "default"),
        ]
        for key, *_, value in got:
            assert value.dim() == 0 and value.dtype == torch.float64
            # SVCCA as Raghu et al. define it (keep 0.99 by default), computed in NumPy
            before, now = by_hand[-2][key].numpy(), by_hand[-1][key].numpy()
            expected = textbook_svcca(before, now, 0.99 if keep is None else keep)
            assert value.item() == pytest.approx(expected, abs=1e-6)
            assert 0.0 < value.item() < 1.0  # lr 0.5 moves the layers
        got.clear()


def test_probe_set_is_a_seeded_sample_without_replacement(data) -> None:
    a = SVCCASubscriber(data, 25, seed=3, backend=None)
    b = SVCCASubscriber(data, 25, seed=3, backend=None)
    c = SVCCASubscriber(data, 25, seed=4, backend=None)
    assert len(set(a.indices.tolist())) == 25 and a.indices.max() < 40
    assert (a.indices == b.indices).all() and not (a.indices == c.indices).all()
    torch.testing.assert_close(a.probe_inputs, data.tensors[0][torch.from_numpy(a.indices)])
    # a tensor of inputs works as well as a data set
    d = SVCCASubscriber(data.tensors[0], 25, seed=3, backend=None)
    torch.testing.assert_close(d.probe_inputs, a.probe_inputs)


def test_every_k_steps_and_probe_leaves_counters_and_updates_alone(tiny, data) -> None:
    opt, bus, exporter = _setup(tiny)
    steps: list[int] = []
    updates: list[torch.Tensor] = []
    ik.CallbackSubscriber(["batch_started"], lambda m: steps.append(m.global_step), bus)
    ik.CallbackSubscriber(
        ["weight_updates"],
        lambda m: updates.append(m.data.abs().sum()) if m.key == "fc" else None,
        bus,
    )
    SVCCASubscriber(data, 10, message_bus=bus, frequency=2, backend=None)
    got = _published(bus)
    tiny.fc.train(False)  # a mixed mode the probe must restore
    _train(tiny, opt, data, 6)
    assert steps == [0, 1, 2, 3, 4, 5]
    assert [(key, step) for key, step, *_ in got] == [
        ("conv", 3),
        ("fc", 3),
        ("conv", 5),
        ("fc", 5),
    ]
    assert all(u > 0 for u in updates)  # a probe does not make the next update look like zero
    assert tiny.training and not tiny.fc.training and tiny.conv.training
    assert (exporter.global_step, exporter.train_step, exporter.epoch) == (5, 5, 0)


def test_record_leaves_no_hooks_and_moves_no_counter(tiny, data) -> None:
    _, bus, exporter = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, backend=None)
    before = (exporter.global_step, exporter.train_step, exporter.epoch)
    hooks = len(tiny.conv._forward_hooks)
    recorded = sub.record()
    assert set(recorded) == {"conv", "fc"}
    assert recorded["conv"].shape == (10 * 16, 3) and recorded["fc"].shape == (10, 5)
    assert (exporter.global_step, exporter.train_step, exporter.epoch) == before
    assert len(tiny.conv._forward_hooks) == hooks
    assert "activations" not in bus.subscribed_kinds()


def test_custom_forward_fn(tiny, data) -> None:
    _, bus, _ = _setup(tiny)
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return tiny(x)

    sub = BatchedSVCCASubscriber(
        data, 12, forward_fn=forward, batch_size=5, message_bus=bus, backend=None
    )
    assert calls == [5, 5, 2]  # attaching records the activations at initialisation
    recorded = sub.record()
    assert calls == [5, 5, 2] * 2
    torch.testing.assert_close(recorded["fc"], _by_hand(tiny, sub.probe_inputs)["fc"])


# --------------------------------------------------------------------------- conv folding
def test_positions_are_subsampled_to_a_fixed_subset(tiny, data) -> None:
    _, bus, _ = _setup(tiny)
    sub = SVCCASubscriber(data, 20, message_bus=bus, backend=None, max_positions=50)
    first = sub.record()
    full = _by_hand(tiny, sub.probe_inputs)["conv"]  # 320 rows
    assert first["conv"].shape == (50, 3)
    assert first["fc"].shape == (20, 5)  # plain layers keep every probe point
    distance = torch.cdist(first["conv"], full, compute_mode="donot_use_mm_for_euclid_dist")
    match = distance.argmin(dim=1)
    assert torch.all(distance.min(dim=1).values < 1e-6)
    assert len(set(match.tolist())) == 50 and (match.diff() > 0).all()
    # the same rows next time
    with torch.no_grad():
        tiny.conv.weight.mul_(2)
    torch.testing.assert_close(sub.record()["conv"], 2 * first["conv"] - tiny.conv.bias)


def test_batched_equals_unbatched(tiny, data) -> None:
    opt, bus, _ = _setup(tiny)
    # a second Exporter on the same model, on its own bus, for the second subscriber
    bus2 = MessageBus()
    ik.Exporter(tiny, message_bus=bus2)
    kwargs = {"max_positions": 100, "seed": 5, "backend": None}
    one = SVCCASubscriber(data, 20, message_bus=bus, **kwargs)
    batched = BatchedSVCCASubscriber(data, 20, batch_size=7, message_bus=bus2, **kwargs)
    source = NetworkMessage("epoch_finished", "default", 0, 0, 0, None)
    for _ in range(3):
        a, b = one.record(), batched.record()
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key])
        values_a, values_b = one.checkpoint(source), batched.checkpoint(source)
        assert values_a.keys() == values_b.keys()
        for key in values_a:
            assert values_a[key] == pytest.approx(values_b[key], abs=1e-6)
        _train(tiny, opt, data, 1)


def test_linear_on_sequences_folds_the_last_dimension(data) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    _, bus, _ = _setup(model)
    inputs = torch.randn(30, 5, 4, generator=torch.Generator().manual_seed(0))
    sub = SVCCASubscriber(inputs, 8, message_bus=bus, backend=None)
    with torch.no_grad():
        expected = model(sub.probe_inputs).reshape(-1, 3)
    torch.testing.assert_close(sub.record()["0"], expected)


# ------------------------------------------------------------------------------- freezing
def _stack(widths=(6, 5, 4, 3)) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def test_converged_layers_freeze_from_the_input_side_but_not_the_last(data) -> None:
    model = _stack()
    _, bus, exporter = _setup(model)
    frozen: list[str] = []
    ik.CallbackSubscriber(["layer_frozen"], lambda m: frozen.append(m.data), bus)
    inputs = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    SVCCASubscriber(inputs, 40, message_bus=bus, freeze_at=0.999, backend=None, min_travel=0)
    exporter.epoch_finished()
    assert exporter.frozen == ()
    model(inputs[:4])  # a training pass that changes no weight: every layer's similarity is 1
    exporter.epoch_finished()
    assert exporter.frozen == ("0", "2") == tuple(frozen)  # "4", the head, stays trainable
    assert model[4].weight.requires_grad


def test_a_layer_that_never_left_its_initialisation_is_not_frozen(caplog) -> None:
    """Similarity 1.0 is also what a layer that never moved reads (or a widening layer that
    SVCCA cannot see change): with the default min_travel nothing is frozen until linear CKA
    against initialisation has moved, and the first layer says why."""
    model = _stack()
    _, bus, exporter = _setup(model)
    inputs = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    SVCCASubscriber(inputs, 40, message_bus=bus, freeze_at=0.999, backend=None)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.svcca"):
        for _ in range(3):
            model(inputs[:4])
            exporter.epoch_finished()
    assert exporter.frozen == ()
    said = [r.getMessage() for r in caplog.records if "min_travel" in r.getMessage()]
    assert len(said) == 1 and "Not freezing layer '0'" in said[0] and "moved 0 " in said[0]
    with pytest.raises(ValueError, match=r"`min_travel` to be a number in \[0, 1\]"):
        SVCCASubscriber(inputs, 40, freeze_at=0.999, min_travel=1.5)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"0": 0.5, "2": 1.0, "4": 1.0}, ()),  # an unconverged first layer blocks the rest
        ({"0": 1.0, "2": 0.5, "4": 1.0}, ("0",)),
        ({"0": 1.0, "2": math.nan, "4": 1.0}, ("0",)),
        ({"0": 0.999, "2": 0.9995}, ("0", "2")),
        ({"2": 1.0}, ()),  # no value for "0"
        # "0" called a second time later in the forward pass: each call must be settled
        ({"0": 1.0, "0#2": 0.9, "2": 1.0, "4": 1.0}, ()),
        ({"0": 1.0, "0#2": 0.9995, "2": 0.5, "4": 1.0}, ("0",)),
        ({"0#2": 1.0, "2": 1.0, "4": 1.0}, ()),  # no value of its own (its first call constant)
    ],
)
def test_freezing_rule(values, expected) -> None:
    model = _stack()
    _, bus, exporter = _setup(model)
    sub = SVCCASubscriber(torch.randn(10, 6), 5, message_bus=bus, freeze_at=0.999, backend=None)
    sub._freeze(values, dict.fromkeys(values, 0.5))  # every layer far from its start
    assert exporter.frozen == expected


@pytest.mark.parametrize(
    ("travelled", "expected"),
    [
        ({"0": 0.05, "2": 0.05}, ("0", "2")),
        ({"0": 0.01, "2": 0.05}, ()),  # the first layer has not come far: the rest wait
        ({"0": 0.05, "2": 0.019}, ("0",)),
        ({"0": 0.05, "2": math.nan}, ("0",)),  # no CKA for "2" (diverged): not frozen
    ],
)
def test_freezing_rule_with_the_distance_from_initialisation(travelled, expected) -> None:
    model = _stack()
    _, bus, exporter = _setup(model)
    sub = SVCCASubscriber(torch.randn(10, 6), 5, message_bus=bus, freeze_at=0.999, backend=None)
    sub._freeze({"0": 1.0, "2": 1.0, "4": 1.0}, travelled)
    assert exporter.frozen == expected


def test_freezing_continues_after_layers_frozen_elsewhere() -> None:
    model = _stack()
    _, bus, exporter = _setup(model)
    sub = SVCCASubscriber(torch.randn(10, 6), 5, message_bus=bus, freeze_at=0.9, backend=None)
    exporter.freeze("0")
    sub._freeze({"0": 0.1, "2": 0.95, "4": 0.99}, {"2": 0.5})
    assert exporter.frozen == ("0", "2")


def test_a_layer_the_training_code_holds_fixed_is_passed_over_as_frozen() -> None:
    """A first layer held by ``requires_grad_(False)`` (a fine-tuned backbone) never leaves its
    initialisation, so it is never settled; nothing trains there, and the converged layers
    after it freeze as they would after a frozen one. It is not frozen itself."""
    model = _stack()
    model[0].requires_grad_(False)
    _, bus, exporter = _setup(model)
    sub = SVCCASubscriber(torch.randn(10, 6), 5, message_bus=bus, freeze_at=0.999, backend=None)
    sub._freeze({"0": 1.0, "2": 1.0, "4": 1.0}, {"0": 0.0, "2": 0.5, "4": 0.5})
    assert exporter.frozen == ("2",) and exporter.held_fixed() == ["0"]
    model[0].requires_grad_(True)  # trainable again: its short travel holds the rest back
    exporter.unfreeze("2")
    sub._freeze({"0": 1.0, "2": 1.0, "4": 1.0}, {"0": 0.0, "2": 0.5, "4": 0.5})
    assert exporter.frozen == () and exporter.held_fixed() == []


# ---------------------------------------------------------------------------- non-finite
def test_non_finite_activations_publish_nan_and_training_goes_on(tiny, data, caplog) -> None:
    opt, bus, exporter = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, freeze_at=0.5, backend=None, min_travel=0)
    got = _published(bus)
    exporter.epoch_finished()
    with torch.no_grad():
        tiny.fc.weight[0, 0] = math.inf
    tiny(data.tensors[0][:2])  # a training pass (the epoch had a step), weights as set above
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.svcca"):
        exporter.epoch_finished()
    values = {key: value.item() for key, _, _, _, value in got}
    assert math.isnan(values["fc"]) and values["conv"] == pytest.approx(1.0)
    assert "'fc' has non-finite activations" in caplog.text
    assert exporter.frozen == ("conv",)  # the NaN layer is not frozen
    # training goes on: the blow-up passes, fc keeps learning, conv stays frozen
    with torch.no_grad():
        tiny.fc.weight[0, 0] = 0.1
    conv_before = tiny.conv.weight.clone()
    batches: list[int] = []
    ik.CallbackSubscriber(["batch_finished"], lambda m: batches.append(m.global_step), bus)
    probes: list[torch.Tensor] = []
    for epoch in range(2):
        got.clear()
        fc_before = tiny.fc.weight.clone()
        _train(tiny, opt, data, 2)
        # the training messages still flow (step 0 was the pass before the blow-up's epoch end)
        assert batches == list(range(1, 2 * epoch + 3))
        assert torch.isfinite(tiny.fc.weight).all()
        assert not torch.equal(tiny.fc.weight, fc_before)
        assert torch.equal(tiny.conv.weight, conv_before)
        probes.append(_by_hand(tiny, sub.probe_inputs)["fc"])
        exporter.epoch_finished()
        # conv, a frozen prefix, is measured no more; fc's next value compares with the
        # non-finite checkpoint (NaN), the one after that with finite activations again
        assert [key for key, *_ in got] == ["fc"]
        value = got[0][4].item()
        if epoch == 0:
            assert math.isnan(value)
        else:
            expected = textbook_svcca(probes[0].numpy(), probes[1].numpy())
            assert value == pytest.approx(expected, abs=1e-6)
            assert 0.0 < value < 1.0


# ----------------------------------------------------------------------------- checkpoint
def test_state_dict_round_trip_continues_comparing(tiny, data) -> None:
    opt, bus, exporter = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, frequency=3, backend=None)
    got = _published(bus)
    _train(tiny, opt, data, 4)  # a checkpoint at step 2, one step counted towards the next
    state = copy.deepcopy(sub.state_dict())
    assert state["batches"] == 4
    assert all(t.device.type == "cpu" for t in state["previous"].values())
    # a restored trial: a fresh model, Exporter and subscriber, loaded from the checkpoint
    model = type(tiny)()  # not deepcopy(tiny): that would copy the Exporter's hooks too
    model.load_state_dict(tiny.state_dict())
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # no shared momentum buffers
    bus2 = MessageBus()
    ik.Exporter(model, opt2, bus2).load_state_dict(exporter.state_dict())
    restored = SVCCASubscriber(data, 10, message_bus=bus2, frequency=3, backend=None)
    restored.load_state_dict(state)
    got2 = _published(bus2)
    _train(tiny, opt, data, 2)
    _train(model, opt2, data, 2)
    assert [k for k, *_ in got] == [k for k, *_ in got2] == ["conv", "fc"]
    for a, b in zip(got, got2):
        assert a[:4] == b[:4]
        torch.testing.assert_close(a[4], b[4])


def test_a_restored_subscriber_that_subsamples_checks_at_the_epochs_it_would_have(
    tiny, data
) -> None:
    """``subsample=2``: a check at every other epoch end (epochs 0, 2, 4). Saved after epoch 2
    and restored, the run checks at epoch 4 as the uninterrupted one does (without the
    subscription's counts in its state it checked at epoch 3, comparing over one epoch)."""

    def epochs(model, opt, exporter, count: int) -> None:
        for _ in range(count):
            _train(model, opt, data, 2)
            exporter.epoch_finished()

    opt, bus, exporter = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, subsample=2, backend=None)
    got = _published(bus)
    epochs(tiny, opt, exporter, 3)
    state = copy.deepcopy(sub.state_dict())
    model = type(tiny)()
    model.load_state_dict(tiny.state_dict())
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    bus2 = MessageBus()
    exporter2 = ik.Exporter(model, opt2, bus2)
    exporter2.load_state_dict(exporter.state_dict())
    restored = SVCCASubscriber(data, 10, message_bus=bus2, subsample=2, backend=None)
    restored.load_state_dict(state)
    got2 = _published(bus2)
    epochs(tiny, opt, exporter, 3)
    epochs(model, opt2, exporter2, 3)
    checked = sorted({epoch for _, _, epoch, *_ in got})
    assert checked == [2, 4]  # (the check at epoch 0 only recorded)
    assert sorted({epoch for _, _, epoch, *_ in got2}) == [4]


def test_load_state_dict_rejects_bad_states(data) -> None:
    sub = SVCCASubscriber(data, 10, backend=None)
    with pytest.raises(
        ValueError,
        match=r"'initial', 'initial_unknown', 'previous_rows', 'initial_rows'\) but got",
    ):
        sub.load_state_dict({"previous": None})
    other = SVCCASubscriber(data, 10, seed=1, backend=None).state_dict()
    with pytest.raises(ValueError, match="saved with probe settings"):
        sub.load_state_dict(other)
    state = sub.state_dict()
    state["previous"] = {"conv": [1, 2]}
    with pytest.raises(ValueError, match="map layer names to tensors"):
        sub.load_state_dict(state)


def test_after_a_restore_without_state_nothing_is_compared_with_initialisation(
    tiny, data, caplog
) -> None:
    """Training goes on from a checkpoint's model without the subscriber's state: the model
    recorded at attach is the checkpoint's, so no init_similarity or live_fraction is published
    (measured against it, an unchanged layer would read 1.0, "never moved"), in this attempt or
    in one restored from a state it saves; self-similarity goes on."""
    opt, bus, _ = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, frequency=2, backend=None)
    kinds: list[str] = []
    ik.CallbackSubscriber(
        ["self_similarity", "init_similarity", "live_fraction"],
        lambda m: kinds.append(m.kind),
        bus,
    )
    with caplog.at_level(logging.WARNING):
        sub.restored_without_state()
    assert "init_similarity and live_fraction are not published" in caplog.text
    _train(tiny, opt, data, 4)  # checkpoints at steps 2 and 4
    assert kinds == ["self_similarity", "self_similarity"]
    state = sub.state_dict()
    assert state["initial"] is None and state["initial_unknown"] is True
    # a later restore from that state: the start stays unknown, whatever model comes
    model = type(tiny)()
    model.load_state_dict(tiny.state_dict())
    opt2, bus2, _ = _setup(model)
    restored = SVCCASubscriber(data, 10, message_bus=bus2, frequency=2, backend=None)
    restored.load_state_dict(state)
    restored.use_model(restored.model_access)  # (attached again: nothing is recorded)
    kinds.clear()
    ik.CallbackSubscriber(
        ["init_similarity", "live_fraction"], lambda m: kinds.append(m.kind), bus2
    )
    _train(model, opt2, data, 4)
    assert kinds == []
    assert restored.state_dict()["initial_unknown"] is True
    # a subscriber restored from a state with its activations at initialisation compares again
    fresh = SVCCASubscriber(data, 10, frequency=2, backend=None)
    fresh.load_state_dict({**SVCCASubscriber(data, 10, backend=None).state_dict(), "initial": {}})
    assert "initial_unknown" not in fresh.state_dict()
    with pytest.raises(ValueError, match="`initial_unknown` to be True"):
        fresh.load_state_dict({**state, "initial_unknown": 1})


def test_unattached_subscriber_is_a_deep_copyable_template(tiny, data) -> None:
    template = SVCCASubscriber(data, 10, backend=None)
    copies = [copy.deepcopy(template) for _ in range(2)]
    assert copies[0].probe_inputs is not template.probe_inputs
    _, bus, exporter = _setup(tiny)
    copies[0].attach(bus)
    got = _published(bus)
    exporter.epoch_finished()
    tiny(data.tensors[0][:2])  # a training pass between the two epoch ends
    exporter.epoch_finished()
    assert len(got) == 2
    assert template.message_bus is None and copies[1].state_dict()["previous"] is None


# ------------------------------------------------------------------------------ arguments
def test_attach_without_exporter_or_forward_fn_raises(data) -> None:
    with pytest.raises(ValueError, match="no model to probe: pass `forward_fn`"):
        SVCCASubscriber(data, 10, message_bus=MessageBus(), backend=None)
    SVCCASubscriber(data, 10, forward_fn=lambda x: x, message_bus=MessageBus(), backend=None)


#: the start of the message for a bad ``freeze_at``
FREEZE_AT = r"`freeze_at` to be a similarity in \(0, 1\), or None or a number >= 1 .*"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1}, "`n` to be an integer >= 2 but got 1"),
        ({"n": 0}, "`n` to be an integer >= 2 but got 0"),  # (said >= 1, then >= 2 for 1)
        ({"n": 41}, "`n` to be at most the data set size 40 but got 41"),
        ({"n": 2.5}, "`n` to be an integer >= 2 but got 2.5"),
        ({"frequency": 0}, "`frequency` to be an integer >= 1 or 'epoch' but got 0"),
        ({"frequency": "step"}, "`frequency` to be an integer >= 1 or 'epoch' but got 'step'"),
        ({"frequency": True}, "`frequency` to be an integer >= 1 or 'epoch' but got True"),
        ({"freeze_at": 0}, FREEZE_AT + r"0"),
        ({"freeze_at": "0.99"}, FREEZE_AT + r"'0.99'"),
        ({"freeze_at": True}, FREEZE_AT + r"True"),
        ({"freeze_at": math.nan}, FREEZE_AT + r"nan"),
        ({"keep": 0.0}, r"`keep` to be a number in \(0, 1\] but got 0.0"),
        ({"max_positions": 1}, "`max_positions` to be an integer >= 2 but got 1"),
        ({"seed": -1}, "`seed` to be an integer >= 0 but got -1"),
        ({"probe_tag": "default"}, "`probe_tag` to be a tag other than 'default'"),
        ({"forward_fn": 3}, "`forward_fn` to be callable or None but got 3"),
        ({"ylims": (1, 0)}, r"`ylims` to be None or a pair \(low, high\) with low < high"),
        ({"backend": "wandb"}, "`backend` to be one of"),
        ({"dataset": [1, 2, 3]}, "`dataset` to be a torch Dataset or a tensor of inputs"),
        ({"min_travel": -0.1}, r"`min_travel` to be a number in \[0, 1\] but got -0.1"),
        ({"min_travel": math.nan}, r"`min_travel` to be a number in \[0, 1\] but got nan"),
    ],
)
def test_invalid_arguments(data, kwargs, match) -> None:
    arguments = {"dataset": data, "n": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        SVCCASubscriber(**arguments)


def test_the_original_ikkunas_arguments_are_taken_in_its_order(data) -> None:
    """``BatchedSVCCASubscriber(dataset, n, forward_fn, freeze_at, batch_size, message_bus,
    tag, subsample, ylims, backend)`` as the original ikkuna's, its default ``freeze_at=10``
    (any value >= 1) turning freezing off; ``SVCCASubscriber`` takes ``forward_fn`` and
    ``freeze_at`` by position, and says so when given more."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    bus = MessageBus()
    sub = BatchedSVCCASubscriber(data, 12, model, 10, 64, bus, "default", 2, None, None)
    assert (sub.forward_fn, sub.freeze_at, sub.batch_size) == (model, None, 64)
    assert sub.message_bus is bus and sub.subscriptions[0].subsample == 2
    assert BatchedSVCCASubscriber(data, 12).batch_size == 256  # the original's default
    for off in (1, 1.0, 1.5, 10):
        assert SVCCASubscriber(data, 10, freeze_at=off).freeze_at is None
    short = SVCCASubscriber(data, 10, model, 0.99, message_bus=MessageBus(), backend=None)
    assert (short.forward_fn, short.freeze_at, short.batch_size) == (model, 0.99, 10)
    with pytest.raises(TypeError, match="forward_fn and freeze_at by position .* got 5"):
        SVCCASubscriber(data, 10, model, 0.99, MessageBus())


def test_batch_size_is_validated(data) -> None:
    with pytest.raises(ValueError, match="`batch_size` to be an integer >= 1 but got 0"):
        BatchedSVCCASubscriber(data, 10, batch_size=0)
    with pytest.raises(TypeError):
        SVCCASubscriber(data, 10, unknown=1)  # type: ignore[call-arg]
    # (it had raised Python's "got multiple values for argument 'batch_size'")
    with pytest.raises(ValueError, match="takes no `batch_size` .*BatchedSVCCASubscriber"):
        SVCCASubscriber(data, 10, batch_size=5)


def test_svcca_subscriber_names_itself_for_an_unknown_argument(data) -> None:
    # (Python's error named BatchedSVCCASubscriber.__init__, which the caller never named)
    taken = "it takes a dataset, n and then forward_fn, freeze_at, message_bus, tag"
    with pytest.raises(
        TypeError, match=f"SVCCASubscriber got an unexpected keyword .*'kep'; {taken}"
    ):
        SVCCASubscriber(data, 10, kep=0.9)
    with pytest.raises(TypeError, match="takes dataset, n, forward_fn and freeze_at by position"):
        SVCCASubscriber(data, 10, *([None] * 16))
    with pytest.raises(
        TypeError, match=f"SVCCASubscriber got multiple values for argument 'forward_fn'; {taken}"
    ):
        SVCCASubscriber(data, 10, None, forward_fn=None)
    assert SVCCASubscriber(data, 10, keep=0.9, backend=None).n == 10  # known ones still pass


def test_exported_from_the_package() -> None:
    assert ik.SVCCASubscriber is SVCCASubscriber
    assert ik.BatchedSVCCASubscriber is BatchedSVCCASubscriber


def _missing_devices() -> list[str]:
    """Device strings this machine does not have (at least 'cuda:<count>')."""
    missing = [f"cuda:{torch.cuda.device_count()}"]
    if not torch.cuda.is_available():
        missing.append("cuda")
    if not torch.backends.mps.is_available():
        missing.append("mps")
    return missing


@pytest.mark.parametrize("device", [*_missing_devices(), "gpu", 1.5])
@pytest.mark.parametrize("cls", [SVCCASubscriber, BatchedSVCCASubscriber])
def test_a_device_this_machine_lacks_is_rejected_at_construction(data, cls, device) -> None:
    kwargs = {} if cls is SVCCASubscriber else {"batch_size": 5}
    with pytest.raises(ValueError, match=f"Expected `device` to be .* but got {device!r}"):
        cls(data, 10, device=device, **kwargs)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_explicit_cpu_device_records_the_probe(tiny, data, device) -> None:
    _, bus, _ = _setup(tiny)
    sub = SVCCASubscriber(data, 10, message_bus=bus, backend=None, device=device)
    assert sub.device == torch.device("cpu")
    recorded = sub.record()
    expected = _by_hand(tiny, sub.probe_inputs)
    for name in ("conv", "fc"):
        torch.testing.assert_close(recorded[name], expected[name])


def test_a_subscriber_moved_to_another_exporters_bus_runs_that_model() -> None:
    """Detached from one Exporter's bus and attached to another's, the subscriber probes the
    new model (its activations at initialisation too), not the old one."""
    torch.manual_seed(0)
    probe = torch.randn(32, 4)
    first = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    second = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    old, new = ik.Exporter(first), ik.Exporter(second)
    sub = BatchedSVCCASubscriber(probe, 16, batch_size=8, message_bus=old.message_bus, backend=None)
    sub.detach()
    assert sub.model_access is None
    sub.attach(new.message_bus)
    assert sub.model_access is new
    with torch.no_grad():
        expected = second(sub.probe_inputs)
    torch.testing.assert_close(sub.record()["2"], expected)
    torch.testing.assert_close(sub._initial["2"], expected)
    old.close()
    new.close()


class _PerImageNormalised(nn.Module):
    """Scales each image's features by the image's largest pixel: a blank image gives 0/0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.flatten(1).abs().amax(dim=1)
        return self.fc(F.relu(self.conv(x)).flatten(1) / scale[:, None])


def test_probe_points_the_model_cannot_score_are_left_out_not_the_layer(caplog) -> None:
    """A few blank images in the probe make fc's activations NaN for those points (0/0): fc's
    self-similarity is SVCCA over the other points (textbook SVCCA on them), CKA and the live
    fraction are finite, one warning names how many points were left out; conv, finite
    everywhere, is measured on every point as before."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(40, 1, 6, 6, generator=g)
    images[::8] = 0.0  # 5 blank images
    data = TensorDataset(images, torch.randint(0, 5, (40,), generator=g))
    model = _PerImageNormalised()
    opt, bus, exporter = _setup(model)
    sub = SVCCASubscriber(data, 30, message_bus=bus, backend=None, max_positions=10**6)
    got: list[tuple[str, str, float]] = []
    ik.CallbackSubscriber(
        ["self_similarity", "init_similarity", "live_fraction"],
        lambda m: got.append((m.kind, m.key, m.data.item())),
        bus,
    )
    probe = sub.probe_inputs
    blank = probe.flatten(1).abs().amax(dim=1) == 0
    assert 0 < int(blank.sum()) < len(probe) // 2  # the test can tell
    fc_by_hand = []
    x, y = data.tensors[0][~(data.tensors[0].flatten(1).abs().amax(1) == 0)], data.tensors[1]
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.svcca"):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y[: len(x)]).backward()  # trained on the others
            opt.step()
            with torch.no_grad():
                fc_by_hand.append(model(probe[~blank]))
            exporter.epoch_finished()
    values = {(kind, key): value for kind, key, value in got}
    expected = textbook_svcca(fc_by_hand[0].numpy(), fc_by_hand[1].numpy())
    assert values[("self_similarity", "fc")] == pytest.approx(expected, abs=1e-6)
    assert all(math.isfinite(v) for v in values.values())
    assert values[("live_fraction", "fc")] == 1.0
    left_out = [r.getMessage() for r in caplog.records if "probe rows" in r.getMessage()]
    assert len(left_out) == 1 and f"'fc': {int(blank.sum())} of its 30 probe rows" in left_out[0]
    assert "has non-finite activations" not in caplog.text
    exporter.close()


class _FailsSometimes(nn.Module):
    """A Linear and a head; while ``fail`` is set, the inputs whose first feature is above 1
    become infinite (a probe point the model cannot score at one checkpoint only)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            x = torch.where(x[:, :1] > 1.0, math.inf, x)
        return self.head(torch.tanh(self.inp(x)))


def _linear_cka_by_hand(x, y) -> float:
    import numpy as np

    x, y = (np.asarray(a, dtype=np.float64) for a in (x, y))
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.mark.parametrize("keep", [None, 0.9])
def test_rows_not_finite_at_one_checkpoint_are_left_out_of_both_sides(keep) -> None:
    """Probe points that fail at the second of three checkpoints only: each similarity with
    that checkpoint's matrix is measured on the points finite in both (textbook SVCCA and
    linear CKA on those rows); the third checkpoint, finite again, is measured on every point
    against initialisation."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g))
    model = _FailsSometimes()
    opt, bus, exporter = _setup(model)
    kwargs = {} if keep is None else {"keep": keep}
    sub = SVCCASubscriber(data, 40, message_bus=bus, backend=None, **kwargs)
    got: list[dict[tuple[str, str], float]] = []
    ik.CallbackSubscriber(
        ["self_similarity", "init_similarity"],
        lambda m: got[-1].__setitem__((m.kind, m.key), m.data.item()),
        bus,
    )
    probe = sub.probe_inputs
    failing = probe[:, 0] > 1.0
    assert 2 < int(failing.sum()) < len(probe) // 2  # the test can tell
    with torch.no_grad():
        by_hand = [model.inp(probe)]  # at initialisation
    x, y = data.tensors
    for epoch in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        with torch.no_grad():
            by_hand.append(model.inp(probe))
        model.fail = epoch == 1
        got.append({})
        exporter.epoch_finished()
        model.fail = False
    exporter.close()
    ok = ~failing
    if keep is None:
        expected_second = textbook_svcca(by_hand[2][ok].numpy(), by_hand[1][ok].numpy())
        expected_third = textbook_svcca(by_hand[3][ok].numpy(), by_hand[2][ok].numpy())
        assert got[1][("self_similarity", "inp")] == pytest.approx(expected_second, abs=1e-6)
        assert got[2][("self_similarity", "inp")] == pytest.approx(expected_third, abs=1e-6)
    else:  # the same reduction on the common rows as on any other pair of matrices
        from ikkuna_tune.functional.svcca import svcca_similarity

        for at in (1, 2):
            expected = svcca_similarity(by_hand[at + 1][ok], by_hand[at][ok], keep)
            assert got[at][("self_similarity", "inp")] == pytest.approx(float(expected), abs=1e-6)
    init_second = _linear_cka_by_hand(by_hand[2][ok], by_hand[0][ok])
    init_third = _linear_cka_by_hand(by_hand[3], by_hand[0])
    assert got[1][("init_similarity", "inp")] == pytest.approx(init_second, abs=1e-6)
    assert got[2][("init_similarity", "inp")] == pytest.approx(init_third, abs=1e-6)
    # repaired in one matrix only, the rows would have counted as movement
    assert got[1][("init_similarity", "inp")] < 1.0 and init_second > init_third - 0.2


def test_rows_not_finite_at_the_saved_checkpoint_are_left_out_after_a_restore() -> None:
    """As above, with the subscriber saved right after the checkpoint whose rows failed and
    restored into a fresh one (a trial restored from that report's checkpoint): the next
    similarities are measured on the rows finite in both checkpoints (textbook SVCCA and
    linear CKA), as without the restore. Without the record of which rows were repaired, a
    repaired row was compared with a real one."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g))
    model = _FailsSometimes()
    opt, bus, exporter = _setup(model)
    sub = SVCCASubscriber(data, 40, message_bus=bus, backend=None)
    probe = sub.probe_inputs
    ok = ~(probe[:, 0] > 1.0)
    with torch.no_grad():
        start = model.inp(probe)
    x, y = data.tensors
    for epoch in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        model.fail = epoch == 1
        exporter.epoch_finished()
        model.fail = False
    with torch.no_grad():
        saved = model.inp(probe)
    state = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "exporter": exporter.state_dict(),
         "sub": sub.state_dict()}
    )  # fmt: skip
    exporter.close()
    model = _FailsSometimes()
    opt, bus, exporter = _setup(model)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    exporter.load_state_dict(state["exporter"])
    restored = SVCCASubscriber(data, 40, message_bus=bus, backend=None)
    restored.load_state_dict(state["sub"])
    got: dict[tuple[str, str], float] = {}
    ik.CallbackSubscriber(
        ["self_similarity", "init_similarity"],
        lambda m: got.__setitem__((m.kind, m.key), m.data.item()),
        bus,
    )
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    exporter.epoch_finished()
    exporter.close()
    with torch.no_grad():
        now = model.inp(probe)
    expected = textbook_svcca(now[ok].numpy(), saved[ok].numpy())
    assert got[("self_similarity", "inp")] == pytest.approx(expected, abs=1e-6)
    expected_init = _linear_cka_by_hand(now, start)
    assert got[("init_similarity", "inp")] == pytest.approx(expected_init, abs=1e-6)


class _WithClassToken(nn.Module):
    """A class token (an embedding of index 0, the same for every input) added to a Linear's
    output, then a head: the token's layer does not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 4)
        self.token = nn.Embedding(1, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = self.token(torch.zeros(len(x), dtype=torch.long))
        return self.head(torch.tanh(self.inp(x) + token))


def test_a_layer_that_never_depends_on_the_input_has_no_measures_and_is_not_dead(caplog) -> None:
    torch.manual_seed(0)
    model = _WithClassToken()
    opt, bus, exporter = _setup(model)
    inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    SVCCASubscriber(inputs, 30, message_bus=bus, backend=None)
    got: list[tuple[int, str, str, float]] = []
    ik.CallbackSubscriber(
        ["self_similarity", "init_similarity", "live_fraction"],
        lambda m: got.append((m.epoch, m.kind, m.key, m.data.item())),
        bus,
    )
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.svcca"):
        for epoch in range(3):
            opt.zero_grad()
            F.cross_entropy(model(inputs), y).backward()
            opt.step()
            if epoch == 2:  # inp collapses: every output the same (it varied at initialisation)
                with torch.no_grad():
                    model.inp.weight.zero_()
            exporter.epoch_finished()
    assert model.token.weight.grad is not None and model.token.weight.grad.abs().sum() > 0
    # while the network's output varies: nothing for the token, not 0
    assert {key for epoch, _, key, _ in got if epoch < 2} == {"inp", "head"}
    told = [
        r.getMessage() for r in caplog.records if "same output for every probe" in r.getMessage()
    ]
    assert len(told) == 1 and "'token'" in told[0]
    # once the output is the same for every input, the network is dead, the token too
    live = {key: value for epoch, kind, key, value in got if epoch == 2 and kind == "live_fraction"}
    assert live == {"inp": 0.0, "token": 0.0, "head": 0.0}
    exporter.close()


class _TemperatureLast(nn.Module):
    """A learned temperature (an embedding of index 0) applied last: the last layer the probe
    calls does not depend on the input, the network's output does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.temp = nn.Embedding(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / (1 + self.temp(torch.zeros(len(x), dtype=torch.long)).abs())


def test_an_input_independent_last_layer_is_not_dead_while_the_output_varies() -> None:
    torch.manual_seed(0)
    model = _TemperatureLast()
    opt, bus, exporter = _setup(model)
    inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    SVCCASubscriber(inputs, 30, message_bus=bus, backend=None)
    got: list[tuple[str, str]] = []
    ik.CallbackSubscriber(["live_fraction"], lambda m: got.append((m.key, m.data.item())), bus)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(inputs), torch.zeros(40, dtype=torch.long)).backward()
        opt.step()
        exporter.epoch_finished()
    assert exporter.layer_order == ["fc", "temp"]
    assert got == [("fc", 1.0), ("fc", 1.0)]  # nothing for temp, not 0
    exporter.close()


def _live_published(model: nn.Module, batch_size: int, **exporter_kwargs) -> list[dict]:
    """Two epochs of full-batch training on 35 probe points; the live fractions published at
    each checkpoint."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus, **exporter_kwargs)
    inputs = torch.randn(35, 6, generator=torch.Generator().manual_seed(1))
    BatchedSVCCASubscriber(inputs, 35, batch_size=batch_size, message_bus=bus, backend=None)
    got: dict[int, dict[str, float]] = {}
    ik.CallbackSubscriber(
        ["live_fraction"], lambda m: got.setdefault(m.epoch, {}).update({m.key: m.data.item()}), bus
    )
    for _ in range(2):
        opt.zero_grad()
        out = exporter.output_tensor(model(inputs))
        F.cross_entropy(out, torch.zeros(35, dtype=torch.long)).backward()
        opt.step()
        exporter.epoch_finished()
    exporter.close()
    return [got[epoch] for epoch in sorted(got)]


def test_a_network_dead_from_initialisation_is_dead_in_batches_of_any_size() -> None:
    """Every ReLU off from the start: the head gives the same output for every input, the
    bias aside (rounding differs between batch sizes, 32 + 3 here)."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    for live in _live_published(model, batch_size=32):
        assert live == {"0": 1.0, "2": 0.0}  # dead, and said so


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor


class _TokenNet(_WithClassToken):
    def forward(self, x: torch.Tensor) -> _Out:  # type: ignore[override]
        return _Out(super().forward(x))


def test_an_input_independent_layer_of_a_model_with_an_output_fn_is_not_dead() -> None:
    for live in _live_published(_TokenNet(), batch_size=4, output_fn=lambda o: o.logits):
        assert live == {"inp": 1.0, "head": 1.0}  # nothing for the class token, not 0


def test_a_data_set_of_several_inputs_per_item_is_refused_with_what_to_do() -> None:
    from torch.utils.data import Dataset

    class TokensAndMask(Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            return (torch.zeros(5, dtype=torch.long), torch.ones(5)), 0

    with pytest.raises(ValueError, match=r"the input of item \d+ is tuple") as raised:
        SVCCASubscriber(TokensAndMask(), 4, backend=None)
    assert "pass a `forward_fn` that splits it" in str(raised.value)


def test_a_probe_with_no_more_rows_than_features_is_warned_about_once(caplog) -> None:
    """32 probe points for a 64-wide layer: CCA finds correlations of 1 whatever the data
    (two unrelated random layers read 1.0 here), which one warning per layer says."""
    from ikkuna_tune.functional.svcca import svcca_similarity

    g = torch.Generator().manual_seed(0)
    unrelated = svcca_similarity(
        torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g), keep=1.0
    )
    assert float(unrelated) == pytest.approx(1.0)  # the shortage, not similarity
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))
    _, bus, exporter = _setup(model)
    SVCCASubscriber(torch.randn(40, 6, generator=g), 32, message_bus=bus, backend=None)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers.svcca"):
        for _ in range(2):
            model(torch.randn(4, 6))
            exporter.epoch_finished()
    said = [r.getMessage() for r in caplog.records if "rows for" in r.getMessage()]
    assert said == [said[0]] and "Layer '0': the probe gives 32 rows for 64 features" in said[0]
    exporter.close()


@pytest.mark.parametrize("track_init", [True, False])
def test_probe_data_the_model_cannot_take_is_refused_where_the_model_is_given(
    track_init: bool,
) -> None:
    """A 3-channel probe for a 1-channel model: refused when the subscriber is bound to the
    model, naming the subscriber, with or without ``track_init`` (without it, one epoch trained and
    then epoch_finished() raised torch's own error)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    probe = TensorDataset(torch.randn(10, 3, 8, 8), torch.zeros(10, dtype=torch.long))
    bus = MessageBus()
    with ik.Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1), bus):
        with pytest.raises(ValueError, match=r"SVCCASubscriber cannot run the model on its"):
            ik.SVCCASubscriber(probe, n=10, message_bus=bus, backend=None, track_init=track_init)


@pytest.mark.parametrize("name", ["a", "a#2"])
def test_a_layer_named_like_a_call_is_judged_by_its_own_similarity(name: str) -> None:
    """A ModuleDict key 'a#2' with no layer 'a' is a layer of its own: at a similarity far below
    freeze_at it is not frozen (read as a later call of a layer 'a' that does not exist, it had
    no calls to judge, and all() of none froze it)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d = nn.ModuleDict({name: nn.Linear(4, 4), "b": nn.Linear(4, 3)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.d["b"](torch.relu(self.d[name](x)))

    with ik.Exporter(Net()) as exporter:
        svcca = SVCCASubscriber(
            torch.randn(32, 4), 16, message_bus=exporter.message_bus, backend=None, freeze_at=0.99
        )
        svcca._freeze({f"d.{name}": 0.10, "d.b": 0.10}, {})
        assert not exporter.frozen
        svcca._freeze({f"d.{name}": 0.999, "d.b": 0.10}, {})  # settled: frozen
        assert list(exporter.frozen) == [f"d.{name}"]
