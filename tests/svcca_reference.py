"""Independent NumPy references for CCA and SVCCA, shared by the functional and subscriber tests.

Nothing here calls ikkuna_tune. Two routes to the canonical correlations:

- :func:`textbook_cca`: the covariance route of the textbooks, the singular values of
  ``Sxx^(-1/2) Sxy Syy^(-1/2)``. Exact for data of full column rank after centring, fragile
  otherwise (it squares the condition number and inverts the covariances).
- :func:`subspace_cca`: the cosines of the principal angles between the two centred column
  spaces (Björck and Golub, 1973), from orthonormal bases given by NumPy's SVD of each side,
  with directions below ``rtol`` times the largest singular value dropped. Stable for rank
  deficient and badly scaled data.

SVCCA (Raghu et al., 2017) keeps on each side the fewest leading singular directions whose
squared singular values reach the fraction ``keep`` of the total, and averages the canonical
correlations of the reduced sets (there are ``min(k_x, k_y)`` of them): :func:`textbook_svcca`
runs the covariance CCA on the reduced sets ``u_k diag(s_k)``; :func:`subspace_svcca` takes
the canonical correlations of the reduced sets as the singular values of ``u_{x,k}^T u_{y,k}``
(the whitened reduced sets are their left singular vectors) and is 0 when a side does not vary.
"""

from __future__ import annotations

import numpy as np

__all__ = ["subspace_cca", "subspace_svcca", "textbook_cca", "textbook_svcca"]


def _centred(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a - a.mean(0)


def _n_kept(s: np.ndarray, keep: float) -> int:
    """The fewest leading directions whose variance ``s**2`` reaches ``keep`` of the total."""
    frac = np.cumsum(s**2) / np.sum(s**2)
    return min(int(np.searchsorted(frac, keep) + 1), len(s))


def textbook_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations as in the textbooks: singular values of
    Sxx^(-1/2) Sxy Syy^(-1/2), with inverse square roots from eigendecompositions."""
    x, y = _centred(x), _centred(y)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y

    def inv_sqrt(s: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(s)
        return (v / np.sqrt(w)) @ v.T

    return np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)


def textbook_svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    """Raghu et al.: keep the top singular directions explaining ``keep`` of the variance, then
    the mean textbook canonical correlation of the reduced sets."""

    def reduce(a: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(_centred(a), full_matrices=False)
        k = _n_kept(s, keep)
        return u[:, :k] * s[:k]

    return float(np.mean(textbook_cca(reduce(x), reduce(y))))


def _basis(a: np.ndarray, keep: float, rtol: float) -> np.ndarray:
    """Orthonormal basis of the kept leading directions of centred ``a`` (n x k, k may be 0)."""
    u, s, _ = np.linalg.svd(_centred(a), full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return u[:, :0]
    rank = int(np.sum(s > rtol * s[0]))
    u, s = u[:, :rank], s[:rank]
    return u[:, : _n_kept(s, keep)] if keep < 1 else u


def subspace_cca(x: np.ndarray, y: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Canonical correlations as cosines of the principal angles between the centred column
    spaces (descending; ``min(rank x, rank y)`` of them, rank counting singular values above
    ``rtol`` times the largest)."""
    bx, by = _basis(x, 1.0, rtol), _basis(y, 1.0, rtol)
    if bx.shape[1] == 0 or by.shape[1] == 0:
        return np.zeros(0)
    return np.linalg.svd(bx.T @ by, compute_uv=False)


def subspace_svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99, rtol: float = 1e-10) -> float:
    """SVCCA by principal angles: the mean cosine between the kept leading singular subspaces
    (0 when a side has no direction)."""
    bx, by = _basis(x, keep, rtol), _basis(y, keep, rtol)
    if bx.shape[1] == 0 or by.shape[1] == 0:
        return 0.0
    return float(np.mean(np.linalg.svd(bx.T @ by, compute_uv=False)))
