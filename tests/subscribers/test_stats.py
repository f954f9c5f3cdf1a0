"""Statistic subscribers against the same quantities computed from plain tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import ModuleMessage, NamedModule
from tests.conftest import TinyNet

LAYERS = ("conv", "fc")


def _collect(bus, topic, tag="default"):
    """(key, global_step, data) of every message published under ``topic``."""
    got = []
    ik.CallbackSubscriber([topic], lambda m: got.append((m.key, m.global_step, m.data)), bus, tag)
    return got


def _train(model, bus, batch, steps=3, lr=0.1, momentum=0.9, weight_decay=0.01):
    """Train ``steps`` steps; return per step the parameters before/after and the gradients."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    x, y = batch
    record = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(steps):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.zero_grad()
            output = model(x)
            loss = loss_fn(output, y)
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            record.append(
                {
                    "before": before,
                    "grads": grads,
                    "after": after,
                    "loss": loss.detach(),
                    "output": output.detach(),
                }
            )
        exporter.epoch_finished()
    return record


def _values(got, key):
    return [d for k, _, d in got if k == key]


def test_norm_mean_variance_match_plain_tensors(tiny, batch) -> None:
    bus = MessageBus()
    subs = [
        ik.NormSubscriber("weights", bus, backend=None),
        ik.NormSubscriber("weight_gradients", bus, backend=None, order=1),
        ik.NormSubscriber("weights", bus, backend=None, order=math.inf),
        ik.MeanSubscriber("weights", bus, backend=None),
        ik.VarianceSubscriber("weight_gradients", bus, backend=None),
    ]
    assert [s.published_kind for s in subs] == [
        "weights_norm2",
        "weight_gradients_norm1",
        "weights_norminf",
        "weights_mean",
        "weight_gradients_variance",
    ]
    got = {s.published_kind: _collect(bus, s.published_kind) for s in subs}
    record = _train(tiny, bus, batch)
    for layer in LAYERS:
        w = [r["before"][f"{layer}.weight"] for r in record]
        g = [r["grads"][f"{layer}.weight"] for r in record]
        cases = {
            "weights_norm2": [torch.linalg.vector_norm(t) for t in w],
            "weight_gradients_norm1": [t.abs().sum() for t in g],
            "weights_norminf": [t.abs().max() for t in w],
            "weights_mean": [t.sum() / t.numel() for t in w],
            "weight_gradients_variance": [((t - t.mean()) ** 2).sum() / (t.numel() - 1) for t in g],
        }
        for topic, expected in cases.items():
            values = _values(got[topic], layer)
            assert all(v.dim() == 0 for v in values)
            torch.testing.assert_close(torch.stack(values), torch.stack(expected))
    # one message per layer and step, at the right steps
    assert sorted((k, s) for k, s, _ in got["weights_norm2"]) == [
        (layer, step) for layer in LAYERS for step in range(3)
    ]


def test_topics_are_per_layer_or_network_wide(tiny, batch) -> None:
    bus = MessageBus()
    norm = ik.NormSubscriber("weights", bus, backend=None)
    loss_norm = ik.NormSubscriber("loss", bus, backend=None)
    assert bus.published_kinds == {"weights_norm2": norm, "loss_norm2": loss_norm}
    assert "weights_norm2" in bus.data_kinds and "loss_norm2" in bus.meta_kinds
    got = _collect(bus, "loss_norm2")
    record = _train(tiny, bus, batch, steps=2)
    assert [(k, s) for k, s, _ in got] == [(None, 0), (None, 1)]
    torch.testing.assert_close(torch.stack([d for *_, d in got]), torch.stack(
        [r["loss"].abs() for r in record]
    ))  # fmt: skip
    norm.detach()
    assert "weights_norm2" not in bus.known_kinds


