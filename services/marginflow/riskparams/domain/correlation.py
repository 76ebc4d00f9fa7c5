"""EWMA covariance of joint returns, correlation, and the nearest correlation matrix.

Covariance (RiskMetrics, zero mean), element-wise on the pairs observed in an interval:

.. math:: \\Sigma_{ij,t} = \\lambda\\,\\Sigma_{ij,t-1} + (1-\\lambda)\\,r_{i,t-1}\\,r_{j,t-1}

Pairs are updated only when both returns exist, so the estimate can lose positive
semi-definiteness; :func:`nearest_correlation` then repairs it.

Nearest correlation matrix: Higham's alternating projections with Dykstra's correction between
the PSD cone ``S`` and the unit-diagonal matrices ``U`` (Frobenius norm):

.. math:: R_k = Y_{k-1} - \\Delta S_{k-1},\\ X_k = P_S(R_k),\\ \\Delta S_k = X_k - R_k,\\ Y_k = P_U(X_k)

Source: N. J. Higham (2002), "Computing the nearest correlation matrix — a problem from
finance", IMA J. Numer. Anal. 22, 329–343, Algorithm 3.3. A final eigenvalue clip and diagonal
rescaling ``D^{-1/2} X D^{-1/2}`` make the result PSD with an exact unit diagonal.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Float64Array = NDArray[np.float64]


def _psd_projection(a: Float64Array, floor: float = 0.0) -> Float64Array:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    w = np.maximum(w, floor)
    return (v * w) @ v.T


def is_correlation_matrix(c: Float64Array, tol: float = 1e-10) -> bool:
    """Symmetric, unit diagonal, entries in [−1, 1], smallest eigenvalue ≥ −tol."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.all(np.isfinite(c)):
        return False
    return bool(np.allclose(c, c.T, atol=tol) and np.allclose(np.diag(c), 1.0, atol=tol)
                and np.all(np.abs(c) <= 1.0 + tol) and np.linalg.eigvalsh(c).min() >= -tol)


def nearest_correlation(a: Float64Array, tol: float = 1e-10, max_iterations: int = 500) -> Float64Array:
    """The nearest (Frobenius) correlation matrix to the symmetric matrix ``a`` (Higham 2002).

    Raises ValueError for a non-square or non-finite input.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"need a square matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("matrix has non-finite entries")
    y = (a + a.T) / 2.0
    delta_s = np.zeros_like(y)
    for _ in range(max_iterations):
        r = y - delta_s
        x = _psd_projection(r)
        delta_s = x - r
        y_next = x.copy()
        np.fill_diagonal(y_next, 1.0)
        done = np.linalg.norm(y_next - y) / max(np.linalg.norm(y_next), 1e-300) < tol
        y = y_next
        if done:
            break
    x = _psd_projection(y, floor=0.0)
    d = np.sqrt(np.clip(np.diag(x), 1e-300, None))
    c = x / np.outer(d, d)
    c = (c + c.T) / 2.0
    np.fill_diagonal(c, 1.0)
    return np.clip(c, -1.0, 1.0)


def correlation_from_covariance(cov: Float64Array) -> Float64Array:
    """``ρ_ij = Σ_ij / √(Σ_ii Σ_jj)``; rows of a zero-variance asset are 0 off the diagonal."""
    cov = np.asarray(cov, dtype=np.float64)
    d = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = cov / np.outer(d, d)
    c[~np.isfinite(c)] = 0.0
    np.fill_diagonal(c, 1.0)
    return c


def repaired_correlation(cov: Float64Array, tol: float = 1e-10) -> tuple[Float64Array, bool]:
    """Correlation of ``cov``, repaired to the nearest correlation matrix when it is not one.

    Returns ``(matrix, repaired)``.
    """
    c = correlation_from_covariance(cov)
    if is_correlation_matrix(c, tol=tol):
        return c, False
    return nearest_correlation(c), True


class EwmaCovariance:
    """EWMA covariance of ``n`` assets updated pairwise on the returns present in an interval."""

    def __init__(self, n: int, lam: float, initial_variances: Float64Array | None = None) -> None:
        if not 0.0 < lam < 1.0:
            raise ValueError(f"lambda must lie strictly between 0 and 1, got {lam!r}")
        self.lam = lam
        self.cov = np.zeros((n, n)) if initial_variances is None else np.diag(np.asarray(initial_variances, float))
        self.observations = np.zeros((n, n), dtype=np.int64)

    def update(self, log_returns: Float64Array, present: NDArray[np.bool_]) -> None:
        """Fold one interval's returns in; ``present[i]`` False leaves asset ``i``'s pairs unchanged."""
        r = np.where(present, log_returns, 0.0)
        mask = np.outer(present, present)
        self.cov = np.where(mask, self.lam * self.cov + (1.0 - self.lam) * np.outer(r, r), self.cov)
        self.observations += mask

    def to_state(self) -> dict:
        return {"cov": self.cov.tolist(), "obs": self.observations.tolist()}

    def load_state(self, state: dict) -> None:
        cov = np.asarray(state["cov"], dtype=np.float64)
        if cov.shape == self.cov.shape:
            self.cov = cov
            self.observations = np.asarray(state["obs"], dtype=np.int64)
