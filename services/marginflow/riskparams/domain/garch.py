"""GARCH(1,1) by maximum likelihood (the ``arch`` library), and its variance recursion.

.. math:: r_t = \\sigma_t\\,\\varepsilon_t,\\quad \\varepsilon_t \\sim N(0,1),\\qquad
          \\sigma^2_t = \\omega + \\alpha\\,r^2_{t-1} + \\beta\\,\\sigma^2_{t-1}

Zero mean (as the EWMA), normal quasi-likelihood. The fit runs on a rolling window of returns
scaled to unit variance (the optimiser is best conditioned there; ``ω`` is scaled back by the
sample variance ``s²``, ``α`` and ``β`` are scale-free). Between refits the fitted recursion
carries the variance forward with each new return. A fit is *degenerate* — and EWMA is used
instead — when the optimiser did not converge, a parameter or the forecast is not finite,
``ω ≤ 0``, ``α < 0``, ``β < 0`` or ``α + β ≥ 1`` (no finite unconditional variance).

Sources: T. Bollerslev (1986), "Generalized Autoregressive Conditional Heteroskedasticity",
J. Econometrics 31, eq. (1)–(2); K. Sheppard, ``arch`` (``arch.univariate.arch_model``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from arch import arch_model   # imported at start: the first refit must not pause the stream for it
from numpy.typing import NDArray

PERSISTENCE_LIMIT = 0.9999   # α + β at or above this: integrated, no mean reversion


@dataclasses.dataclass(frozen=True)
class GarchFit:
    """Result of one fit. Variances are per sampling interval, in (log return)² units."""

    ok: bool
    reason: str                     # "ok", "too_few_returns", "not_converged", "non_stationary", ...
    omega: float = 0.0
    alpha: float = 0.0
    beta: float = 0.0
    forecast_variance: float = 0.0  # one-step-ahead σ²_{n+1} after the last return of the window
    n_obs: int = 0

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta


def fit_garch11(log_returns: NDArray[np.float64], min_returns: int = 250) -> GarchFit:
    """Fit GARCH(1,1) to ``log_returns`` by maximum likelihood; never raises on bad data.

    Returns a :class:`GarchFit` whose ``ok`` is False (with the reason) when the fit failed or is
    degenerate; the caller then falls back to EWMA.
    """
    r = np.asarray(log_returns, dtype=np.float64)
    n = int(r.size)
    if n < min_returns:
        return GarchFit(False, "too_few_returns", n_obs=n)
    if not np.all(np.isfinite(r)):
        return GarchFit(False, "non_finite_input", n_obs=n)
    scale = float(np.sqrt(np.mean(r * r)))
    if not scale > 0.0:
        return GarchFit(False, "zero_variance", n_obs=n)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = arch_model(r / scale, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
            res = model.fit(disp="off", show_warning=False, options={"maxiter": 200})
            forecast = float(res.forecast(horizon=1, reindex=False).variance.values[-1, 0])
    except Exception as exc:  # noqa: BLE001 - any optimiser failure means "fall back to EWMA"
        return GarchFit(False, f"error:{type(exc).__name__}", n_obs=n)
    omega_s, alpha, beta = (float(v) for v in res.params.values)
    var_scale = scale * scale
    fit = GarchFit(True, "ok", omega_s * var_scale, alpha, beta, forecast * var_scale, n)
    reason = _degenerate(fit, int(res.convergence_flag))
    return fit if reason is None else dataclasses.replace(fit, ok=False, reason=reason)


def _degenerate(fit: GarchFit, convergence_flag: int) -> str | None:
    if convergence_flag != 0:
        return "not_converged"
    values = (fit.omega, fit.alpha, fit.beta, fit.forecast_variance)
    if not all(math.isfinite(v) for v in values):
        return "non_finite"
    if fit.omega <= 0.0 or fit.alpha < 0.0 or fit.beta < 0.0 or fit.forecast_variance <= 0.0:
        return "degenerate"
    if fit.persistence >= PERSISTENCE_LIMIT:
        return "non_stationary"
    return None


def garch_update(variance: float, log_return: float, omega: float, alpha: float, beta: float) -> float:
    """One step of the fitted recursion: ``ω + α·r² + β·σ²``."""
    return omega + alpha * log_return * log_return + beta * variance