def test_ratio_is_update_over_the_weights_the_step_started_from(tiny, batch) -> None:
    bus = MessageBus()
    ratio = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    bias_ratio = ik.RatioSubscriber(["bias_updates", "biases"], bus, backend=None)
    assert ratio.published_kind == "weight_updates_weights_ratio"
    assert bias_ratio.published_kind == "bias_updates_biases_ratio"
    got = _collect(bus, ratio.published_kind)
    got_bias = _collect(bus, bias_ratio.published_kind)
    record = _train(tiny, bus, batch, steps=3)
    for layer in LAYERS:
        for name, collected in ((f"{layer}.weight", got), (f"{layer}.bias", got_bias)):
            # brute force: ||W_after - W_before|| / ||W_before|| from clones around opt.step()
            expected = [
                torch.linalg.vector_norm(r["after"][name] - r["before"][name])
                / torch.linalg.vector_norm(r["before"][name])
                for r in record
            ]
            torch.testing.assert_close(
                torch.stack(_values(collected, layer)), torch.stack(expected)
            )
    # the post-update weights would give a different number: the test can tell them apart
    r = record[0]
    post = torch.linalg.vector_norm(r["after"]["fc.weight"] - r["before"]["fc.weight"])
    post = post / torch.linalg.vector_norm(r["after"]["fc.weight"])
    assert not torch.allclose(post, _values(got, "fc")[0], rtol=1e-6, atol=0)


def test_signed_ratio_is_the_projection_on_the_starting_weights(batch) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    bus = MessageBus()
    signed = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, absolute=False)
    got = _collect(bus, signed.published_kind)
    record = _train(model, bus, batch, steps=3, weight_decay=0.5)
    for layer in LAYERS:
        w = f"{layer}.weight"
        expected = [
            ((r["after"][w] - r["before"][w]) * r["before"][w]).sum() / (r["before"][w] ** 2).sum()
            for r in record
        ]
        torch.testing.assert_close(torch.stack(_values(got, layer)), torch.stack(expected))
    assert _values(got, "conv")[0].item() < 0  # strong weight decay shrinks the weights


def test_ratio_subsample_keeps_every_kth_step(tiny, batch) -> None:
    bus = MessageBus()
    ratio = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, subsample=2)
    got = _collect(bus, ratio.published_kind)
    record = _train(tiny, bus, batch, steps=5)
    assert sorted((k, s) for k, s, _ in got) == [
        (layer, step) for layer in LAYERS for step in (0, 2, 4)
    ]
    expected = [
        torch.linalg.vector_norm(
            record[s]["after"]["conv.weight"] - record[s]["before"]["conv.weight"]
        )
        / torch.linalg.vector_norm(record[s]["before"]["conv.weight"])
        for s in (0, 2, 4)
    ]
    torch.testing.assert_close(torch.stack(_values(got, "conv")), torch.stack(expected))


def test_message_mean_is_the_mean_over_layers_of_one_step(tiny, batch) -> None:
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    mean = ik.MessageMeanSubscriber("weights_norm2", bus, backend=None)
    assert mean.published_kind == "weights_norm2_message_mean"
    assert bus.published_kinds["weights_norm2_message_mean"] is mean
    assert "weights_norm2_message_mean" in bus.meta_kinds
    got = _collect(bus, mean.published_kind)
    record = _train(tiny, bus, batch, steps=3)
    assert [(k, s) for k, s, _ in got] == [(None, 0), (None, 1), (None, 2)]
    expected = [
        (
            torch.linalg.vector_norm(r["before"]["conv.weight"])
            + torch.linalg.vector_norm(r["before"]["fc.weight"])
        )
        / 2
        for r in record
    ]
    torch.testing.assert_close(torch.stack([d for *_, d in got]), torch.stack(expected))


