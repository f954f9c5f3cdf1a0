from __future__ import annotations

import pytest
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.messages import MessageBundle


def test_each_bus_owns_its_topics() -> None:
    a, b = ik.MessageBus(), ik.MessageBus()
    a.register_topic("weights_norm2")
    assert "weights_norm2" in a.known_kinds
    assert "weights_norm2" not in b.known_kinds
    assert set(ik.DATA_KINDS) <= b.data_kinds and set(ik.META_KINDS) <= b.meta_kinds


def test_unknown_kind_raises_at_subscription_naming_known_kinds() -> None:
    bus = ik.MessageBus()
    with pytest.raises(
        ValueError, match=r"Unknown message kind\(s\) \['weights_norm2'\].*'weights'"
    ):
        ik.CallbackSubscriber(["weights_norm2"], lambda m: None, bus)
    assert bus.subscribers == ()


def test_registered_topic_can_be_subscribed_and_is_removed_with_its_owner() -> None:
    bus = ik.MessageBus()

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
    bus = ik.MessageBus()
    bus.register_topic("x", owner="a")
    with pytest.raises(ValueError, match="already published"):
        bus.register_topic("x", owner="b")
    with pytest.raises(ValueError, match="built-in"):
        bus.register_topic("weights")
    with pytest.raises(ValueError, match="'DATA' or 'META'"):
        bus.register_topic("y", "OTHER")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected a meta kind"):
        bus.publish_network_message("weights", None, global_step=0, train_step=0, epoch=0)


def test_module_message_and_bundle() -> None:
    named = ik.NamedModule("fc", nn.Linear(2, 2))
    w = ik.ModuleMessage("weights", "default", 3, 1, 0, "W", named)
    g = ik.ModuleMessage("weight_gradients", "default", 3, 1, 0, "G", named)
    assert w.module.name == "fc" and w.key == "fc"
    bundle = MessageBundle("fc", ["weights", "weight_gradients"])
    bundle.add_message(w)
    assert not bundle.complete()
    bundle.add_message(g)
    assert bundle.complete()
    assert bundle["weights"] == "W" and bundle["weight_gradients"] == "G"
    assert bundle.global_step == 3 and bundle.module == named
    other = ik.ModuleMessage("weights", "default", 4, 1, 0, "W", named)
    with pytest.raises(ValueError, match="already holds"):
        bundle.add_message(other)
    fresh = MessageBundle("fc", ["weights", "weight_gradients"])
    fresh.add_message(w)
    with pytest.raises(ValueError, match="step 3 but got step 4"):
        fresh.add_message(ik.ModuleMessage("weight_gradients", "default", 4, 1, 0, "G", named))
    with pytest.raises(KeyError, match="No 'loss' message"):
        fresh["loss"]
    with pytest.raises(ValueError, match="NamedModule"):
        ik.ModuleMessage("weights", "default", 0, 0, 0, None, "fc")  # type: ignore[arg-type]
