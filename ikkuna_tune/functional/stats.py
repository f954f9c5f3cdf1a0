"""Statistics of single tensors: norms, mean, variance, norm ratios and the spectral norm.

Pure functions on tensors. Every result is a tensor on the input's device (0-d for scalars); none
of them turns a tensor into a Python number, so none forces a host synchronisation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = [
    "histogram",
    "largest_singular_value",
    "mean",
    "norm",
    "norm_ratio",
    "norms",
    "projection_ratio",
    "spectral_norm",
    "stacked",
    "variance",
]


_HALF = (torch.float16, torch.bfloat16)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it holds float32, float64 or complex numbers, else ``x`` as float32; a
    sparse tensor (the gradient of ``nn.Embedding(sparse=True)``) as the dense one it stands
    for, implicit zeros included.

    Half-precision tensors (mixed-precision activations) are summed in float32: a bfloat16 sum
    keeps about 3 significant digits (a norm 0.2 % off on a small layer's activations).
    """
    if x.layout != torch.strided:
        x = x.to_dense()
    if x.dtype in _HALF or not (x.is_floating_point() or x.is_complex()):
        return x.float()
    return x


def _check_order(order: float) -> float:
    if isinstance(order, bool) or not isinstance(order, (int, float)) or not order > 0:
        raise ValueError(f"Expected argument `order` to be a positive number but got {order!r}")
    return order


def norm(x: torch.Tensor, order: float = 2) -> torch.Tensor:
    """The ``order``-norm of all entries of ``x`` taken as one vector.

    ``(sum |x_i|^order)^(1/order)``; for a matrix and ``order=2`` this is the Frobenius norm.
    ``order=math.inf`` gives the largest absolute entry.

    A sparse tensor's norm is that of its non-zero entries (after summing duplicate indices),
    which is the norm of the dense tensor it stands for.

    Computed in ``x``'s own precision (half precision in float32), as
    :func:`torch.linalg.vector_norm` does, with no pass to rescale: a float32 tensor's 2-norm
    reads inf where the sum of squares passes about 3e38 (entries near 1e19, a diverged layer)
    and loses digits, down to 0, where its squares fall below about 1e-38 (entries near 1e-20).

    Raises:
        ValueError: if ``order`` is not a positive number.

    Examples:
        >>> x = torch.tensor([[3.0, -4.0]])
        >>> norm(x), norm(x, order=1), norm(x, order=math.inf)
        (tensor(5.), tensor(7.), tensor(4.))
        >>> norm(torch.empty(0), order=math.inf)  # a placeholder parameter: 0, as for order 2
        tensor(0.)
    """
    order = _check_order(order)
    if x.layout == torch.sparse_coo:
        x = x.coalesce().values()
    x = _as_float(x)
    if x.numel() == 0 and math.isinf(order):  # the largest of no magnitudes: 0, as the sums
        return x.new_zeros((), dtype=x.real.dtype if x.is_complex() else x.dtype)
    return torch.linalg.vector_norm(x, ord=order)


def norms(tensors: Sequence[torch.Tensor], order: float = 2) -> list[torch.Tensor]:
    """:func:`norm` of each of ``tensors``: one multi-tensor kernel (``torch._foreach_norm``)
    for all float32 and float64 tensors of one device and dtype, :func:`norm` for the others.

    The values are those of :func:`norm` up to the order in which a kernel sums (a few units in
    the last place).

    Examples:
        >>> norms([torch.tensor([3.0, 4.0]), torch.tensor([[1.0]]), torch.tensor([6, 8])])
        [tensor(5.), tensor(1.), tensor(10.)]
    """
    order = _check_order(order)
    dtypes = {x.dtype for x in tensors}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}:
        if len({x.device for x in tensors}) == 1:  # the common case: one kernel, no sorting
            try:
                return list(torch._foreach_norm(list(tensors), order))
            except (NotImplementedError, RuntimeError):
                pass  # a sparse tensor among them (the kernel takes strided ones only)
    result: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, x in enumerate(tensors):
        strided = x.layout == torch.strided
        if strided and x.dtype in (torch.float32, torch.float64) and x.numel() > 0:
            groups.setdefault((x.device, x.dtype), []).append(index)
        else:
            result[index] = norm(x, order)
    for indices in groups.values():
        values = torch._foreach_norm([tensors[i] for i in indices], order)
        for index, value in zip(indices, values):
            result[index] = value
    return result  # type: ignore[return-value]


