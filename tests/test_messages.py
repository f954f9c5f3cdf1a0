from __future__ import annotations

import pytest
import torch
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import (
    DATA_KINDS,
    META_KINDS,
    Message,
    MessageBundle,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)


def test_each_bus_owns_its_topics() -> None:
    a, b = MessageBus(), MessageBus()
    a.register_kind("weights_norm2")
    assert "weights_norm2" in a.known_kinds
    assert "weights_norm2" not in b.known_kinds
    assert set(DATA_KINDS) <= b.data_kinds and set(META_KINDS) <= b.meta_kinds


def test_unknown_kind_raises_at_subscription_naming_known_kinds() -> None:
    bus = MessageBus()
    with pytest.raises(
        ValueError, match=r"Unknown message kind\(s\) \['weights_norm2'\].*'weights'"
    ):
        ik.CallbackSubscriber(["weights_norm2"], lambda m: None, bus)
    assert bus.subscribers == ()


def test_registered_topic_can_be_subscribed_and_is_removed_with_its_owner() -> None:
    bus = MessageBus()

    class Publisher(ik.Subscriber):
        def __init__(self) -> None:
            super().__init__([ik.Subscription(self, ["loss"])])
            self._add_publication("loss_twice", "META")

    publisher = Publisher()
    publisher.attach(bus)
    got = []
    ik.CallbackSubscriber(["loss_twice"], got.append, bus)
    assert "loss_twice" in bus.meta_kinds
    publisher.detach()
    assert "loss_twice" not in bus.known_kinds


def test_topic_conflicts_and_bad_topics() -> None:
    bus = MessageBus()
    bus.register_kind("x", owner="a")
    with pytest.raises(ValueError, match="already published"):
        bus.register_kind("x", owner="b")
    with pytest.raises(ValueError, match="built-in"):
        bus.register_kind("weights")
    with pytest.raises(ValueError, match="'DATA' or 'META'"):
        bus.register_kind("y", "OTHER")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected a meta kind"):
        bus.publish_network_message("weights", None, global_step=0, train_step=0, epoch=0)


def test_module_message_and_bundle() -> None:
    named = NamedModule("fc", nn.Linear(2, 2))
    w = ModuleMessage("weights", "default", 3, 1, 0, "W", named)
    g = ModuleMessage("weight_gradients", "default", 3, 1, 0, "G", named)
    assert w.module.name == "fc" and w.key == "fc"
    bundle = MessageBundle("fc", ["weights", "weight_gradients"])
    bundle.add_message(w)
    assert not bundle.complete()
    bundle.add_message(g)
    assert bundle.complete()
    assert bundle["weights"] == "W" and bundle["weight_gradients"] == "G"
    assert bundle.global_step == 3 and bundle.module == named
    other = ModuleMessage("weights", "default", 4, 1, 0, "W", named)
    with pytest.raises(ValueError, match="already holds"):
        bundle.add_message(other)
    fresh = MessageBundle("fc", ["weights", "weight_gradients"])
    fresh.add_message(w)
    with pytest.raises(ValueError, match="step 3 but got step 4"):
        fresh.add_message(ModuleMessage("weight_gradients", "default", 4, 1, 0, "G", named))
    with pytest.raises(KeyError, match="No 'loss' message"):
        fresh["loss"]
    with pytest.raises(ValueError, match="NamedModule"):
        ModuleMessage("weights", "default", 0, 0, 0, None, "fc")  # type: ignore[arg-type]


def test_shared_reductions_are_computed_once_per_delivery() -> None:
    bus = MessageBus()
    calls: list[torch.Tensor] = []
    results: list[torch.Tensor] = []

    def norm(data: torch.Tensor) -> torch.Tensor:
        calls.append(data)
        return torch.linalg.vector_norm(data)

    def reduce(message: Message) -> None:
        results.append(bus.shared(message, "norm2", norm))

    ik.CallbackSubscriber(["loss"], reduce, bus)
    ik.CallbackSubscriber(["loss"], reduce, bus)
    for step, value in enumerate([3.0, 4.0]):
        bus.publish_network_message(
            "loss", torch.tensor([value]), global_step=step, train_step=step, epoch=0
        )
    assert len(calls) == 2  # once per message, not once per subscriber
    assert results[0] is results[1] and results[2] is results[3]
    assert [float(r) for r in results] == [3.0, 3.0, 4.0, 4.0]
    # outside a delivery there is nothing to share: the function simply runs
    message = NetworkMessage("loss", "default", 0, 0, 0, torch.tensor([5.0]))
    assert float(bus.shared(message, "norm2", norm)) == 5.0 and len(calls) == 3


def test_norm_and_ratio_share_the_weight_norm(tiny, batch) -> None:
    import torch.nn.functional as F

    bus = MessageBus()
    norms = ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[str, list[torch.Tensor]] = {"weights_norm2": [], "weight_updates_weights_ratio": []}
    ik.CallbackSubscriber(list(got), lambda m: got[m.kind].append(m.data), bus)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with ik.Exporter(tiny, opt, bus) as exporter:
        before = tiny.fc.weight.detach().clone()
        opt.zero_grad()
        exporter.wrap_loss(F.cross_entropy)(tiny(batch[0]), batch[1]).backward()
        opt.step()
    assert norms.shared_as == "norm2"
    w_norm = torch.linalg.vector_norm(before)
    update = torch.linalg.vector_norm(tiny.fc.weight.detach() - before)
    torch.testing.assert_close(got["weights_norm2"][1], w_norm)
    torch.testing.assert_close(got["weight_updates_weights_ratio"][1], update / w_norm)


def test_flags_of_the_bus_and_callbacks_are_true_or_false() -> None:
    """A string such as "False" is truthy: it switched the flag on."""
    with pytest.raises(ValueError, match="`draw` to be True or False but got 'False'"):
        MessageBus(draw="False")
    with pytest.raises(ValueError, match="`synchronized` to be True or False but got 'False'"):
        ik.CallbackSubscriber(["loss"], print, synchronized="False")
