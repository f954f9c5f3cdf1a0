"""A computed weight (a layer whose ``weight`` is a property over its parameters, as a
parametrisation computes it) is not in the layer's parameters: the Exporter reads it through the
layer's attribute, step by step, and its update is the change of the computed weight. Layers
parametrised with ``torch.nn.utils.parametrize`` (``weight_norm``, ``spectral_norm``, the user's
own) are tracked as layers, and frozen with every parameter of their parametrisation."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as OldSpectralNorm

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.layers import select_modules
from ikkuna_tune.parameters import parameter_roles


class ScaledLinear(nn.Module):
    """``x @ weight.T`` with ``weight = raw / ||raw||`` (a unit-norm weight, computed)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.randn(n_out, n_in))

    @property
    def weight(self) -> torch.Tensor:
        return 3.0 * self.raw / self.raw.norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_a_computed_weight_is_published_as_the_layer_computes_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert "weight" not in model[0]._parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[str, list[float]] = {"weights_norm2": [], "weight_updates_weights_ratio": []}
    ik.CallbackSubscriber(
        list(got), lambda m: got[m.kind].append(float(m.data)) if m.key == "0" else None, bus
    )
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    norms, ratios = [], []
    with ik.Exporter(model, opt, bus):
        for _ in range(3):
            before = model[0].weight.detach().clone()
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            after = model[0].weight.detach()
            norms.append(before.norm().item())
            ratios.append(((after - before).norm() / before.norm()).item())
    assert ratios[0] > 1e-3  # the computed weight moved (its norm stays 3)
    assert len(got["weights_norm2"]) == len(got["weight_updates_weights_ratio"]) == 3
    for a, b in zip(got["weights_norm2"], norms):
        assert abs(a - b) <= 1e-6 * b
    for a, b in zip(got["weight_updates_weights_ratio"], ratios):
        assert abs(a - b) <= 1e-5 * b


class Doubled(nn.Module):
    """A parametrisation: the weight is twice its original."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    parametrizations.weight_norm(model[0])
    parametrize.register_parametrization(model[2], "weight", Doubled())
    return model


def test_parametrised_layers_are_selected_and_nothing_inside_their_parametrisations() -> None:
    model = _model()
    assert list(select_modules(model)) == ["0", "2", "4"]
    assert list(select_modules(model, depth=2)) == ["0", "2", "4"]
    nested = nn.Sequential(nn.Sequential(model[0]), nn.ReLU(), nn.Linear(6, 1))
    assert list(select_modules(nested, depth=1)) == ["0", "2"]
    assert list(select_modules(nested)) == ["0.0", "2"]


def test_a_parametrised_weight_is_published_as_the_layer_computes_it() -> None:
    """Published weight norms and update ratios of the parametrised layers equal those
    computed by hand from ``layer.weight`` before and after each step; the weight published
    carries no autograd graph."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[tuple[str, str], list[float]] = {}
    graphs: list[bool] = []

    def keep(message) -> None:
        got.setdefault((message.kind, message.key), []).append(float(message.data))

    ik.CallbackSubscriber(["weights_norm2", "weight_updates_weights_ratio"], keep, bus)
    ik.CallbackSubscriber(["weights"], lambda m: graphs.append(m.data.requires_grad), bus)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    expected: dict[tuple[str, str], list[float]] = {}
    with ik.Exporter(model, opt, bus):
        for _ in range(3):
            before = {n: model[int(n)].weight.detach().clone() for n in ("0", "2")}
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            for name, b in before.items():
                after = model[int(name)].weight.detach()
                expected.setdefault(("weights_norm2", name), []).append(b.norm().item())
                expected.setdefault(("weight_updates_weights_ratio", name), []).append(
                    ((after - b).norm() / b.norm()).item()
                )
    assert expected[("weight_updates_weights_ratio", "0")][0] > 1e-3  # it moved
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-5)
    assert not any(graphs)