def test_message_mean_of_float64_values_is_float64() -> None:
    """A float64 model's per-layer norms average in float64, as plain float64 arithmetic does,
    not rounded through float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    mean = ik.MessageMeanSubscriber("weights_norm2", bus, backend=None)
    got = _collect(bus, mean.published_kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = [torch.linalg.vector_norm(model[i].weight.detach()) for i in (0, 1)]
    with ik.Exporter(model, opt, bus):
        model(torch.randn(5, 3, dtype=torch.float64)).sum().backward()
        opt.step()
    ((_, _, data),) = got
    assert data.dtype == torch.float64
    assert data.item() == ((norms[0] + norms[1]) / 2).item()
    assert data.item() != ((norms[0] + norms[1]).float() / 2).item()  # the test can tell


def test_message_mean_rejects_network_and_non_scalar_kinds(tiny, batch) -> None:
    with pytest.raises(ValueError, match="per-layer kind .* network kind 'loss'"):
        ik.MessageMeanSubscriber("loss")
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    with pytest.raises(ValueError, match="'train_accuracy' is a network kind"):
        ik.MessageMeanSubscriber("train_accuracy", bus)
    assert "train_accuracy_message_mean" not in bus.known_kinds
    # a built-in whole-tensor kind: refused when built, not at the first step
    with pytest.raises(ValueError, match="one number per layer .* 'weights_norm2'"):
        ik.MessageMeanSubscriber("weights", bus, backend=None)
    # a kind of the user's own that carries vectors: refused at its first message
    bus.register_kind("layer_vector", "DATA")
    ik.MessageMeanSubscriber("layer_vector", bus, backend=None)
    layer = NamedModule("fc", torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="expects one number per message but 'layer_vector'"):
        bus.publish_module_message(
            "layer_vector", layer, torch.ones(2), global_step=0, train_step=0, epoch=0
        )


def test_spectral_norm_at_one_iteration_a_step_starts_near_the_value() -> None:
    """The default, one power iteration a message, on a layer's first weights (a random start
    vector): within 1 % of the largest singular value from the first message on."""
    from ikkuna_tune.messages import NamedModule

    torch.manual_seed(0)
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weights", bus, backend=None)
    got = _collect(bus, spectral.published_kind)
    for name, shape in (("fc", (64, 128)), ("conv", (16, 8, 3, 3)), ("head", (10, 64))):
        weights = torch.randn(shape) / shape[1] ** 0.5
        layer = NamedModule(name, nn.Linear(1, 1))
        bus.publish_module_message("weights", layer, weights, global_step=0, train_step=0, epoch=0)
        expected = torch.linalg.matrix_norm(weights.flatten(1), ord=2)
        torch.testing.assert_close(_values(got, name)[0], expected, rtol=0.01, atol=0)


def test_spectral_norm_of_activations_tracks_each_batch() -> None:
    """A batch's activations, with the default iterations: the vector carried from batch to
    batch runs over the features (a vector over the samples, carried to other samples, or
    started afresh with one iteration at an epoch's shorter last batch, read 0.66-0.86 of the
    value here). Reference: the largest singular value of each batch's activations, by SVD."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("activations", bus, backend=None)
    got = _collect(bus, spectral.published_kind)
    expected = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for size in (64, 64, 64, 10, 64, 64):  # an epoch's last batch is shorter
            x, y = torch.randn(size, 16) * 3 + 1, torch.randint(0, 4, (size,))
            with torch.no_grad():
                expected.append(torch.linalg.matrix_norm(model[0](x), ord=2))
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    ratios = [float(g / e) for g, e in zip(_values(got, "0"), expected)]
    assert len(ratios) == 6
    # 32 features, at most EXACT_SIDE: the exact value
    assert ratios == pytest.approx([1.0] * 6, abs=1e-5), ratios


def test_spectral_norm_of_gradients_is_exact_where_a_side_is_small() -> None:
    """Gradients turn from step to step: 5 power iterations carried over read a small CNN's
    fc1 gradient 37 % low at one step of 40. Where the smaller side has at most EXACT_SIDE
    entries the value is exact at every step (reference: ``torch.linalg.matrix_norm(ord=2)``
    of the gradient as ``(out, -1)``); beyond, power iteration, a lower bound, carries its
    vector (the subscriber's state) from step to step."""
    from ikkuna_tune.subscribers.stats import EXACT_SIDE

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
        nn.Linear(32, 10), nn.ReLU(), nn.Linear(10, 96),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weight_gradients", bus, backend=None)
    got = _collect(bus, spectral.published_kind)
    expected: dict[str, list[float]] = {"0": [], "3": [], "5": [], "7": []}
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(40):
            x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 96, (16,))
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            for name in expected:
                grad = model[int(name)].weight.grad
                flat = grad.reshape(len(grad), -1)
                expected[name].append(float(torch.linalg.matrix_norm(flat, 2)))
            opt.step()
    for name in ("0", "3", "5", "7"):  # sides (8, 9), (32, 288), (10, 32), (96, 10): exact
        published = [float(v) for v in _values(got, name)]
        assert published == pytest.approx(expected[name], rel=1e-4), name
    # the state holds vectors only of matrices iterated on
    assert EXACT_SIDE < 96 and spectral.state_dict()["u"] == {}
    big = nn.Linear(96, 80)
    iterated = ik.SpectralNormSubscriber("weight_gradients", MessageBus(), backend=None)
    messages = _collect(iterated.message_bus, iterated.published_kind)
    layer = NamedModule("big", big)
    for step in range(3):
        grad = torch.randn(80, 96)
        steps = {"global_step": step, "train_step": step, "epoch": 0}
        iterated.message_bus.publish_module_message("weight_gradients", layer, grad, **steps)
        true = float(torch.linalg.matrix_norm(grad, 2))
        assert 0.0 < float(messages[-1][2]) <= true * (1 + 1e-5)
    assert list(iterated.state_dict()["u"]) == ["big"]


