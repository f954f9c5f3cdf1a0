from __future__ import annotations

import math

import pytest
import torch

import ikkuna_tune as ik
from ikkuna_tune import functional as F
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.functional.stats import initial_vector


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("order", [1, 2, 3.5, math.inf])
def test_norm_is_the_vector_norm_of_all_entries(x, order) -> None:
    expected = x.flatten().abs().pow(order).sum().pow(1 / order) if order != math.inf else None
    if expected is None:
        expected = x.abs().max()
    torch.testing.assert_close(F.norm(x, order), expected)
    assert F.norm(x, order).dim() == 0


def test_frobenius_norm_of_a_matrix() -> None:
    m = torch.randn(5, 4)
    torch.testing.assert_close(F.norm(m), torch.linalg.matrix_norm(m, ord="fro"))


@pytest.mark.parametrize("bad", [0, -1, True, "2", None])
def test_norm_order_must_be_positive(bad) -> None:
    with pytest.raises(ValueError, match="`order` to be a positive number but got"):
        F.norm(torch.ones(3), bad)


def test_mean_and_unbiased_variance(x) -> None:
    values = x.flatten().tolist()
    m = sum(values) / len(values)
    v = sum((a - m) ** 2 for a in values) / (len(values) - 1)
    assert F.mean(x).item() == pytest.approx(m, abs=1e-6)
    assert F.variance(x).item() == pytest.approx(v, rel=1e-5)


def test_integer_input_and_single_entry() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    assert F.mean(labels).item() == 1.5
    assert F.variance(labels).item() == pytest.approx(5 / 3)
    assert math.isnan(F.variance(torch.tensor([2.0])).item())


def test_norm_ratio_and_projection_ratio() -> None:
    a = torch.tensor([3.0, 4.0])
    b = torch.tensor([0.0, 10.0])
    assert F.norm_ratio(a, b).item() == pytest.approx(0.5)
    assert F.projection_ratio(a, b).item() == pytest.approx(0.4)  # 40 / 100
    assert F.projection_ratio(-0.1 * b, b).item() == pytest.approx(-0.1)
    assert abs(F.projection_ratio(a, b).item()) <= F.norm_ratio(a, b).item()
    with pytest.raises(ValueError, match="same number of entries"):
        F.projection_ratio(torch.ones(2), torch.ones(3))


@pytest.mark.parametrize("shape", [(8, 5), (16, 3, 3, 3), (4, 20)])
def test_spectral_norm_converges_to_the_largest_singular_value(shape) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = torch.linalg.matrix_norm(w.reshape(shape[0], -1), ord=2)
    sigma, u = F.spectral_norm(w, n_power_iterations=300)
    # gaussian matrices can have nearly equal top singular values ((16, 27): 8.272 vs 8.264),
    # where power iteration converges slowly; the estimate is a lower bound
    torch.testing.assert_close(sigma, expected, rtol=1e-3, atol=0)
    assert sigma.item() <= expected.item() * (1 + 1e-12)
    assert u.shape == (shape[0],) and u.norm().item() == pytest.approx(1.0)


def test_spectral_norm_persistent_vector_tracks_the_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 6, generator=g, dtype=torch.float64)
    u = None
    for _ in range(100):  # one iteration per call, as during training
        sigma, u = F.spectral_norm(w, u)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, ord=2), rtol=1e-6, atol=0)
    # the estimate never exceeds the true value (it is u^T W v with unit u, v)
    first, _ = F.spectral_norm(w)
    assert first.item() <= torch.linalg.matrix_norm(w, ord=2).item() + 1e-12


def test_spectral_norm_matches_torch_spectral_norm_update() -> None:
    """Same power iteration as torch.nn.utils.parametrizations.spectral_norm (dim 0)."""
    w = torch.randn(7, 4, dtype=torch.float64)
    u0 = initial_vector(7, w.device, w.dtype)
    # torch's update: v = normalize(W^T u), u = normalize(W v), sigma = u . (W v)
    v = torch.nn.functional.normalize(w.t() @ u0, dim=0, eps=1e-12)
    u1 = torch.nn.functional.normalize(w @ v, dim=0, eps=1e-12)
    sigma, u = F.spectral_norm(w, u0, n_power_iterations=1)
    torch.testing.assert_close(u, u1)
    torch.testing.assert_close(sigma, torch.dot(u1, w @ v))


