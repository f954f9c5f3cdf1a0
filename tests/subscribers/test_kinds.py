"""Message kinds are checked where a subscription is made, with a "did you mean"."""

from __future__ import annotations

import re

import pytest

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import DATA_KINDS, META_KINDS


@pytest.mark.parametrize(
    ("make", "typo", "meant"),
    [
        (lambda: ik.NormSubscriber("weight_gradient"), "weight_gradient", "weight_gradients"),
        (lambda: ik.MeanSubscriber("activation"), "activation", "activations"),
        (lambda: ik.CallbackSubscriber(["los"], print), "los", "loss"),
        (lambda: ik.RatioSubscriber(["weight_updates", "wieghts"]), "wieghts", "weights"),
    ],
)
def test_typo_of_a_builtin_kind_raises_at_construction_without_a_bus(make, typo, meant) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    message = str(caught.value)
    assert message.startswith(f"Unknown message kind(s) [{typo!r}]")
    assert f"did you mean {meant!r}?" in message
    # the known kinds it lists are the built-in ones, never a derived metric name
    listed = re.search(r"built-in kinds: \[(.*?)\]", message).group(1)
    assert set(re.findall(r"'(\w+)'", listed)) == set(DATA_KINDS) | set(META_KINDS)
    assert "_norm2" not in message and "_mean" not in message


def test_topics_derived_from_builtin_kinds_pass_construction() -> None:
    # one-character typos are errors at once; names built on a kind are other subscribers'
    # topics, checked when attached
    with pytest.raises(ValueError, match="did you mean 'weight_gradients'"):
        ik.Subscription(ik.CallbackSubscriber(["loss"], print), ["weight_gradient"])
    ik.MessageMeanSubscriber("weight_gradients_norm2")
    ik.CallbackSubscriber(["bias_updates_mean", "weight_updates_norm2"], print)
    ik.NormSubscriber("layer_gradients_spectral_norm")


def test_unknown_kind_at_attach_suggests_the_bus_topic_and_lists_builtins_apart() -> None:
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus)  # publishes weight_gradients_norm2
    with pytest.raises(ValueError) as caught:
        ik.MessageMeanSubscriber("weight_gradient_norm2", bus)
    message = str(caught.value)
    assert message.startswith("Unknown message kind(s) ['weight_gradient_norm2']")
    assert "did you mean 'weight_gradients_norm2'?" in message
    assert "kinds published on this bus: ['weight_gradients_norm2']" in message
    listed = re.search(r"built-in kinds: \[(.*?)\]", message).group(1)
    assert "norm2" not in listed
    assert [type(s).__name__ for s in bus.subscribers] == ["NormSubscriber"]


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_message_mean_of_a_whole_tensor_kind_is_refused_when_built(kind) -> None:
    # its messages never carry one number: refused here, not at the first training step
    with pytest.raises(ValueError, match=f"'{kind}_norm2'.*got '{kind}', whose messages"):
        ik.MessageMeanSubscriber(kind)


@pytest.mark.parametrize(
    ("tag", "meant"),
    [("deafult", "default"), ("Default", "default"), ("EVAL", "eval"), ("clousre", "closure")],
)
def test_typo_of_the_exporters_tag_raises_at_construction(tag: str, meant: str) -> None:
    # no message would ever carry it: the subscriber's outputs read None at every report
    with pytest.raises(ValueError, match=f"but got {tag!r}: did you mean {meant!r}"):
        ik.NormSubscriber("weights", tag=tag)


def test_a_probes_own_tag_subscribes_and_receives() -> None:
    # any other name is a probe's tag (exporter.probe('eval2')), received when it runs
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 2))
    exporter = ik.Exporter(model)
    seen: list[str] = []
    for tag in ("eval2", "svcca", "test"):
        ik.CallbackSubscriber(
            ["activations"], lambda m: seen.append(m.tag), exporter.message_bus, tag=tag
        )
    with exporter.probe("eval2"), torch.no_grad():
        model(torch.randn(4, 3))
    exporter.close()
    assert seen == ["eval2"]


def test_a_probe_refuses_the_tags_a_subscription_refuses() -> None:
    # both sides of a tag agree: a probe's messages under 'EVAL' no subscription could take
    import torch
    from torch import nn

    with ik.Exporter(nn.Sequential(nn.Linear(3, 2))) as exporter:
        with (
            pytest.raises(ValueError, match="got 'EVAL': did you mean 'eval'"),
            exporter.probe("EVAL"),
        ):
            pass
        with exporter.probe("enclosure"):  # a word of its own, not a typo
            pass
    with pytest.raises(ValueError, match="`probe_tag`.*got 'Default': did you mean 'default'"):
        ik.SVCCASubscriber(torch.randn(8, 3), 4, probe_tag="Default")