def _consecutive(values: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D tensor whose elements, in order, ``values`` are (0-d tensors of one dtype that lie
    one after the other in one buffer), or None. On CUDA, ``torch._foreach_norm`` returns its
    norms as such views of one result tensor: that tensor then stands for their stack, with no
    copy (no kernel launch)."""
    first = values[0]
    if first.dim() != 0 or first.is_meta:
        return None
    size, start, dtype = first.element_size(), first.data_ptr(), first.dtype
    # the cheapest test first: separate tensors fail it at the second value
    for index, value in enumerate(values):
        if value.data_ptr() != start + index * size or value.dim() != 0 or value.dtype != dtype:
            return None
    if (first.storage_offset() + len(values)) * size > first.untyped_storage().nbytes():
        return None  # the run would leave the first value's buffer
    return first.as_strided((len(values),), (1,))


def stacked(values: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """0-d tensors of one device as one 1-D tensor (in the widest dtype among them); the list
    itself when they are on several devices or there are none.

    When the values already lie one after the other in one buffer (as the norms of
    :func:`norms` do on CUDA), the result is a view of that buffer instead of a copy.

    Examples:
        >>> stacked([torch.tensor(1.0), torch.tensor(2.0, dtype=torch.float64)])
        tensor([1., 2.], dtype=torch.float64)
        >>> buffer = torch.tensor([3.0, 4.0])
        >>> stacked(list(buffer)).data_ptr() == buffer.data_ptr()  # a view, no copy
        True
    """
    if not values or len({v.device for v in values}) > 1:
        return list(values)
    dtypes = {v.dtype for v in values}
    if len(dtypes) > 1:
        dtype = functools.reduce(torch.promote_types, dtypes)
        values = [v.to(dtype) for v in values]
    else:
        run = _consecutive(values)
        if run is not None:
            return run
    try:
        return torch.stack(list(values))
    except RuntimeError:  # not all 0-d
        return torch.stack([v.reshape(()) for v in values])


def mean(x: torch.Tensor) -> torch.Tensor:
    """The arithmetic mean of all entries of ``x``.

    Examples:
        >>> mean(torch.tensor([[1, 2], [3, 6]]))  # integers are averaged as float32
        tensor(3.)
    """
    return _as_float(x).mean()


def variance(x: torch.Tensor) -> torch.Tensor:
    """The unbiased sample variance of all entries of ``x``: ``sum (x_i - mean)^2 / (n - 1)``.

    NaN when ``x`` has fewer than two entries (as in :func:`torch.var`).

    Examples:
        >>> variance(torch.tensor([1.0, 2.0, 3.0, 4.0])), variance(torch.tensor([1.0]))
        (tensor(1.6667), tensor(nan))
    """
    x = _as_float(x)
    if x.numel() < 2:
        return torch.full((), math.nan, dtype=x.dtype, device=x.device)
    return torch.var(x, correction=1)


def norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``||numerator||_2 / ||denominator||_2``, the ratio of the L2 norms of two tensors.

    With ``numerator`` a step's weight update and ``denominator`` the weights that step started
    from, this is the update-to-weight ratio. Infinite (or NaN for 0/0) when the denominator is 0.

    Examples:
        >>> weights = torch.tensor([3.0, 4.0])
        >>> norm_ratio(-0.1 * weights, weights)
        tensor(0.1000)
    """
    return norm(numerator) / norm(denominator)


def projection_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``<numerator, denominator> / ||denominator||_2^2``: the signed component of ``numerator``
    along ``denominator``, relative to the length of ``denominator``.

    Its absolute value is at most :func:`norm_ratio` (equal when the two are parallel). For a
    weight update it is negative when the step shrinks the weights (weight decay) and positive
    when it grows them. Both tensors must have the same number of entries.

    Examples:
        >>> weights = torch.tensor([3.0, 4.0])
        >>> projection_ratio(-0.1 * weights, weights)  # the step shrinks the weights
        tensor(-0.1000)
        >>> projection_ratio(torch.tensor([4.0, -3.0]), weights)  # at a right angle
        tensor(0.)
    """
    a = _as_float(numerator).reshape(-1)
    b = _as_float(denominator).reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(
            f"Expected tensors with the same number of entries but got {a.numel()} and {b.numel()}"
        )
    return torch.dot(a, b) / torch.dot(b, b)


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)


def _normalize_or(x: torch.Tensor, fallback: torch.Tensor, eps: float) -> torch.Tensor:
    """``x`` scaled to unit length, or the unit vector ``fallback`` where ``||x|| <= eps``.

    Chosen on the device (:func:`torch.where`), so no value is read back to the host.
    """
    length = torch.linalg.vector_norm(x)
    return torch.where(length > eps, x / length.clamp_min(eps), fallback)


@functools.lru_cache(maxsize=64)
def _fallback_vector(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`initial_vector`, drawn once per length, device and dtype (never modified)."""
    return initial_vector(n, device, dtype)


def initial_vector(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed pseudo-random unit vector of length ``n`` on ``device`` (the same on every call).

    Drawn from a private generator so that starting a power iteration never consumes the global
    random state the training loop relies on (dropout, shuffling). Drawn on ``device`` itself
    where it has a generator, so no host-to-device copy (and synchronisation) is needed.

    Examples:
        >>> u = initial_vector(3, torch.device("cpu"), torch.float64)
        >>> float(torch.linalg.vector_norm(u)), torch.equal(u, initial_vector(3, "cpu", u.dtype))
        (1.0, True)
    """
    device = torch.device(device)
    try:
        generator = torch.Generator(device=device).manual_seed(0x5EED)
        u = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    except RuntimeError:  # a device without its own generator: draw on the CPU
        generator = torch.Generator().manual_seed(0x5EED)
        u = torch.randn(n, generator=generator, dtype=torch.float32).to(device)
    return _normalize(u.to(dtype), 1e-12)


def _rows_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` (as a float tensor, detached) with ``dim``, the dimension that indexes a matrix's
    rows, moved to the front; checks both.

    Raises:
        ValueError: for a 0-d ``x``, or a ``dim`` that is not one of its dimensions.
    """
    if x.dim() < 1:
        raise ValueError(f"Expected a tensor with at least one dimension but got shape {x.shape}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"Expected `dim` to be a dimension of a {x.dim()}-d tensor but got {dim!r}"
        )
    x = _as_float(x).detach()
    return x.movedim(dim, 0) if dim % x.dim() else x


def spectral_norm(
    x: torch.Tensor,
    u: torch.Tensor | None = None,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate the largest singular value of ``x`` by power iteration.

    ``x`` is taken as the matrix whose rows run along dimension ``dim`` (the output dimension:
    0 for linear and conv weights, 1 for a transposed convolution's ``(in, out, *kernel)``), as
    :func:`torch.nn.utils.spectral_norm` takes it. Each iteration does
    ``v = normalize(W^T u)``, ``u = normalize(W v)``; the estimate is ``sigma = u^T W v``, a lower
    bound that converges to the spectral norm. Pass the returned ``u`` into the next call on the
    same (slowly changing) matrix, and one iteration per call tracks it closely.

    A zero product never zeroes a vector: where ``W^T u`` is (numerically) zero, ``v`` is a
    fixed pseudo-random unit vector instead, and where ``W v`` is, ``u`` is kept. So a zero
    matrix gives ``sigma = 0`` with ``u`` still a unit vector, and the estimate follows the
    matrix as soon as it is non-zero (a zero-initialised layer that starts to learn). The choice
    is made on the device, without a host synchronisation. The products are taken in units of
    the matrix's largest magnitude, so the estimate scales with the matrix: one of entries
    near 1e-15 (a late update) or 1e18 reads as its scaled copy of entries near 1 does.

    Args:
        x: the tensor (at least one dimension; a vector is a one-column matrix).
        u: the left singular vector estimate from the previous call, of length ``x.shape[0]``, or
            ``None`` to start from :func:`initial_vector`. A vector of another length, device or
            dtype is replaced or converted.
        n_power_iterations: iterations to run (>= 1).
        eps: a product shorter than this, in units of the matrix's largest magnitude, counts
            as zero (guards the normalisations against division by zero).
        dim: the dimension of ``x`` that indexes the rows of the matrix.

    Returns:
        ``(sigma, u)``: the estimate as a 0-d tensor and the updated unit vector ``u``.

    Raises:
        ValueError: for a 0-d ``x`` or ``n_power_iterations < 1``.

    Examples:
        >>> w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
        >>> sigma, u = spectral_norm(w, n_power_iterations=20)
        >>> round(float(sigma), 4), u.abs().round(decimals=4)
        (3.0, tensor([1., 0.]))
        >>> sigma, u = spectral_norm(torch.zeros(2, 2))  # u stays a unit vector
        >>> float(sigma), round(float(torch.linalg.vector_norm(u)), 4)
        (0.0, 1.0)
    """
    if (
        isinstance(n_power_iterations, bool)
        or not isinstance(n_power_iterations, int)
        or n_power_iterations < 1
    ):
        raise ValueError(
            "Expected argument `n_power_iterations` to be an integer >= 1 but got "
            f"{n_power_iterations!r}"
        )
    w = _rows_along(x, dim)
    if w.numel() == 0:  # no entries (a placeholder parameter): no singular value but 0
        rows = w.shape[0]
        if u is None or u.shape != (rows,):
            u = _fallback_vector(rows, w.device, w.dtype) if rows else w.new_zeros(0)
        return w.new_zeros(()), u
    w = w.reshape(w.shape[0], -1)
    u_start = _fallback_vector(w.shape[0], w.device, w.dtype)
    v_start = _fallback_vector(w.shape[1], w.device, w.dtype)
    with torch.no_grad():
        if u is None or u.shape != (w.shape[0],):
            u = u_start
        else:  # a zero vector (a checkpoint of a collapsed iteration) starts afresh
            u = _normalize_or(u.detach().to(device=w.device, dtype=w.dtype), u_start, eps)
        # the products in units of the largest magnitude: a matrix of tiny entries (a late
        # update) is not taken for a zero one, a huge one's lengths do not overflow
        scale = _magnitude(w)
        for _ in range(n_power_iterations):
            v = _normalize_or(torch.mv(w.t(), u) / scale, v_start, eps)
            wv = torch.mv(w, v) / scale
            u = _normalize_or(wv, u, eps)
        # u^T W v with u = W v / ||W v||, or 0 where W v is (numerically) zero: never negative
        sigma = torch.linalg.vector_norm(wv) * scale
    return sigma, u


def _magnitude(w: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of ``w``'s entries as a 0-d tensor, 1 where that is 0 or not
    finite (a matrix to divide by it: its entries then lie in [-1, 1])."""
    top = torch.linalg.vector_norm(w, ord=math.inf)  # (no copy of the entries' magnitudes)
    return torch.where((top > 0) & torch.isfinite(top), top, torch.ones_like(top))


def largest_singular_value(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The exact spectral norm of ``x`` taken as a matrix whose rows run along ``dim`` (as
    :func:`spectral_norm` takes it): the square root of the largest eigenvalue of the Gram
    matrix of its smaller side. Costs one ``k x k`` product and its eigenvalues, ``k`` the
    smaller side: for small ``k`` cheap, and exact where power iteration is not (a matrix
    whose top singular direction changes between calls, or whose two largest singular values
    are close, reads low after a few iterations). A matrix with a non-finite entry gives NaN
    (decided on the device, without reading a value back; on a GPU ``torch.linalg.eigvalsh``
    itself synchronises the device with the host, as PyTorch checks its errors there).

    Examples:
        >>> w = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> float(largest_singular_value(w)), float(largest_singular_value(w, dim=1))
        (3.0, 3.0)
        >>> largest_singular_value(torch.tensor([[1.0, float("nan")]]))
        tensor(nan)
    """
    w = _rows_along(x, dim)
    w = w.reshape(w.shape[0], -1)
    if w.numel() == 0:
        return w.new_zeros((), dtype=w.real.dtype if w.is_complex() else w.dtype)
    with torch.no_grad():
        finite = torch.isfinite(w).all()
        # in units of the largest magnitude: the squares of huge or tiny entries would
        # overflow or underflow
        scale = _magnitude(w)
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w)) / scale
        gram = w @ w.mH if w.shape[0] <= w.shape[1] else w.mH @ w
        top = torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt() * scale
        return torch.where(finite, top, torch.full_like(top, math.nan))


def histogram(x: torch.Tensor, bins: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bin the entries of ``x`` into ``bins`` equal-width bins between its minimum and maximum.

    Computed on ``x``'s device without reading any value back to the host (the same bins as
    ``torch.histc(x, bins, x.min(), x.max())``, which would need the range as Python numbers).

    Returns:
        ``(counts, edges, stats)``: ``bins`` counts (int64), ``bins + 1`` edges (float), and
        ``stats = [min, max, count, sum, sum of squares]`` as one float64 tensor (TensorBoard's
        histogram summary needs these).

    Raises:
        ValueError: if ``bins < 1`` or ``x`` is empty.

    Examples:
        >>> counts, edges, stats = histogram(torch.tensor([0.0, 1.0, 1.0, 3.0]), bins=3)
        >>> counts, edges
        (tensor([1, 2, 1]), tensor([0., 1., 2., 3.]))
        >>> stats  # min, max, count, sum, sum of squares
        tensor([ 0.,  3.,  4.,  5., 11.], dtype=torch.float64)
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"Expected argument `bins` to be an integer >= 1 but got {bins!r}")
    if x.numel() == 0:
        raise ValueError("Expected a non-empty tensor to bin but got one with no entries")
    flat = _as_float(x).detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    # the bins span the finite entries; NaN and infinite ones (a diverged layer) are counted in
    # no bin, and show in the stats (their min, max and sums are not finite)
    finite = torch.isfinite(flat)
    lo = torch.where(finite, flat, torch.inf).min()
    hi = torch.where(finite, flat, -torch.inf).max()
    # like torch.histc, a constant input is binned over [value - 1, value + 1]; where the
    # entries' precision cannot tell value - 1 from value (float32 from 2**24 on), over
    # ``bins`` units of its last place either side, so that the edges differ
    constant = hi == lo
    low64, high64 = lo.double(), hi.double()
    coarse = (lo - 1 == lo) | (hi + 1 == hi)
    reach = torch.where(
        coarse, low64.abs().maximum(high64.abs()) * torch.finfo(flat.dtype).eps * bins, 1.0
    )
    first64 = torch.where(constant, low64 - reach, low64)
    last64 = torch.where(constant, high64 + reach, high64)
    first, last = first64.to(flat.dtype), last64.to(flat.dtype)
    span = last - first
    steps = torch.arange(bins + 1, device=flat.device, dtype=torch.float64) / bins
    # (in float64: a float32 span from -3e38 to 3e38 overflows, a layer about to diverge)
    edges = (first64 + (last64 - first64) * steps).to(flat.dtype)
    # bin by hand (torch.histc and torch.bincount read the range or the size back to the host)
    # with torch.histc's arithmetic, (x - min) * bins / (max - min) in this order, so that a
    # value on an edge goes to the same bin; every index stays in range, whatever the entries
    index = (flat - first).mul_(bins).div_(span)
    if flat.dtype != torch.float64:  # where the span overflowed, the same in float64
        wide = (flat.double() - first64).mul_(bins).div_(last64 - first64)
        index = torch.where(torch.isfinite(span), index.double(), wide)
    index = index.nan_to_num_(0.0, bins - 1, 0.0)
    index = index.floor_().clamp_(0, bins - 1).long()
    # counted in integers: a float32 count stops at 2**24 (an embedding's mostly zero gradient
    # has more entries than that in one bin)
    counts = torch.zeros(bins, device=flat.device, dtype=torch.int64)
    counts.index_add_(0, index, finite.long())
    n = torch.full((), flat.numel(), device=flat.device, dtype=torch.float64)
    low, high = torch.aminmax(flat)
    wide = torch.float64
    stats = torch.stack(
        [
            low.to(wide),
            high.to(wide),
            n,
            flat.sum(dtype=wide),
            # squared in float64 (a float32 square overflows from 2e19, underflows below 1e-23)
            torch.linalg.vector_norm(flat, dtype=wide).square(),
        ]
    )
    return counts, edges, stats
