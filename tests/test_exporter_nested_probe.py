from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


class _Shared(nn.Module):
    """A layer called twice in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.sh, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.sh(torch.relu(self.a(x))))
        return self.out(torch.relu(self.sh(h)))


def test_a_probe_run_inside_a_training_pass_leaves_its_layer_calls_numbered() -> None:
    """Without an optimizer a step ends when the next training pass starts, so test accuracy
    (``frequency=2``) probes inside that pass: its second call of ``sh`` is still ``'sh#2'``."""
    torch.manual_seed(0)
    model = _Shared()
    bus = MessageBus()
    exporter = ik.Exporter(model, None, bus)
    data = TensorDataset(torch.randn(20, 4), torch.randint(0, 3, (20,)))
    ik.TestAccuracySubscriber(data, batch_size=20, frequency=2, message_bus=bus, backend=None)
    ik.NormSubscriber("activations", bus, backend=None)
    got: dict[str, list[tuple[int, float]]] = {}
    ik.CallbackSubscriber(
        ["activations_norm2"],
        lambda m: got.setdefault(m.key, []).append((m.global_step, float(m.data))),
        bus,
    )
    expected: dict[str, list[tuple[int, float]]] = {}
    calls: list[float] = []
    model.sh.register_forward_hook(
        lambda module, args, out: (
            calls.append(float(out.detach().norm())) if module.training else None
        )
    )
    with exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for step in range(5):
            calls.clear()
            x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
            loss_fn(model(x), y).backward()
            expected.setdefault("sh", []).append((step, calls[0]))
            expected.setdefault("sh#2", []).append((step, calls[1]))
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    for key in ("sh", "sh#2"):
        assert [s for s, _ in got[key]] == list(range(5))
        for (_, value), (_, reference) in zip(got[key], expected[key]):
            assert abs(value - reference) < 1e-5 * max(1.0, reference)
