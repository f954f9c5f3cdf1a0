"""functional.histogram against torch.histc where values lie on bin edges, and with entries
that are not finite (a diverged layer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.functional.stats import histogram

EDGY = [
    torch.arange(26.0),  # integers: many on an edge of 5 bins
    torch.arange(0, 10, 0.25),
    torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0)).float(),
    torch.linspace(-3, 7, 1001),
    torch.arange(26.0).double(),
]


@pytest.mark.parametrize("x", EDGY, ids=lambda x: f"{x.dtype}-{x.numel()}")
@pytest.mark.parametrize("bins", [1, 3, 5, 7, 10, 64])
def test_the_bins_are_those_of_torch_histc(x: torch.Tensor, bins: int) -> None:
    counts, edges, _ = histogram(x, bins)
    reference = torch.histc(x, bins, float(x.min()), float(x.max()))
    assert torch.equal(counts, reference.to(counts.dtype))
    torch.testing.assert_close(edges, torch.linspace(float(x.min()), float(x.max()), bins + 1,
                                                      dtype=edges.dtype))  # fmt: skip


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_entries_that_are_not_finite_are_in_no_bin_and_in_the_stats(bad: float) -> None:
    x = torch.tensor([0.0, 1.0, bad, 2.0, 3.0, bad])
    counts, edges, stats = histogram(x, 3)
    finite = x[torch.isfinite(x)]
    assert torch.equal(counts, torch.histc(finite, 3, float(finite.min()), float(finite.max())))
    torch.testing.assert_close(edges, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert stats[2] == 6  # every entry counts in the number of entries
    assert not math.isfinite(float(stats[3]))  # the sum shows them


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_range_wider_than_the_dtype_holds_is_binned_as_numpy_does(dtype) -> None:
    """Finite entries whose span overflows their dtype (float32: -3e38 to 3e38, a layer about
    to diverge) land in their own bins, not all in the first one (numpy, in float64)."""
    import numpy as np

    top = torch.finfo(dtype).max
    x = torch.tensor([-top, -top / 3, 0.0, top / 3, top], dtype=dtype)
    counts, edges, _ = histogram(x, 8)
    expected, expected_edges = np.histogram(x.double().numpy(), bins=8)
    assert counts.tolist() == expected.tolist()
    assert torch.isfinite(edges).all()
    np.testing.assert_allclose(edges.double().numpy(), expected_edges, rtol=1e-2)


def test_nothing_finite_gives_empty_bins() -> None:
    counts, _, stats = histogram(torch.tensor([math.nan, math.inf]), 4)
    assert counts.tolist() == [0.0] * 4 and not math.isfinite(float(stats[3]))


def test_a_diverging_model_keeps_training_with_a_histogram_subscriber() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    bus = MessageBus()
    subscriber = ik.HistogramSubscriber("weights", bus, backend=None)
    stats: list[torch.Tensor] = []

    class Recorded:  # stands in for TensorBoard
        def add_histogram(self, tag, counts, edges, stats_, step) -> None:  # type: ignore[no-untyped-def]
            stats.append(stats_)

    subscriber.backend = Recorded()  # type: ignore[assignment]
    with ik.Exporter(model, opt, bus):
        for _ in range(6):
            opt.zero_grad()
            torch_F.cross_entropy(
                model(torch.randn(8, 4) * 1e3), torch.randint(0, 3, (8,))
            ).backward()
            opt.step()
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # it did diverge
    assert len(stats) == 6 * 2  # and the histograms kept coming, every step and layer
    assert not math.isfinite(float(stats[-1][3]))


@pytest.mark.parametrize("value", [3e7, -4e8])
def test_a_constant_too_large_to_tell_from_its_neighbours_lands_in_the_middle_bin(value):
    """value - 1 == value in float32 (from 2**24 on): the bins still span the value with
    distinct edges, and it lands in the middle bin, where torch.histc and numpy put a
    constant."""
    import numpy as np

    x = torch.full((100,), value)
    counts, edges, _ = histogram(x, 8)
    expected, _ = np.histogram(x.double().numpy(), bins=8)  # numpy widens a constant's range
    assert counts.tolist() == expected.tolist() == [0, 0, 0, 0, 100, 0, 0, 0]
    assert (edges[1:] > edges[:-1]).all() and edges[0] < value < edges[-1]


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_the_sum_of_squares_is_taken_in_float64(scale) -> None:
    """Finite float32 entries whose float32 squares overflow (1e20) or underflow (1e-25): the
    float64 sum of squares is theirs (numpy, in float64)."""
    import numpy as np

    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * scale
    _, _, stats = histogram(x, 8)
    wide = x.double().numpy()
    assert float(stats[4]) == pytest.approx(float(np.sum(wide**2)), rel=1e-9, abs=0)
    assert float(stats[3]) == pytest.approx(float(np.sum(wide)), rel=1e-9, abs=1e-9 * scale)