def test_spectral_norm_replaces_a_vector_of_the_wrong_length_and_checks_arguments() -> None:
    w = torch.randn(5, 5)
    _, u = F.spectral_norm(w, torch.ones(3))
    assert u.shape == (5,)
    with pytest.raises(ValueError, match="`n_power_iterations` to be an integer >= 1 but got 0"):
        F.spectral_norm(w, n_power_iterations=0)
    with pytest.raises(ValueError, match="at least one dimension"):
        F.spectral_norm(torch.tensor(1.0))


def test_initial_vector_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    initial_vector(10, torch.device("cpu"), torch.float32)
    F.spectral_norm(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(torch.rand(3), expected)


def test_histogram_counts_edges_and_stats() -> None:
    x = torch.tensor([0.0, 1.0, 1.5, 2.0, 4.0])
    counts, edges, stats = F.histogram(x, bins=4)
    torch.testing.assert_close(edges, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(counts, torch.tensor([1, 2, 1, 1]))
    torch.testing.assert_close(
        stats, torch.tensor([0.0, 4.0, 5.0, 8.5, 23.25], dtype=torch.float64)
    )
    # the same counts as binning by hand with the returned edges
    by_hand = torch.bucketize(x, edges[1:-1], right=True).bincount(minlength=4)
    torch.testing.assert_close(counts, by_hand)


def test_histogram_counts_more_entries_in_a_bin_than_a_float32_can_count() -> None:
    """An embedding's gradient is mostly zero rows: 2**24 + 3 zeros in one bin (a float32 count
    stopped at 2**24, 16,777,216) and 5 ones in the other, counted exactly."""
    x = torch.zeros(2**24 + 8)
    x[-5:] = 1.0
    counts, _, stats = F.histogram(x, bins=2)
    assert counts.tolist() == [2**24 + 3, 5]
    assert stats[2].item() == 2**24 + 8 and stats[3].item() == 5.0


def test_histogram_of_a_constant_and_bad_arguments() -> None:
    counts, edges, _ = F.histogram(torch.full((3,), 2.0), bins=2)
    torch.testing.assert_close(edges, torch.tensor([1.0, 2.0, 3.0]))
    assert counts.sum().item() == 3
    with pytest.raises(ValueError, match="`bins` to be an integer >= 1 but got 0"):
        F.histogram(torch.ones(3), bins=0)
    with pytest.raises(ValueError, match="non-empty"):
        F.histogram(torch.ones(0))


@pytest.mark.parametrize("bins", [1, 7, 64])
def test_histogram_matches_torch_histc_over_the_data_range(bins) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(bins))
    counts, edges, _ = F.histogram(x, bins=bins)
    expected = torch.histc(x, bins=bins, min=x.min().item(), max=x.max().item())
    torch.testing.assert_close(counts.float(), expected)
    torch.testing.assert_close(edges[[0, -1]], torch.stack([x.min(), x.max()]))
    assert counts.sum().item() == 1000


def test_spectral_norm_of_a_zero_matrix_is_zero_and_keeps_a_unit_vector() -> None:
    for shape in [(5, 3), (4, 2, 3, 3)]:
        sigma, u = F.spectral_norm(torch.zeros(*shape), n_power_iterations=3)
        assert sigma.item() == 0.0
        # the vector stays a unit vector, ready for the matrix to become non-zero
        assert torch.isfinite(u).all()
        torch.testing.assert_close(torch.linalg.vector_norm(u), torch.tensor(1.0))


def test_spectral_norm_recovers_once_a_zero_matrix_grows() -> None:
    """Power iteration started on a zero matrix tracks it once it is non-zero (a zero-initialised
    layer); the reference is the largest singular value from torch.linalg."""
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(6, 4, generator=g, dtype=torch.float64)
    _, u = F.spectral_norm(torch.zeros(6, 4, dtype=torch.float64))
    for step in range(1, 40):
        w = 0.01 * step * direction
        sigma, u = F.spectral_norm(w, u, n_power_iterations=5)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, ord=2), rtol=1e-6, atol=0)