def test_spectral_norm_converges_and_its_state_restores(tiny, batch) -> None:
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weights", bus, backend=None, n_power_iterations=60)
    assert spectral.published_kind == "weights_spectral_norm"
    got = _collect(bus, spectral.published_kind)
    record = _train(tiny, bus, batch, steps=2, lr=0.01)
    for layer in LAYERS:
        expected = [
            torch.linalg.matrix_norm(r["before"][f"{layer}.weight"].flatten(1), ord=2)
            for r in record
        ]
        torch.testing.assert_close(
            torch.stack(_values(got, layer)), torch.stack(expected), rtol=1e-4, atol=0
        )
    state = spectral.state_dict()
    assert set(state["u"]) == set(LAYERS)
    assert state["u"]["conv"].shape == (3,) and state["u"]["fc"].shape == (5,)
    # a fresh subscriber loaded with the state continues exactly where the old one stopped
    restored = ik.SpectralNormSubscriber("weights", backend=None, n_power_iterations=1)
    restored.load_state_dict(copy.deepcopy(state))
    original = ik.SpectralNormSubscriber("weights", backend=None, n_power_iterations=1)
    original.load_state_dict(state)
    w = tiny.fc.weight.detach()
    msg = ModuleMessage("weights", "default", 0, 0, 0, w, NamedModule("fc", tiny.fc))
    out = []
    for sub in (restored, original):
        b = MessageBus()
        sub.attach(b)
        ik.CallbackSubscriber([sub.published_kind], lambda m: out.append(m.data), b)
        b.publish(msg)
    torch.testing.assert_close(out[0], out[1])
    with pytest.raises(ValueError, match=r"Expected a state \{'u'"):
        restored.load_state_dict({"v": {}})


