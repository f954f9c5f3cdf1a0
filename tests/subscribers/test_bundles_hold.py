"""A synchronised bundle holds each tensor as it was published, not as it is when the bundle
completes: weights before the optimizer's step, a layer's output before an in-place ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


def test_bundles_hold_the_weights_and_activations_as_published() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    bus = MessageBus()
    got: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []

    # (kept beyond the callback: copied, as for any message)
    def weights(bundle) -> None:
        if bundle.key == "0":
            w, update = bundle["weights"].clone(), bundle["weight_updates"].clone()
            got.append(("w", bundle.global_step, w, update))

    def activations(bundle) -> None:
        if bundle.key == "0":
            got.append(("a", bundle.global_step, bundle["activations"].clone(), None))

    ik.CallbackSubscriber(["weights", "weight_updates"], weights, bus, synchronized=True)
    ik.CallbackSubscriber(["activations", "layer_gradients"], activations, bus, synchronized=True)
    g = torch.Generator().manual_seed(1)
    reference = []
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(2):
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            before = model[0].weight.detach().clone()
            linear_out = F.linear(x, before, model[0].bias.detach())
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            reference.append((before, model[0].weight.detach().clone(), linear_out))
    assert sorted((kind, step) for kind, step, _, _ in got) == [
        ("a", 0),
        ("a", 1),
        ("w", 0),
        ("w", 1),
    ]
    for kind, step, data, update in got:
        before, after, linear_out = reference[step]
        if kind == "w":
            torch.testing.assert_close(data, before)  # not the stepped weights
            torch.testing.assert_close(update, after - before)
        else:
            assert (linear_out < 0).any()  # the ReLU after it would have overwritten these
            torch.testing.assert_close(data, linear_out)