def test_spectral_norm_leaves_a_vector_outside_the_column_space() -> None:
    # W^T u = 0 for u = e2: a power iteration that normalises that zero vector is stuck at 0
    w = torch.diag(torch.tensor([2.0, 0.0, 0.0]))
    u = torch.tensor([0.0, 1.0, 0.0])
    sigma, u = F.spectral_norm(w, u, n_power_iterations=2)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, ord=2))
    # a zero vector (from a checkpoint of a collapsed iteration) is replaced as well
    sigma, _ = F.spectral_norm(w, torch.zeros(3), n_power_iterations=2)
    torch.testing.assert_close(sigma, torch.tensor(2.0))


def _values_by_hand(values: list[torch.Tensor]) -> list[float]:
    return [float(v) for v in values]


def test_stacked_views_values_that_lie_one_after_the_other_in_one_buffer() -> None:
    # what torch._foreach_norm returns on CUDA: 0-d views of consecutive elements of one result
    buffer = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    views = list(buffer[1:4])
    result = F.stacked(views)
    assert isinstance(result, torch.Tensor)
    assert result.tolist() == _values_by_hand(views) == [2.0, 3.0, 4.0]
    assert result.data_ptr() == buffer[1:].data_ptr()  # no copy
    assert result.shape == (3,) and result.stride() == (1,)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: list(b[::2]),  # every other element: not consecutive
        lambda b: [b[2], b[1], b[0]],  # reversed
        lambda b: [b[0], b[0]],  # one element twice
        lambda b: [torch.tensor(1.0), torch.tensor(2.0)],  # separate tensors
        lambda b: [b[3], b[4], torch.tensor(7.0)],  # the run would leave the buffer
    ],
    ids=["strided", "reversed", "repeated", "separate", "leaves_buffer"],
)
def test_stacked_copies_values_that_do_not_form_a_run(make) -> None:
    buffer = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    values = make(buffer)
    result = F.stacked(values)
    assert result.tolist() == _values_by_hand(values)
    assert result.data_ptr() not in {buffer.data_ptr() + 4 * i for i in range(5)}


def test_stacked_norms_equal_each_norm() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g), torch.randn(2, 2, 2)]
    result = F.stacked(F.norms(tensors))
    expected = [math.sqrt(float((t.double() ** 2).sum())) for t in tensors]
    assert result.tolist() == pytest.approx(expected, rel=1e-6)


def test_spectral_norm_along_another_dimension() -> None:
    w = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma, u = F.spectral_norm(w, n_power_iterations=300, dim=1)
    expected = torch.linalg.matrix_norm(w.transpose(0, 1).reshape(3, -1), ord=2)
    torch.testing.assert_close(sigma, expected, rtol=1e-6, atol=0)
    assert u.shape == (3,)
    for dim in (4, -5, 1.0, True):
        with pytest.raises(ValueError, match="Expected `dim` to be a dimension of a 4-d tensor"):
            F.spectral_norm(w, dim=dim)