def test_freezing_a_parametrised_layer_freezes_its_parametrisation() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("0")
        originals = [p.detach().clone() for p in model[0].parameters()]
        trained_before = model[2].parametrizations.weight.original.detach().clone()
        assert len(originals) == 3  # weight_norm's magnitude and direction, and the bias
        for _ in range(2):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        for old, new in zip(originals, model[0].parameters()):
            assert torch.equal(old, new)
        assert not torch.equal(model[2].parametrizations.weight.original, trained_before)


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[torch.Tensor]:
    """``steps`` SGD steps on fixed random batches; the weight of ``model[0]`` that each
    step's forward pass used."""
    used: list[torch.Tensor] = []
    handle = model[0].register_forward_hook(
        lambda module, args, out: used.append(module.weight.detach().clone())
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    handle.remove()
    return used


def _spectral_model(hook_based: bool) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = nn.Linear(5, 6)
    if hook_based:
        layer = nn.utils.spectral_norm(layer)
    else:
        layer = parametrizations.spectral_norm(layer)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(6, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


@pytest.mark.parametrize("hook_based", [False, True])
def test_watching_a_spectral_norm_leaves_its_power_iteration_alone(hook_based: bool) -> None:
    """Reading a spectral-normed weight (weights and updates subscribed) runs no power
    iteration of its own: the model trains exactly as without the Exporter."""
    plain, opt = _spectral_model(hook_based)
    _train_steps(plain, opt, 5)
    watched, opt = _spectral_model(hook_based)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    with ik.Exporter(watched, opt, bus):
        _train_steps(watched, opt, 5)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


def _norms_of_first_layer() -> tuple[MessageBus, dict[str, list[float]]]:
    """A bus with the weight and update norms, and the lists layer ``0``'s values go to."""
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.NormSubscriber("weight_updates", bus, backend=None)
    got: dict[str, list[float]] = {"weights_norm2": [], "weight_updates_norm2": []}
    ik.CallbackSubscriber(
        list(got), lambda m: got[m.kind].append(float(m.data)) if m.key == "0" else None, bus
    )
    return bus, got


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
def test_an_older_hook_based_weight_norm_is_published_as_the_forward_pass_uses_it() -> None:
    """``torch.nn.utils.weight_norm`` recomputes ``weight`` (a plain attribute) in a forward
    pre-hook: the published weight is the one each forward pass used, and the update is the
    change between two forward passes (it was 0, read from the stale attribute)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.weight_norm(nn.Linear(5, 6)), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # weight_g and weight_v make up the weight, which gets the metrics: no warning about them
    assert parameter_roles(model[0]) == ({"weight": "weight", "bias": "bias"}, [])
    bus, got = _norms_of_first_layer()
    with ik.Exporter(model, opt, bus):
        used = _train_steps(model, opt, 4)
    # the weight the next forward pass would use: the last step's update ends there
    after = model[0].weight_g * model[0].weight_v / model[0].weight_v.norm(dim=1, keepdim=True)
    used.append(after.detach())
    assert got["weights_norm2"] == pytest.approx([w.norm().item() for w in used[:4]], rel=1e-6)
    steps = [(b - a).norm().item() for a, b in pairwise(used)]
    assert min(steps) > 1e-3
    assert got["weight_updates_norm2"] == pytest.approx(steps, rel=1e-5)


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_pruned_weight_is_the_masked_weight_the_forward_uses(when: str) -> None:
    """``torch.nn.utils.prune`` makes ``weight`` a plain attribute that its forward pre-hook
    recomputes from ``weight_orig`` and the mask: read as it stood, the update was zero at every
    step and the weight one step late. Pruned before the Exporter is made or in the middle of
    training, the layer's weight, update and gradient are those of plain autograd."""
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if when == "before":
        prune.l1_unstructured(model[0], "weight", amount=0.5)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.NormSubscriber("weight_updates", bus, backend=None)
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    kinds = ["weights_norm2", "weight_updates_norm2", "weight_gradients_norm2"]
    got: dict[str, list[float]] = {kind: [] for kind in kinds}
    ik.CallbackSubscriber(
        kinds, lambda m: got[m.kind].append(float(m.data)) if m.key == "0" else None, bus
    )
    want: dict[str, list[float]] = {kind: [] for kind in kinds}
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(nn.functional.cross_entropy)
        for step in range(4):
            if when == "during" and step == 2:
                prune.l1_unstructured(model[0], "weight", amount=0.5)
            opt.zero_grad()
            loss_fn(model(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
            used = model[0].weight.detach().clone()  # as the forward computed it
            raw = getattr(model[0], "weight_orig", None)
            grad = (raw if raw is not None else model[0].weight).grad
            opt.step()
            mask = getattr(model[0], "weight_mask", torch.ones_like(used))
            after = (getattr(model[0], "weight_orig", model[0].weight) * mask).detach()
            want["weights_norm2"].append(used.norm().item())
            want["weight_updates_norm2"].append((after - used).norm().item())
            want["weight_gradients_norm2"].append(grad.norm().item())
    for kind in kinds:
        assert got[kind] == pytest.approx(want[kind], rel=1e-5), kind
    assert min(want["weight_updates_norm2"]) > 1e-3


class RecordingLinear(nn.Linear):
    """A Linear that keeps the weight its last forward pass used (read once, as it computes
    with it: reading a spectral norm's weight again in training mode would iterate again)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        self.used = weight.detach().clone()
        return nn.functional.linear(x, weight, self.bias)


def _recording_spectral_model(flavour: str) -> nn.Sequential:
    torch.manual_seed(0)
    layer = RecordingLinear(5, 6)
    if flavour == "parametrize":
        layer = parametrizations.spectral_norm(layer)
    else:
        layer = nn.utils.spectral_norm(layer)
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(6, 3))


def _weight_now(layer: nn.Module) -> torch.Tensor:
    """A spectral-normed weight from the parameters as they are now and the vectors the last
    pass left (no power iteration)."""
    with torch.no_grad():
        for hook in layer._forward_pre_hooks.values():
            if isinstance(hook, OldSpectralNorm):
                return hook.compute_weight(layer, do_power_iteration=False)
        layer.eval()  # a parametrisation runs no power iteration in eval mode
        try:
            return layer.weight.clone()
        finally:
            layer.train()


@pytest.mark.parametrize("flavour", ["parametrize", "hook"])
def test_a_spectral_norm_is_published_as_the_forward_pass_computes_it(flavour: str) -> None:
    """A spectral norm's power iteration runs in each training forward pass: the weight
    published when the step starts is the one that pass computes (read before it, from the
    last pass's vectors, it was off by up to 4 % in a review's run, and by a factor of 11
    before the first pass of the older hook, whose vectors start random), and the update is
    the change of the weight over the optimizer's step. Reading it leaves training exactly as
    without the Exporter."""
    plain, watched = _recording_spectral_model(flavour), _recording_spectral_model(flavour)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    opt = torch.optim.SGD(watched.parameters(), lr=0.5, momentum=0.9)
    bus, got = _norms_of_first_layer()
    used, moved = [], []
    g = torch.Generator().manual_seed(1)
    with ik.Exporter(watched, opt, bus):
        for _ in range(6):
            x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
            for model, optimizer in ((plain, plain_opt), (watched, opt)):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            layer = watched[0]
            used.append(layer.used.norm().item())
            moved.append((_weight_now(layer) - layer.used).norm().item())
    assert got["weights_norm2"] == pytest.approx(used, rel=1e-6)
    assert got["weight_updates_norm2"] == pytest.approx(moved, rel=1e-5)
    assert min(moved) > 1e-3
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


def test_watching_under_parametrize_cached_leaves_training_alone() -> None:
    """Inside ``parametrize.cached()`` the weight is computed once and cached for the pass:
    reading it through the attribute there cached the Exporter's copy, without its graph, and
    the original weight got no gradient. The model trains exactly as without the Exporter."""

    def trained(watch: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(5, 6)), nn.ReLU())
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        bus = MessageBus()
        ik.NormSubscriber("weights", bus, backend=None)
        exporter = ik.Exporter(model, opt, bus) if watch else None
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.randn(16, 5, generator=g)
            opt.zero_grad()
            with parametrize.cached():
                model(x).square().mean().backward()
            assert model[0].parametrizations.weight.original.grad is not None
            opt.step()
        if exporter is not None:
            exporter.close()
        return model.state_dict()

    plain, watched = trained(False), trained(True)
    for name, value in plain.items():
        assert torch.equal(value, watched[name]), name
