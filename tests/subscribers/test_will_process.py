"""Publishers skip computing what every subscription would thin out (``will_process``)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import ModuleMessage, NamedModule


def test_will_process_follows_tag_and_subsample() -> None:
    bus = MessageBus()
    sub = ik.CallbackSubscriber(["weights"], lambda m: None, bus, subsample=3)
    (subscription,) = sub.subscriptions
    pattern = []
    for step in range(7):
        pattern.append(bus.will_process("weights", "fc"))
        msg = ModuleMessage("weights", "default", step, step, 0, None, NamedModule("fc", None))
        bus.publish(msg)
    assert pattern == [True, False, False, True, False, False, True]
    assert not bus.will_process("weights", "fc", tag="eval")
    assert not bus.will_process("biases", "fc")  # nobody subscribed
    assert subscription.will_process("conv", "weights", "default")  # counted per layer


def test_synchronized_will_process_counts_bundles() -> None:
    bus = MessageBus()
    sub = ik.CallbackSubscriber(["weights", "weight_updates"], lambda b: None, bus,
                                synchronized=True, subsample=2)  # fmt: skip
    fc = NamedModule("fc", None)
    pattern, stepless = [], []
    for step in range(4):
        for kind in ("weights", "weight_updates"):
            pattern.append(bus.will_process(kind, "fc", "default", step))
            stepless.append(bus.will_process(kind, "fc"))
            bus.publish(ModuleMessage(kind, "default", step, step, 0, None, fc))
    assert pattern == [True, True, False, False, True, True, False, False]
    # without the step, a message may be another forward pass of the step just delivered
    assert stepless == [True, True, True, False, True, True, True, False]
    assert sub.subscriptions[0].will_process("fc", "weights", "probe") is False


def test_unknown_subscription_subclass_is_assumed_to_look() -> None:
    class Everything(ik.Subscription):
        def receive_message(self, message) -> None:
            self.subscriber.receive_message(message)

    sub = ik.CallbackSubscriber(["weights"], lambda m: None, subsample=5)
    custom = Everything(sub, ["weights"], subsample=5)
    custom.counter[("fc", "weights")] = 1
    assert custom.will_process("fc", "weights", "default")


def test_skipped_updates_are_published_without_data(tiny, batch) -> None:
    class Recorder(ik.Subscription):
        """Sees every message, but declares it never looks at the data."""

        def receive_message(self, message) -> None:
            seen.append((message.key, message.global_step, message.data))

        def will_process(self, key, kind, tag) -> bool:
            return False

    seen: list = []
    bus = MessageBus()
    ratio = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, subsample=2)
    holder = ik.CallbackSubscriber(["loss"], lambda m: None)
    holder.subscriptions.append(Recorder(holder, ["weight_updates"]))
    holder.attach(bus)
    got = []
    ik.CallbackSubscriber([ratio.published_kind], lambda m: got.append(m.global_step), bus)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(5):
            opt.zero_grad()
            loss_fn(tiny(batch[0]), batch[1]).backward()
            opt.step()
    computed = {(k, s): d is not None for k, s, d in seen}
    assert computed == {(k, s): s % 2 == 0 for k in ("conv", "fc") for s in range(5)}
    assert got == [0, 0, 2, 2, 4, 4]


def _weights(step: int, data=None) -> ModuleMessage:
    return ModuleMessage("weights", "default", step, step, 0, data, NamedModule("fc", None))


def test_skip_counts_thinned_messages_like_publishing_them() -> None:
    # one bus publishes everything, the other asks skip() first: both deliver the same steps
    delivered: dict[str, list[int]] = {"all": [], "skip": []}
    buses = {name: MessageBus(name) for name in delivered}
    for name, bus in buses.items():
        ik.CallbackSubscriber(
            ["weights"], lambda m, name=name: delivered[name].append(m.global_step), bus,
            subsample=3,
        )  # fmt: skip
    skipped = []
    for step in range(8):
        buses["all"].publish(_weights(step))
        skip = buses["skip"].skip("weights", "fc")
        skipped.append(skip)
        if not skip:
            buses["skip"].publish(_weights(step))
    assert delivered["all"] == delivered["skip"] == [0, 3, 6]
    assert skipped == [False, True, True, False, True, True, False, True]
    assert buses["skip"].skip("biases", "fc")  # nobody subscribed: nothing to build


def test_skip_never_drops_what_a_bundle_or_another_tag_needs() -> None:
    bus = MessageBus()
    plain = ik.CallbackSubscriber(["weights"], lambda m: None, bus, subsample=2)
    bundles: list = []
    ik.CallbackSubscriber(["weights", "weight_updates"], bundles.append, bus, synchronized=True)
    for step in range(3):
        assert not bus.skip("weights", "fc")  # the bundle needs every step's message
        bus.publish(_weights(step))
        bus.publish(
            ModuleMessage("weight_updates", "default", step, step, 0, None, _weights(0).module)
        )
    assert [b.global_step for b in bundles] == [0, 1, 2]
    (subscription,) = plain.subscriptions
    assert subscription.counter[("fc", "weights")] == 3
    # another tag: nobody here receives it, and no counter moves
    assert bus.skip("weights", "fc", tag="eval")
    assert subscription.counter[("fc", "weights")] == 3


def _stream(seed: int, steps: int = 40) -> list[tuple[int, str, str]]:
    """Messages (step, layer, kind) of a random run: some steps miss a kind for a layer (a
    frozen layer publishes no gradients), some repeat one (gradient accumulation)."""
    rng = random.Random(seed)
    events = []
    for step in range(steps):
        for layer in ("conv", "fc"):
            for kind in ("weights", "weight_gradients"):
                for _ in range(rng.choice([0, 1, 1, 1, 1, 2])):
                    events.append((step, layer, kind))
    return events


@pytest.mark.parametrize("subsample", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_skip_with_step_delivers_the_same_bundles(subsample: int, seed: int) -> None:
    # reference: every message is built and published; the other bus asks skip() with the step
    # first and builds a message only when some subscription needs it
    got: dict[str, list[tuple[str | None, int]]] = {"all": [], "skip": []}
    buses = {name: MessageBus(name) for name in got}
    for name, bus in buses.items():
        ik.CallbackSubscriber(
            ["weights", "weight_gradients"],
            lambda b, name=name: got[name].append((b.key, b.global_step)),
            bus, synchronized=True, subsample=subsample,
        )  # fmt: skip
    built = 0
    for step, layer, kind in _stream(seed):
        module = NamedModule(layer, None)
        buses["all"].publish(ModuleMessage(kind, "default", step, step, 0, None, module))
        if not buses["skip"].skip(kind, layer, "default", step):
            built += 1
            buses["skip"].publish(ModuleMessage(kind, "default", step, step, 0, None, module))
    assert got["skip"] == got["all"]
    assert len(got["all"]) > 2
    if subsample > 1:  # the skipped bundles' messages were never built
        assert built < len(_stream(seed)) * 0.8


def _bundles_by_hand(
    events: list[tuple[int, str, str]], kinds: tuple[str, ...], subsample: int
) -> list[tuple[str, int]]:
    """The (layer, step) of each synchronised bundle ``subsample`` delivers, by the documented
    rule: a bundle completes when it holds every kind of its step (a repeated kind replaces
    the earlier one); a step counts once however many bundles it completes (the passes of
    gradient accumulation), and every ``subsample``-th such step is delivered, all its bundles."""
    open_kinds: dict[str, tuple[int, set[str]]] = {}
    steps_done: dict[str, list[int]] = {}
    delivered = []
    for step, layer, kind in events:
        held = open_kinds.get(layer)
        if held is None or held[0] != step:
            held = open_kinds[layer] = (step, set())
        held[1].add(kind)
        if held[1] == set(kinds):
            del open_kinds[layer]
            done = steps_done.setdefault(layer, [])
            if not done or done[-1] != step:
                done.append(step)
            if (len(done) - 1) % subsample == 0:
                delivered.append((layer, step))
    return delivered


@pytest.mark.parametrize("subsample", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_subsampling_with_several_passes_per_step_counts_steps(subsample: int, seed: int) -> None:
    rng = random.Random(seed)
    events = []
    for step in range(40):  # one to three forward passes per step, a kind sometimes missing
        for _ in range(rng.choice([1, 2, 2, 3])):
            for layer in ("conv", "fc"):
                for kind in ("activations", "layer_gradients"):
                    if rng.random() < 0.93:
                        events.append((step, layer, kind))
    kinds = ("activations", "layer_gradients")
    expected = _bundles_by_hand(events, kinds, subsample)
    got: dict[str, list[tuple[str | None, int]]] = {"all": [], "skip": []}
    buses = {name: MessageBus(name) for name in got}
    for name, bus in buses.items():
        ik.CallbackSubscriber(
            list(kinds), lambda b, name=name: got[name].append((b.key, b.global_step)),
            bus, synchronized=True, subsample=subsample,
        )  # fmt: skip
    for step, layer, kind in events:
        message = ModuleMessage(kind, "default", step, step, 0, None, NamedModule(layer, None))
        buses["all"].publish(message)
        if not buses["skip"].skip_all(kind, (layer,), "default", step):
            buses["skip"].publish(message)
    assert got["all"] == expected
    assert got["skip"] == expected
    assert len(expected) > 10


def _copy(update: torch.Tensor | None) -> torch.Tensor | None:
    """An update kept past its message (the Exporter reuses its buffers)."""
    return None if update is None else update.clone()


@pytest.mark.parametrize("subsample", [1, 2])
def test_an_optimizer_stepping_twice_in_a_step_publishes_both_updates(subsample: int) -> None:
    """One optimizer steps twice before the other steps once (a critic's steps): the step's
    two updates of its layer are two bundles of one round, both with their data, equal to
    the weights' change by each of the two steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    first = torch.optim.SGD(model[0].parameters(), 0.1, momentum=0.9)
    second = torch.optim.SGD(model[2].parameters(), 0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    bus, got = MessageBus(), []
    ik.CallbackSubscriber(
        ["weight_updates"],
        lambda b: got.append((b.key, b.global_step, _copy(b["weight_updates"]))),
        bus, synchronized=True, subsample=subsample,
    )  # fmt: skip
    changes = []
    with ik.Exporter(model, [first, second], bus):
        for _ in range(4):
            first.zero_grad()
            second.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for _ in range(2):
                before = model[0].weight.detach().clone()
                first.step()
                changes.append(model[0].weight.detach() - before)
            second.step()
    mine = [(step, update) for key, step, update in got if key == "0"]
    kept = [s for s in range(4) if s % subsample == 0]
    assert [step for step, _ in mine] == [s for s in kept for _ in range(2)]
    for (step, update), pass_ in zip(mine, [p for _ in kept for p in range(2)]):
        assert update is not None, (step, pass_)
        torch.testing.assert_close(update, changes[2 * step + pass_])


def test_subsampled_ratio_builds_no_messages_on_skipped_steps(tiny, batch) -> None:
    built: list[tuple[str, int]] = []
    bus = MessageBus()
    original = bus.publish

    def counting_publish(message) -> None:
        built.append((message.kind, message.global_step))
        original(message)

    bus.publish = counting_publish  # type: ignore[method-assign]
    ratio = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, subsample=4)
    fc: dict[int, torch.Tensor] = {}
    ik.CallbackSubscriber(
        [ratio.published_kind],
        lambda m: fc.update({m.global_step: m.data}) if m.key == "fc" else None,
        bus,
    )
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    before = []
    with ik.Exporter(tiny, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(9):
            before.append(tiny.fc.weight.detach().clone())
            opt.zero_grad()
            loss_fn(tiny(batch[0]), batch[1]).backward()
            opt.step()
    weight_steps = sorted({s for k, s in built if k in ("weights", "weight_updates")})
    assert weight_steps == [0, 4, 8]
    after = [*before[1:], tiny.fc.weight.detach()]
    assert sorted(fc) == [0, 4, 8]
    for step, value in fc.items():
        expected = (after[step] - before[step]).norm() / before[step].norm()
        torch.testing.assert_close(value, expected)


def _grouped_stream(seed: int, steps: int = 40) -> list[tuple[int, str, str, tuple[str, ...]]]:
    """Per step and kind, the layers that publish (as an Exporter does, all layers at once):
    a layer may be missing (frozen), a kind may come twice in a step (accumulation)."""
    rng = random.Random(seed)
    groups = []
    for step in range(steps):
        for kind in ("weights", "weight_gradients"):
            for _ in range(rng.choice([1, 1, 1, 2])):
                layers = tuple(layer for layer in ("conv", "fc", "out") if rng.random() < 0.85)
                groups.append((step, "default", kind, layers))
    return groups


def _steady_stream(seed: int, steps: int = 150) -> list[tuple[int, str, str, tuple[str, ...]]]:
    """(step, tag, kind, layers) groups of a long run: mostly every layer every step, now and then
    a layer missing (frozen), a kind twice in a step (accumulation), or a probe pass."""
    rng = random.Random(seed)
    layers = ("conv", "fc", "out")
    groups = []
    for step in range(steps):
        for kind in ("weights", "weight_gradients"):
            for _ in range(1 + (rng.random() < 0.05)):
                keep = layers if rng.random() < 0.97 else tuple(x for x in layers if x != "conv")
                groups.append((step, "default", kind, keep))
        if rng.random() < 0.03:
            groups.append((step, "probe", "weights", layers))
    return groups


def _message(kind: str, step: int, layer: str, tag: str = "default") -> ModuleMessage:
    return ModuleMessage(kind, tag, step, step, 0, None, NamedModule(layer, None))


def _recording_buses(subsample: int, every_tag: bool) -> tuple[dict, dict]:
    """Two buses with the same subscribers, recording what they deliver: one will get every
    message, the other :meth:`MessageBus.skip_all` first (see :func:`_publish`)."""
    got: dict[str, list[tuple]] = {"all": [], "skip_all": []}
    buses = {name: MessageBus(name) for name in got}
    for name, bus in buses.items():
        ik.CallbackSubscriber(
            ["weights", "weight_gradients"],
            lambda b, name=name: got[name].append(("bundle", b.key, b.global_step)),
            bus, synchronized=True, subsample=subsample,
        )  # fmt: skip
        ik.CallbackSubscriber(
            ["weights"],
            lambda m, name=name: got[name].append(("plain", m.key, m.global_step, m.tag)),
            bus, subsample=subsample + 1,
        )  # fmt: skip
        if every_tag:  # probe messages move its counters too
            ik.CallbackSubscriber(
                ["weight_gradients", "weights"],
                lambda m, name=name: got[name].append(
                    ("any", m.key, m.kind, m.global_step, m.tag)
                ),
                bus, tag=None, subsample=subsample,
            )  # fmt: skip
    return got, buses


def _publish(buses: dict, groups: list[tuple[int, str, str, tuple[str, ...]]]) -> dict[str, int]:
    """Publish every message on ``buses['all']``; on ``buses['skip_all']`` ask ``skip_all`` per
    group and, when something is needed, ``skip`` per layer, building only what is needed.
    Returns how many messages were built, groups skipped whole, and groups only noted (counted
    without asking a subscription)."""
    bus = buses["skip_all"]
    counts = {"built": 0, "skipped": 0, "noted": 0}
    for step, tag, kind, layers in groups:
        for layer in layers:
            buses["all"].publish(_message(kind, step, layer, tag))
        waiting = len(bus._deferred)
        if bus.skip_all(kind, layers, tag, step):
            counts["skipped"] += 1
            counts["noted"] += len(bus._deferred) > waiting
            continue
        for layer in layers:  # some layer is needed: go one by one
            if not bus.skip(kind, layer, tag, step):
                counts["built"] += 1
                bus.publish(_message(kind, step, layer, tag))
    return counts


@pytest.mark.parametrize("subsample", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_skip_all_delivers_what_publishing_everything_delivers(subsample: int, seed: int) -> None:
    got, buses = _recording_buses(subsample, every_tag=False)
    groups = _grouped_stream(seed)
    counts = _publish(buses, groups)
    assert got["skip_all"] == got["all"]
    assert len(got["all"]) > 5
    if subsample > 1:  # some groups cost one call, and fewer messages were built
        assert counts["skipped"] > 0
        assert counts["built"] < sum(len(layers) for _, _, _, layers in groups)


@pytest.mark.parametrize("subsample", [1, 3, 8])
@pytest.mark.parametrize("seed", range(3))
def test_counting_without_asking_delivers_what_publishing_everything_delivers(
    subsample: int, seed: int
) -> None:
    # while the subscriptions' allowance (quiet_for) lasts, skip_all only notes the messages; the
    # subscriptions count them later. Reference: a bus that builds and publishes every message.
    got, buses = _recording_buses(subsample, every_tag=True)
    counts = _publish(buses, _steady_stream(seed))
    assert got["skip_all"] == got["all"]
    assert len(got["all"]) > 20
    if subsample > 3:  # the fast path was taken
        assert counts["noted"] > 0


def test_will_process_any_is_will_process_of_some_key() -> None:
    bus = MessageBus()
    bus_sub = ik.CallbackSubscriber(["weights"], lambda m: None, bus, subsample=2)
    (subscription,) = bus_sub.subscriptions
    subscription.counter[("fc", "weights")] = 1  # fc's next message is thinned out
    assert not bus.will_process("weights", "fc")
    assert bus.will_process_any("weights", ["fc", "conv"])  # conv's is not
    assert not bus.will_process_any("weights", ["fc"])
    assert not bus.will_process_any("weights", [])
    assert not bus.will_process_any("biases", ["conv"])  # nobody subscribed


def test_skip_all_follows_a_subclass_rule() -> None:
    class ConvOnly(ik.Subscription):
        """Needs conv's messages, whatever the subsampling says."""

        def needs_data(self, key, kind, tag, step=None) -> bool:
            return key == "conv"

    bus = MessageBus()
    holder = ik.CallbackSubscriber(["loss"], lambda m: None)
    rule = ConvOnly(holder, ["weights"], subsample=3)
    holder.subscriptions.append(rule)
    holder.attach(bus)
    assert not bus.skip_all("weights", ["fc", "conv"], "default", 0)
    assert rule.counter == {}  # something is needed: nothing is counted
    assert bus.skip_all("weights", ["fc"], "default", 0)
    assert rule.counter == {("fc", "weights"): 1}


def test_a_steady_run_asks_the_subscriptions_twice_per_period() -> None:
    # every 16th step is delivered; the step after it is counted by asking the subscriptions,
    # which allow the 14 steps up to the next delivery to be only noted
    bus = MessageBus()
    got = []
    ik.CallbackSubscriber(["weights"], lambda m: got.append((m.key, m.global_step)), bus,
                          subsample=16)  # fmt: skip
    ik.CallbackSubscriber(["weights"], lambda b: got.append((b.key, b.global_step)),
                          bus, synchronized=True, subsample=16)  # fmt: skip
    layers = ("conv", "fc")
    noted = 0
    for step in range(64):
        waiting = len(bus._deferred)
        if bus.skip_all("weights", layers, "default", step):
            noted += len(bus._deferred) > waiting
        else:
            for layer in layers:
                assert not bus.skip("weights", layer, "default", step)
                bus.publish(_message("weights", step, layer))
    assert noted == 4 * 14
    # each layer's message, then its one-message bundle
    assert got == [(layer, step) for step in (0, 16, 32, 48) for layer in layers for _ in "mb"]
    bus.flush()  # settles the noted counts
    (plain,) = bus.subscribers[0].subscriptions
    assert plain.counter == {("conv", "weights"): 64, ("fc", "weights"): 64}


@pytest.mark.parametrize("seed", range(6))
def test_will_process_without_the_step_never_denies_a_delivered_bundle(seed: int) -> None:
    """Asked without the step (a subclass's will_process that takes none), a synchronised
    subscription may say yes to a bundle that is then dropped, never no to one delivered, also
    with incomplete bundles left over from earlier steps and several passes per step."""
    rng = random.Random(seed)
    bus, delivered = MessageBus(), set()
    ik.CallbackSubscriber(
        ["activations", "weight_updates"],
        lambda b: delivered.update(id(m) for m in b.messages.values()),
        bus, synchronized=True, subsample=2,
    )  # fmt: skip
    denied, kept = [], []  # (every message kept alive: their ids stay unique)
    for step in range(60):
        for _ in range(rng.choice([1, 1, 2, 3])):
            for kind in ("activations", "weight_updates"):
                if rng.random() < 0.85:
                    message = ModuleMessage(kind, "default", step, step, 0, None,
                                            NamedModule("fc", None))  # fmt: skip
                    kept.append(message)
                    if not bus.will_process(kind, "fc"):
                        denied.append(message)
                    bus.publish(message)
    assert denied and delivered  # both answers came up
    assert not [m for m in denied if id(m) in delivered]