def test_histograms_reach_tensorboard_and_publish_nothing(tmp_path, tiny, batch) -> None:
    bus = MessageBus(log_dir=tmp_path)
    hist = ik.HistogramSubscriber("weight_gradients", bus, bins=8)
    per_epoch = ik.HistogramSubscriber("weights", bus, bins=4, per_epoch=True)
    assert hist.publications == {} and per_epoch.publications == {}
    record = _train(tiny, bus, batch, steps=3)
    bus.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert set(events.Tags()["histograms"]) == {
        "weight_gradients_histogram/conv",
        "weight_gradients_histogram/fc",
        "weights_histogram/conv",
        "weights_histogram/fc",
    }
    grads = events.Histograms("weight_gradients_histogram/fc")
    assert [h.step for h in grads] == [0, 1, 2]
    g = record[1]["grads"]["fc.weight"]
    value = grads[1].histogram_value
    assert value.num == g.numel()
    assert value.min == pytest.approx(g.min().item()) and value.max == pytest.approx(g.max().item())
    assert value.sum == pytest.approx(g.sum().item(), abs=1e-5)
    expected = torch.histc(g, bins=8, min=g.min().item(), max=g.max().item())
    assert list(value.bucket) == pytest.approx(expected.tolist())
    assert [h.step for h in events.Histograms("weights_histogram/conv")] == [0]  # one epoch


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: ik.NormSubscriber("weights", order=0),
            "`order` to be a positive number but got 0",
        ),
        (lambda: ik.NormSubscriber("weights", order=-1), "`order` to be a positive number"),
        (lambda: ik.NormSubscriber("weights", order="2"), "`order` to be a positive number"),
        (lambda: ik.NormSubscriber("batch_started"), "carries a tensor .* 'batch_started'"),
        (lambda: ik.MeanSubscriber(""), "`kind` to be a message kind"),
        (lambda: ik.VarianceSubscriber(3), "`kind` to be a message kind .* got 3"),
        (lambda: ik.NormSubscriber("weights", subsample=0), "`subsample` to be an integer >= 1"),
        (lambda: ik.NormSubscriber("weights", ylims=(1, 0)), "`ylims` to be None or a pair"),
        (lambda: ik.NormSubscriber("weights", backend="png"), "`backend` to be one of"),
        (lambda: ik.RatioSubscriber(["weights"]), "exactly two message kinds"),
        (lambda: ik.RatioSubscriber(["a", "b", "c"]), "exactly two message kinds"),
        (lambda: ik.RatioSubscriber("weights"), "exactly two message kinds"),
        (lambda: ik.RatioSubscriber(["weights", "weights"]), "two different kinds"),
        (lambda: ik.RatioSubscriber(["weights", "loss"]), "two per-layer kinds or two network"),
        (lambda: ik.RatioSubscriber(["weights", "epoch_finished"]), "event kind"),
        (lambda: ik.RatioSubscriber(["weight_updates", "weights"], absolute=1), "`absolute`"),
        (
            lambda: ik.SpectralNormSubscriber("weights", n_power_iterations=0),
            "`n_power_iterations` to be an integer >= 1 but got 0",
        ),
        (lambda: ik.HistogramSubscriber("weights", bins=0), "`bins` to be an integer >= 1"),
        (lambda: ik.HistogramSubscriber("weights", per_epoch="yes"), "`per_epoch`"),
        (lambda: ik.MessageMeanSubscriber("epoch_started"), "event kind"),
    ],
)
def test_constructor_validation(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_kind_is_rejected_at_attach() -> None:
    bus = MessageBus()
    with pytest.raises(ValueError, match=r"Unknown message kind\(s\) \['weihgts'\]"):
        ik.NormSubscriber("weihgts", bus)
    assert bus.published_kinds == {} and bus.subscribers == ()
    with pytest.raises(ValueError, match="Unknown message kind"):
        ik.RatioSubscriber(["weight_updates", "wieghts"], bus)
    bus.register_kind("layer_topic", "DATA", owner="test")
    bus.register_kind("network_topic", "META", owner="test")
    with pytest.raises(ValueError, match="never share a bundle"):
        ik.RatioSubscriber(["layer_topic", "network_topic"], bus)


def test_subscribers_deepcopy_while_detached(tiny, batch) -> None:
    templates = [
        ik.NormSubscriber("weights"),
        ik.MeanSubscriber("weights"),
        ik.VarianceSubscriber("weights"),
        ik.RatioSubscriber(["weight_updates", "weights"]),
        ik.SpectralNormSubscriber("weights"),
        ik.HistogramSubscriber("weights"),
    ]
    copies = [copy.deepcopy(t) for t in templates]
    bus = MessageBus()
    for c in copies:
        c.backend_name = None
        c.attach(bus)
        assert all(s.subscriber is c for s in c.subscriptions)
    got = _collect(bus, "weights_norm2")
    _train(tiny, bus, batch, steps=1)
    assert len(got) == 2
    assert all(t.message_bus is None for t in templates)
    # the template itself can still be attached elsewhere
    templates[0].attach(MessageBus())


def test_scalars_reach_tensorboard_with_safe_tags(tmp_path, tiny, batch) -> None:
    bus = MessageBus(log_dir=tmp_path)
    ik.NormSubscriber("weights", bus)
    ik.RatioSubscriber(["weight_updates", "weights"], bus)
    ik.NormSubscriber("weights", bus, backend=None, order=1)  # computes, draws nothing
    ik.MessageMeanSubscriber("weights_norm2", bus)
    record = _train(tiny, bus, batch, steps=3)
    bus.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {
        "weights_norm2/conv",
        "weights_norm2/fc",
        "weight_updates_weights_ratio/conv",
        "weight_updates_weights_ratio/fc",
        "weights_norm2_message_mean",
    }
    got = events.Scalars("weights_norm2/fc")
    assert [e.step for e in got] == [0, 1, 2]
    expected = [torch.linalg.vector_norm(r["before"]["fc.weight"]).item() for r in record]
    assert [e.value for e in got] == pytest.approx(expected, rel=1e-6)
    ratio = events.Scalars("weight_updates_weights_ratio/conv")
    expected = [
        (
            torch.linalg.vector_norm(r["after"]["conv.weight"] - r["before"]["conv.weight"])
            / torch.linalg.vector_norm(r["before"]["conv.weight"])
        ).item()
        for r in record
    ]
    assert [e.value for e in ratio] == pytest.approx(expected, rel=1e-5)


def test_spectral_norm_of_a_zero_initialised_layer_follows_it_as_it_grows(tiny, batch) -> None:
    """A zero-initialised layer starts at spectral norm 0; the estimate must follow the true
    value (torch.linalg.matrix_norm of the weights each step started from) as training grows it."""
    with torch.no_grad():
        tiny.fc.weight.zero_()
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weights", bus, backend=None, n_power_iterations=60)
    got = _collect(bus, spectral.published_kind)
    record = _train(tiny, bus, batch, steps=4, lr=0.1)
    expected = torch.stack(
        [torch.linalg.matrix_norm(r["before"]["fc.weight"], ord=2) for r in record]
    )
    assert expected[0].item() == 0.0 and expected[-1].item() > 0.05
    torch.testing.assert_close(torch.stack(_values(got, "fc")), expected, rtol=1e-4, atol=1e-7)


def test_spectral_norm_of_a_layer_that_stays_zero_is_zero(tiny, batch) -> None:
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weights", bus, backend=None, n_power_iterations=3)
    got = _collect(bus, spectral.published_kind)
    zero = torch.zeros(5, 48)
    for step in range(3):
        bus.publish(
            ModuleMessage("weights", "default", step, step, 0, zero, NamedModule("fc", tiny.fc))
        )
    assert [v.item() for v in _values(got, "fc")] == [0.0, 0.0, 0.0]
    # the kept vector is still a unit vector, so the estimate can recover later
    u = spectral.state_dict()["u"]["fc"]
    torch.testing.assert_close(torch.linalg.vector_norm(u), torch.tensor(1.0))


def test_message_mean_of_an_evaluation_after_the_last_step_is_published() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.NormSubscriber("activations", bus, backend=None, tag="eval")
    ik.MessageMeanSubscriber("activations_norm2", bus, backend=None, tag="eval")
    got: list[tuple[int, float]] = []
    ik.CallbackSubscriber(
        ["activations_norm2_message_mean"],
        lambda m: got.append((m.global_step, float(m.data))),
        bus,
        tag=None,
    )
    expected = []
    with ik.Exporter(model, opt, bus) as exporter:
        for _ in range(2):
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(2, 4)).sum().backward()
                opt.step()
            exporter.epoch_finished()
            model.eval()
            x = torch.randn(2, 4)
            with torch.no_grad():  # a validation pass after each epoch, the last one too
                hidden = model[0](x)
                norms = [hidden.norm(), model[2](hidden.relu()).norm()]
                model(x)
            expected.append((exporter.global_step, float(sum(norms) / 2)))
            model.train()
    assert [s for s, _ in got] == [2, 5]
    assert got == [(s, pytest.approx(v)) for s, v in expected]


