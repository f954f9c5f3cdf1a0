"""One layer's activation matrix prepared for all three measures of a checkpoint at once.

At every checkpoint :class:`~ikkuna_tune.subscribers.SVCCASubscriber` reduces each layer's
activations for SVCCA (:func:`~ikkuna_tune.functional.svcca.kept_basis`), prepares them for
linear CKA against initialisation (:func:`~ikkuna_tune.functional.cka.cka_side`) and counts
their live features (:func:`~ikkuna_tune.functional.cka.live_fraction`). The three start
alike: a float64 copy divided by its largest magnitude, the column means subtracted twice,
columns constant up to rounding zeroed, and (for SVCCA's Gram route and CKA's norm) the same
Gram matrix. :func:`reduce_layer` does that work once and gives the three results, equal to
the separate functions' up to rounding: on the small matrices of a probe the shared work is a
third of the three functions' time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ikkuna_tune.checks import check_fraction
from ikkuna_tune.functional.cca import _centred
from ikkuna_tune.functional.cka import CKASide
from ikkuna_tune.functional.svcca import (
    KeptBasis,
    _gram_of,
    _kept_basis,
)

__all__ = ["LayerReduction", "reduce_layer"]


class LayerReduction(NamedTuple):
    """What :func:`reduce_layer` makes of one activation matrix.

    Examples:
        >>> reduction = reduce_layer(torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0]]))
        >>> int(reduction.basis.count), float(reduction.live)  # the second feature is constant
        (1, 0.5)
    """

    #: As :func:`~ikkuna_tune.functional.svcca.kept_basis` gives it.
    basis: KeptBasis
    #: As :func:`~ikkuna_tune.functional.cka.cka_side` gives it, except that columns constant
    #: over the rows may be left out of ``centred`` (they add nothing to CKA).
    cka: CKASide
    #: :func:`~ikkuna_tune.functional.cka.live_fraction` (0-d float64; NaN if not finite).
    live: torch.Tensor


def reduce_layer(
    x: torch.Tensor, keep: float = 0.99, rtol: float = 1e-6, slice_kept: bool | None = None
) -> LayerReduction:
    """``kept_basis(x, keep)``, ``cka_side(x)`` and ``live_fraction(x, rtol)`` from one centring
    and one Gram matrix. No value is read back to the host on a GPU (its eigendecomposition
    synchronises the device with the host all the same; on a CPU, as
    :func:`~ikkuna_tune.functional.svcca.kept_basis`, the number of constant columns is).

    A feature is live when its standard deviation over the rows, ``||x_j - mean_j|| /
    sqrt(n - 1)``, exceeds ``rtol`` times the largest magnitude in ``x``: the rule of
    :func:`~ikkuna_tune.functional.cka.live_fraction`, on the centred copy, where a column
    that varies only at rounding level (a centred norm of at most ``4 n eps`` of its largest
    entry) counts as constant: with ``rtol`` of about ``1e-13`` or less the two can differ on
    such a column (the default, ``1e-6``, is far above it).

    Raises:
        ValueError: for anything but a matrix with at least 2 rows and 1 column, for ``keep``
            outside (0, 1) and for ``rtol`` outside [0, 1).

    Examples:
        >>> from ikkuna_tune.functional.cka import cka_side, linear_cka_of_sides, live_fraction
        >>> from ikkuna_tune.functional.svcca import kept_basis, similarity_of_bases
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 5, generator=g), torch.randn(60, 5, generator=g)
        >>> x[:, 4] = 1.0  # a dead feature
        >>> shared = reduce_layer(x)
        >>> float(shared.live), float(live_fraction(x))
        (0.8, 0.8)
        >>> other = kept_basis(y)
        >>> a = float(similarity_of_bases(shared.basis, other))
        >>> b = float(similarity_of_bases(kept_basis(x), other))
        >>> abs(a - b) < 1e-12
        True
        >>> a = float(linear_cka_of_sides(shared.cka, cka_side(y)))
        >>> b = float(linear_cka_of_sides(cka_side(x), cka_side(y)))
        >>> abs(a - b) < 1e-12
        True
    """
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"Expected a matrix with >= 2 rows and >= 1 column but got shape {tuple(x.shape)}"
        )
    keep = check_fraction("keep", keep)
    if keep == 1:
        raise ValueError(
            "Expected `keep` < 1 for a basis of one side (keep=1 factorises both sides "
            "together: use svcca_similarity_or_nan) but got 1"
        )
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"Expected `rtol` in [0, 1) but got {rtol!r}")
    x = x.detach()
    if slice_kept is None:
        slice_kept = x.device.type == "cpu"
    n, p = x.shape
    extremes = torch.stack([e.double() for e in torch.aminmax(x)])
    finite = torch.isfinite(extremes).all()
    # divided by the largest magnitude of the varying columns, centred twice, constant columns
    # zero (or left out)
    divisors: list[torch.Tensor] = []
    centred, (width,), noise = _centred((x,), slice_kept, ~finite, divisors)
    nan = torch.full((), math.nan, dtype=torch.float64, device=x.device)
    if width == 0:  # nothing varies: no basis, a CKA side of norm 0, no live feature
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        basis = KeptBasis(None, torch.zeros((), dtype=torch.int64, device=x.device), finite)
        return LayerReduction(basis, CKASide(centred, zero, finite), torch.where(finite, zero, nan))
    gram = _gram_of(centred)
    norm = torch.linalg.matrix_norm(gram)
    # each column's standard deviation against rtol times the largest magnitude of all of x
    # (a constant column may hold it: it was left out of the divisor)
    deviation = torch.linalg.vector_norm(centred, dim=0) * (divisors[0] / math.sqrt(n - 1))
    threshold = rtol * extremes.abs().max()
    live = ((deviation > threshold) & (deviation > 0)).sum().double() / p
    kept, count = _kept_basis(centred, keep, slice_kept, noise, gram)
    return LayerReduction(
        KeptBasis(kept, count, finite),
        CKASide(centred, norm, finite),
        torch.where(finite, live, nan),
    )
