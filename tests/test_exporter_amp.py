"""Mixed precision: under bfloat16 autocast with a GradScaler the published gradients are the
true (unscaled) ones and the published updates the real change of the weights; a step the
scaler skips publishes zero updates that training-step subscribers do not count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from tests.conftest import TinyNet

SCALE = 1024.0


def test_gradients_are_unscaled_and_updates_real_under_autocast_and_grad_scaler() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=1000)
    bus = MessageBus("amp")
    got: dict[str, list[tuple[str, torch.Tensor]]] = {"weight_gradients": [], "weight_updates": []}
    for kind in got:
        ik.CallbackSubscriber(
            [kind], lambda m, kind=kind: got[kind].append((m.key, m.data.clone())), bus
        )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
    with ik.Exporter(model, opt, bus):
        for _ in range(3):
            for values in got.values():
                values.clear()
            before = {n: getattr(model, n).weight.detach().clone() for n in ("conv", "fc")}
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaled = {n: getattr(model, n).weight.grad.clone() for n in ("conv", "fc")}
            scaler.step(opt)
            scaler.update()
            grads = dict(got["weight_gradients"])
            updates = dict(got["weight_updates"])
            assert set(grads) == set(updates) == {"conv", "fc"}
            for name in ("conv", "fc"):
                # the reference: the scaled gradient autograd produced, divided by hand
                assert torch.allclose(grads[name], scaled[name] / SCALE, rtol=1e-6, atol=0)
                change = getattr(model, name).weight.detach() - before[name]
                assert torch.allclose(updates[name], change, rtol=0, atol=1e-7)
                assert updates[name].abs().max() > 0


def test_bfloat16_autocast_activations_are_published_in_bfloat16() -> None:
    model = TinyNet()
    bus = MessageBus("amp")
    seen: list[torch.dtype] = []
    ik.CallbackSubscriber(["activations"], lambda m: seen.append(m.data.dtype), bus)
    with ik.Exporter(model, None, bus), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 1, 6, 6))
    assert seen == [torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_norms_of_half_precision_activations_match_float32(dtype) -> None:
    bus = MessageBus("amp")
    # the calls below run in eval mode: their activations are published under the eval tag
    ik.NormSubscriber("activations", bus, tag=None, backend=None)
    norms: dict[str, float] = {}
    ik.CallbackSubscriber(
        ["activations_norm2"], lambda m: norms.__setitem__(m.key, m.data.item()), bus, tag=None
    )
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(4, 1, 6, 6)
    with ik.Exporter(model, None, bus), torch.autocast("cpu", dtype=dtype):
        model.eval()
        out = model.conv(x)
        model(x)
    assert norms["conv"] == pytest.approx(out.float().norm().item(), rel=1e-3)


def test_a_step_the_scaler_skips_publishes_zero_updates_and_ratios_do_not_count_it() -> None:
    """Step 1 has an infinite loss: the scaler skips optimizer.step(). Its updates are exactly
    zero under the tag 'skipped', the weights did not move, the ratio subscriber (training
    steps) computes ratios for steps 0 and 2 only, and step 2 is a step of its own."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    bus = MessageBus("amp")
    ratios: list[tuple[int, str]] = []
    skipped: list[tuple[int, str, torch.Tensor]] = []
    ratio = ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    ik.CallbackSubscriber(
        [ratio.published_kind], lambda m: ratios.append((m.global_step, m.key)), bus
    )
    ik.CallbackSubscriber(
        ["weight_updates"],
        lambda m: skipped.append((m.global_step, m.key, m.data.clone())),
        bus,
        tag="skipped",
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
    with ik.Exporter(model, opt, bus, scaler=scaler) as exporter:
        for step in range(3):
            before = {n: getattr(model, n).weight.detach().clone() for n in ("conv", "fc")}
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) * (math.inf if step == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            moved = any(
                not torch.equal(getattr(model, n).weight.detach(), before[n]) for n in before
            )
            assert moved == (step != 1)
        exporter.epoch_finished()
        assert exporter.global_step == 2
    assert sorted(ratios) == [(0, "conv"), (0, "fc"), (2, "conv"), (2, "fc")]
    assert [(s, k) for s, k, _ in skipped] == [(1, "conv"), (1, "fc")]
    assert all(torch.count_nonzero(update) == 0 for *_, update in skipped)


def test_without_the_scaler_a_skipped_step_merges_with_the_next_and_a_bad_scaler_is_refused() -> (
    None
):
    with pytest.raises(ValueError, match="Expected `scaler` to be a torch.amp.GradScaler"):
        ik.Exporter(TinyNet(), None, MessageBus(), scaler=object())


@pytest.mark.parametrize(
    ("dtype", "scaled", "warned"),
    [(torch.float16, False, True), (torch.float16, True, False), (torch.bfloat16, False, False)],
)
def test_float16_autocast_without_the_scaler_is_named_once(caplog, dtype, scaled, warned) -> None:
    """Under float16 autocast a GradScaler is the rule; not given it, the Exporter would read a
    step it skips as gradient accumulation without a word: it says so at the first step."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE) if scaled else None
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,))
    with ik.Exporter(model, opt, MessageBus(), scaler=scaler) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
    said = [r for r in caplog.records if "float16 autocast but the Exporter" in r.getMessage()]
    assert len(said) == int(warned), [r.getMessage() for r in said]


def test_a_trial_under_bfloat16_autocast_reports_the_unscaled_gradient_norms() -> None:
    """End to end through instrument / watch / report: the reported gradient norms and update
    ratios are those of the unscaled gradients and the real weight changes, computed by hand."""
    expected: list[dict[str, dict[str, float]]] = []

    def trainable(config: dict) -> None:
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=1000)
        exporter = ik.watch(model, opt, scaler=scaler)
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        for _ in range(2):
            before = {n: getattr(model, n).weight.detach().clone() for n in ("conv", "fc")}
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = exporter.wrap_loss(F.cross_entropy)(model(x), y)
            scaler.scale(loss).backward()
            scaled = {n: getattr(model, n).weight.grad.clone() for n in ("conv", "fc")}
            scaler.step(opt)
            scaler.update()
            norms, ratios = {}, {}
            for name in ("conv", "fc"):
                weight = getattr(model, name).weight.detach()
                norms[name] = (scaled[name] / SCALE).norm().item()
                # the update over the weights the step started from
                ratios[name] = ((weight - before[name]).norm() / before[name].norm()).item()
            expected.append(
                {"weight_gradients_norm2": norms, "weight_updates_weights_ratio": ratios}
            )
            ik.report({"loss": loss.item()})

    subscribers = [
        ik.NormSubscriber("weight_gradients", backend=None),
        ik.RatioSubscriber(["weight_updates", "weights"], backend=None),
    ]
    ik.instrument(trainable, subscribers)({})
    reports = ik.local_results()
    assert len(reports) == len(expected) == 2
    for report, want in zip(reports, expected):
        for kind, layers in want.items():
            for name, value in layers.items():
                assert report[kind][name] == pytest.approx(value, rel=1e-5), (kind, name)


@pytest.mark.parametrize("autocast", [False, True])
def test_layer_gradients_are_the_losss_own_given_the_scaler(autocast) -> None:
    # layer_gradients come from the backward pass of the scaled loss: given the scaler they are
    # divided by its scale; the reference is d(loss)/d(output) of an unscaled copy of the model
    torch.manual_seed(0)
    model = TinyNet()
    reference = TinyNet()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    bus = MessageBus("amp")
    got: dict[str, torch.Tensor] = {}
    ik.CallbackSubscriber(["layer_gradients"], lambda m: got.__setitem__(m.key, m.data), bus)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)

    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output):
            output.retain_grad()
            outputs[name] = output

        return hook

    for name in ("conv", "fc"):
        getattr(reference, name).register_forward_hook(keep(name))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        F.cross_entropy(reference(x), y).backward()

    with ik.Exporter(model, opt, bus, scaler=scaler):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert set(got) == {"conv", "fc"}
    for name in ("conv", "fc"):
        expected = outputs[name].grad.float()
        assert got[name].dtype == torch.float32
        # the scale is a power of two: scaling and dividing are exact, in bfloat16 too
        assert torch.equal(got[name], expected)
        assert got[name].abs().max() > 0


def test_gradients_are_unscaled_with_a_scaler_and_no_optimizer() -> None:
    """Without an optimizer the parameter gradients are read in the backward pass, before any
    unscaling: given the scaler they are divided by its scale, as the docstring says of every
    parameter gradient (they were published scaled, 1024 times the true ones here).
    Reference: the gradients after ``scaler.unscale_``."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=1000)
    bus = MessageBus("amp")
    got: list[tuple[str, torch.Tensor]] = []
    ik.CallbackSubscriber(["weight_gradients"], lambda m: got.append((m.key, m.data.clone())), bus)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
    with ik.Exporter(model, message_bus=bus, scaler=scaler):
        for _ in range(2):
            got.clear()
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            true = {n: getattr(model, n).weight.grad.detach().clone() for n in ("conv", "fc")}
            scaler.step(opt)
            scaler.update()
            assert sorted(key for key, _ in got) == ["conv", "fc"]
            for key, data in got:
                torch.testing.assert_close(data, true[key], rtol=1e-6, atol=0.0)