def test_spectral_norm_of_a_transposed_convolution_takes_its_output_dimension() -> None:
    """A ConvTranspose2d weight is (in, out, kh, kw): its matrix is (out, -1), as for
    ``torch.nn.utils.spectral_norm``, not (in, -1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
    bus = MessageBus()
    spectral = ik.SpectralNormSubscriber("weights", bus, backend=None, n_power_iterations=200)
    got = _collect(bus, spectral.published_kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    weight = model[0].weight.detach().clone()
    with ik.Exporter(model, opt, bus):
        opt.zero_grad()
        model(torch.randn(2, 4, 3, 3)).sum().backward()
        opt.step()
    expected = torch.linalg.matrix_norm(weight.transpose(0, 1).reshape(3, -1), ord=2)
    assert float(_values(got, "0")[0]) == pytest.approx(float(expected), rel=1e-4)
    other = torch.linalg.matrix_norm(weight.reshape(4, -1), ord=2)
    assert abs(float(other) - float(expected)) > 1e-3  # the two readings differ here


def test_statistics_that_need_several_entries_refuse_a_kind_of_one_number(tiny, batch) -> None:
    """A variance or spectral norm of the loss (one number a step) is refused at construction
    (a variance of one number is NaN, which the scheduler took for a diverged loss); a
    subscriber output, known only from its data, at its first message, naming the kind."""
    for cls in (ik.VarianceSubscriber, ik.SpectralNormSubscriber):
        with pytest.raises(ValueError, match=f"{cls.__name__} needs a kind with several entries"):
            cls("loss", backend=None)
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    ik.VarianceSubscriber("train_accuracy", bus, backend=None)
    x, y = batch
    with ik.Exporter(tiny, message_bus=bus) as exporter:
        with pytest.raises(ValueError, match="'train_accuracy' carries a tensor of shape \\(\\)"):
            exporter.wrap_loss(F.cross_entropy)(tiny(x), y)


def test_a_layer_whose_tensor_has_one_entry_gets_a_nan_variance_not_an_error() -> None:
    """A one-unit head's bias has one entry: its variance is NaN, as documented, whichever
    layer comes first (the first-message check is for subscriber outputs only)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))
    bus = MessageBus()
    ik.VarianceSubscriber("biases", bus, backend=None)
    got = _collect(bus, "biases_variance")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[2].bias.detach().clone()  # the biases are published as the step starts
    with ik.Exporter(model, opt, bus):
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
    assert math.isnan(float(_values(got, "0")[0]))
    assert float(_values(got, "2")[0]) == pytest.approx(float(torch.var(before)), rel=1e-6)