def test_sparse_tensors_count_as_the_dense_tensors_they_stand_for() -> None:
    """A sparse gradient (``nn.Embedding(sparse=True)``) with a repeated index holds duplicate
    entries; every statistic is that of the dense tensor, duplicates summed."""
    from ikkuna_tune.functional import stats

    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 3, 3, 7])).pow(2).sum().backward()
    grad = emb.weight.grad
    assert grad.is_sparse and not grad.is_coalesced()
    dense = grad.to_dense()
    for order in (1, 2, math.inf):
        torch.testing.assert_close(stats.norm(grad, order), torch.linalg.vector_norm(dense, order))
    other = torch.randn(3, 5)
    got = stats.norms([other, grad, dense])
    torch.testing.assert_close(
        torch.stack(got), torch.stack([other.norm(), dense.norm(), dense.norm()])
    )
    torch.testing.assert_close(stats.mean(grad), dense.mean())
    torch.testing.assert_close(stats.variance(grad), dense.var())
    counts, *_ = stats.histogram(grad, bins=8)
    torch.testing.assert_close(counts, stats.histogram(dense, bins=8)[0])


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)])
def test_norms_and_spectral_norm_of_a_tensor_without_entries_are_zero(shape) -> None:
    # a placeholder parameter (nn.Parameter(torch.empty(0))): every norm of no entries is 0,
    # the largest magnitude too (the finite orders' sums of nothing already are)
    x = torch.empty(shape)
    for order in (1, 2, 3, math.inf):
        assert F.norm(x, order) == 0
        assert [float(v) for v in F.norms([x, torch.tensor([3.0, -4.0])], order)] == [
            0.0,
            float(torch.linalg.vector_norm(torch.tensor([3.0, -4.0]), ord=order)),
        ]
    sigma, u = F.spectral_norm(x)
    assert sigma == 0 and sigma.dim() == 0
    assert u.shape == (shape[0],)
    sigma, u2 = F.spectral_norm(x, u=u)  # the vector carried to the next call is kept
    assert sigma == 0 and torch.equal(u2, u)


class _PlaceholderBias(torch.nn.Module):
    """A layer that keeps a ``bias`` in its state dict but holds nothing in it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2, 3))
        self.bias = torch.nn.Parameter(torch.empty(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


def test_norm_subscribers_of_a_layer_with_a_placeholder_bias_publish_zero() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), _PlaceholderBias())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    ik.NormSubscriber("biases", bus, order=math.inf, backend=None)
    ik.SpectralNormSubscriber("biases", bus, backend=None)
    got: dict[tuple[str, str], float] = {}
    ik.CallbackSubscriber(
        ["biases_norminf", "biases_spectral_norm"],
        lambda m: got.__setitem__((m.kind, m.key), float(m.data)),
        bus,
    )
    bias = model[0].bias.detach().clone()  # published when the step starts
    with ik.Exporter(model, opt, bus):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    assert got[("biases_norminf", "1")] == 0.0
    assert got[("biases_spectral_norm", "1")] == 0.0
    assert got[("biases_norminf", "0")] == pytest.approx(float(bias.abs().max()))


@pytest.mark.parametrize("scale", [1e-15, 1e-13, 1e18])
def test_spectral_norm_scales_with_the_matrix(scale) -> None:
    """A float32 matrix of tiny (a late weight update) or huge entries reads as its copy of
    entries near 1, times the scale, never negative or zero; the reference is the largest
    singular value in float64 (torch.linalg)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(128, 128, generator=g)
    ones, _ = F.spectral_norm(w, n_power_iterations=3)
    sigma, u = F.spectral_norm(w * scale, n_power_iterations=3)
    assert sigma.item() > 0 and torch.isfinite(u).all()
    assert sigma.item() == pytest.approx(ones.item() * scale, rel=1e-5, abs=0)
    many, _ = F.spectral_norm(w * scale, n_power_iterations=200)
    exact = torch.linalg.matrix_norm(w.double() * scale, ord=2).item()
    assert many.item() == pytest.approx(exact, rel=1e-2, abs=0)
    assert F.largest_singular_value(w * scale).item() == pytest.approx(exact, rel=1e-5, abs=0)


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_exact_spectral_norm_of_entries_whose_float32_squares_overflow_or_underflow(scale) -> None:
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(6))
    exact = torch.linalg.matrix_norm(w.double() * scale, ord=2).item()
    assert F.largest_singular_value(w * scale).item() == pytest.approx(exact, rel=1e-5, abs=0)
    assert F.largest_singular_value(w * scale, dim=1).item() == pytest.approx(
        exact, rel=1e-5, abs=0
    )