def test_message_mean_of_an_epoch_ends_values_is_published_at_that_epoch_end() -> None:
    # SVCCA publishes init_similarity per layer at epoch_finished: their mean is published then
    # (before the epoch's report), the last epoch's too, not at the next step's forward pass
    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    with ik.Exporter(model, opt, bus) as exporter:
        probe = torch.utils.data.TensorDataset(x, y)
        ik.SVCCASubscriber(probe, 60, message_bus=bus, backend=None)
        ik.MessageMeanSubscriber("init_similarity", bus, backend=None)
        layers = _collect(bus, "init_similarity")
        means = _collect(bus, "init_similarity_message_mean")
        for _ in range(3):
            for start in range(0, 120, 40):
                opt.zero_grad()
                F.cross_entropy(model(x[start : start + 40]), y[start : start + 40]).backward()
                opt.step()
            published = len(means)
            exporter.epoch_finished()
            step = exporter.global_step
            assert len(means) == published + 1  # at this epoch end
            values = [float(v) for _, s, v in layers if s == step]
            assert len(values) == 2
            assert means[-1][1] == step
            assert float(means[-1][2]) == pytest.approx(sum(values) / 2, rel=1e-6)
    assert len(means) == 3


def test_spectral_norm_of_a_transposed_convolutions_activations_runs_over_its_features() -> None:
    """Activations (and layer gradients) are (samples, ...) whatever the layer: the vector
    carried from batch to batch runs over the features, for a ConvTranspose as for a Conv
    (its weight's (in, out) layout is no layout of its activations; the vector ran over the
    samples, carried to the next batch's unrelated ones). Reference: the same tensors
    published for an ordinary Conv2d, read the same, and each batch's SVD."""
    torch.manual_seed(0)
    batches = [torch.randn(size, 8, 10, 10) for size in (100, 100, 70, 100)]  # 800 features
    layers = {
        "convT": NamedModule("convT", nn.ConvTranspose2d(8, 8, 3)),
        "conv": NamedModule("conv", nn.Conv2d(8, 8, 3)),
    }
    read: dict[str, list[float]] = {}
    for name, layer in layers.items():
        for kind in ("activations", "layer_gradients"):
            bus = MessageBus()
            spectral = ik.SpectralNormSubscriber(kind, bus, backend=None)
            got = _collect(bus, spectral.published_kind)
            torch.manual_seed(1)  # the same random start vector
            for step, data in enumerate(batches):
                bus.publish_module_message(
                    kind, layer, data, global_step=step, train_step=step, epoch=0
                )
            read[f"{name} {kind}"] = [float(v) for v in _values(got, name)]
            assert spectral.u[name].shape == (800,)
    exact = [float(torch.linalg.matrix_norm(b.reshape(len(b), -1), ord=2)) for b in batches]
    for kind in ("activations", "layer_gradients"):
        assert read[f"convT {kind}"] == read[f"conv {kind}"]
        assert read[f"convT {kind}"] == pytest.approx(exact, rel=0.1)


class _SkippedBlock(nn.Module):
    """A residual block the forward pass skips at some steps (stochastic depth): no gradient
    for it there, with ``zero_grad()`` to None."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.use_block = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        if self.use_block:
            h = h + torch.tanh(self.block(h))
        return self.out(h)


@pytest.mark.parametrize("subsample", [2, 3])
def test_message_mean_subsampled_keeps_whole_steps(subsample: int) -> None:
    """A mean over the layers, subsampled, is each kept step's mean over all of its layers,
    at every ``subsample``-th step, also after a layer sat out a step (counted per layer, that
    layer ran out of phase: the kept steps' means were over some layers, or one, and a step
    was published at every step). Reference: each step's mean of the layers' gradient norms,
    by hand; and its state restores the steps it keeps."""
    torch.manual_seed(0)
    model = _SkippedBlock()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    mean = ik.MessageMeanSubscriber(
        "weight_gradients_norm2", bus, backend=None, subsample=subsample
    )
    got: dict[int, float] = {}
    ik.CallbackSubscriber(
        [mean.published_kind], lambda m: got.__setitem__(m.global_step, float(m.data)), bus
    )
    expected = {}
    with ik.Exporter(model, opt, bus):
        for step in range(10):
            model.use_block = step not in (1, 4)
            x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            norms = [
                torch.linalg.vector_norm(layer.weight.grad)
                for layer in (model.inp, model.block, model.out)
                if layer.weight.grad is not None
            ]
            expected[step] = float(torch.stack(norms).mean())
            opt.step()
            if step == 5:
                state = mean.state_dict()
    kept = list(range(0, 10, subsample))
    assert sorted(got) == kept
    assert [got[s] for s in kept] == pytest.approx([expected[s] for s in kept], rel=1e-6)
    # restored after step 5, it keeps the steps the uninterrupted run kept
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)  # (publishes the kind)
    again = ik.MessageMeanSubscriber(
        "weight_gradients_norm2", bus, backend=None, subsample=subsample
    )
    again.load_state_dict(state)
    resumed: list[int] = []
    ik.CallbackSubscriber([again.published_kind], lambda m: resumed.append(m.global_step), bus)
    layer = NamedModule("inp", model.inp)
    for step in range(6, 10):
        at = {"global_step": step, "train_step": step, "epoch": 0}
        bus.publish_module_message("weight_gradients_norm2", layer, torch.tensor(1.0), **at)
        bus.publish_network_message("batch_finished", **at)
    assert resumed == [s for s in kept if s >= 6]


def test_a_per_epoch_histogram_restored_within_an_epoch_draws_that_epoch_once() -> None:
    """``per_epoch=True`` draws each layer's first message of an epoch. A subscriber restored
    from a state saved within epoch 0 (a trial restored from a checkpoint mid-epoch) draws
    what the uninterrupted one draws: nothing more in epoch 0, the first of epoch 1."""
    from ikkuna_tune.layers import NamedModule

    class Drawn:
        def __init__(self) -> None:
            self.steps: list[tuple[str, int]] = []

        def add_histogram(self, tag, counts, edges, stats, step) -> None:
            self.steps.append((tag, step))

    layer = NamedModule("fc", torch.nn.Linear(2, 2))
    messages = [(step, step // 4) for step in range(8)]  # 4 steps an epoch

    def run(subscriber, bus, steps):
        for step, epoch in steps:
            data = torch.randn(5)
            bus.publish_module_message(
                "weights", layer, data, global_step=step, train_step=step, epoch=epoch
            )

    bus = MessageBus()
    whole = ik.HistogramSubscriber("weights", bus, backend=None, bins=3, per_epoch=True)
    whole.backend = Drawn()
    run(whole, bus, messages)
    assert whole.backend.steps == [("weights_histogram/fc", 0), ("weights_histogram/fc", 4)]
    bus = MessageBus()
    first = ik.HistogramSubscriber("weights", bus, backend=None, bins=3, per_epoch=True)
    first.backend = Drawn()
    run(first, bus, messages[:2])
    state = first.state_dict()
    bus = MessageBus()
    second = ik.HistogramSubscriber("weights", bus, backend=None, bins=3, per_epoch=True)
    second.backend = Drawn()
    second.load_state_dict(state)
    run(second, bus, messages[2:])
    assert first.backend.steps + second.backend.steps == whole.backend.steps
    with pytest.raises(ValueError, match="keeps no state but was given keys"):
        ik.HistogramSubscriber("weights", backend=None).load_state_dict(state)
