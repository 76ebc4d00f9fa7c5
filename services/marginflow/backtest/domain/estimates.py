"""The riskparams estimators replayed over a whole history, one sampling interval at a time.

Every number comes from riskparams' domain functions — ``ewma_variance_path``, ``fit_garch11`` /
``garch_update`` (refitted at the service's cadence: the first fit at ``garch_min_returns`` returns,
then every ``garch_refit_every`` returns, on the last ``garch_window``), ``floor_volatility``,
``margin_volatility`` (anti-procyclicality), ``EwmaCovariance`` / ``repaired_correlation``,
``scenario_grid``, ``filtered_historical_scenarios`` / ``bootstrap_scenarios`` — composed in the
order the riskparams engine applies them to each return (``RiskEngine._on_return`` and
``build_version``; a unit test checks this replay gives the engine's numbers on the same ticks).

It is split so a sweep reuses what a setting does not change: the GARCH path depends only on the
returns (fitted once per history, the slow part), the floor only on its look-back settings.

Arrays are ``[T, U]``: observation ``t`` is the close of the ``t``-th interval, after its return.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from marginflow.margin.domain.scenarios import GridSpec, RiskVersion
from marginflow.riskparams.domain.apc import ApcConfig, MarginVol, floor_volatility, margin_volatility
from marginflow.riskparams.domain.correlation import EwmaCovariance, repaired_correlation
from marginflow.riskparams.domain.ewma import ewma_variance_path
from marginflow.riskparams.domain.garch import GarchFit, fit_garch11, garch_update
from marginflow.riskparams.domain.scenarios import (GridConfig, bootstrap_scenarios, filtered_historical_scenarios,
                                                    scenario_grid)

GarchFitter = Callable[[str, int, np.ndarray, int], GarchFit]   # (underlying, t, window returns, min) -> fit


def plain_fitter(_underlying: str, _t: int, returns: np.ndarray, min_returns: int) -> GarchFit:
    return fit_garch11(returns, min_returns)


@dataclasses.dataclass(frozen=True)
class EstimatorSettings:
    """The riskparams settings that shape σ_m and the scenario sets: the fields of the riskparams
    engine's own configuration that the replay uses (:meth:`of_engine` takes them from it, so the
    backtest has no defaults of its own)."""

    lambda_fast: float
    lambda_slow: float
    lambda_correlation: float
    garch_window: int
    garch_min_returns: int
    garch_refit_every: int
    floor_lookback: int
    floor_stress_window: int
    floor_stress_weight: float
    floor_min_returns: int
    apc: ApcConfig
    grid: GridConfig
    fhs_count: int
    fhs_min_history: int
    es_confidence: float

    @classmethod
    def of_engine(cls, engine) -> "EstimatorSettings":
        """The same-named fields of a riskparams ``EngineConfig``."""
        return cls(**{f.name: getattr(engine, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class GarchPath:
    ok: np.ndarray          # bool[T, U]: a usable fit in force after observation t
    variance: np.ndarray    # [T, U] per interval (0 where not ok)
    fits: int
    failures: int


def garch_path(returns: np.ndarray, underlyings: tuple[str, ...], s: EstimatorSettings,
               fitter: GarchFitter = plain_fitter) -> GarchPath:
    """GARCH(1,1) fitted at the service's cadence and carried by its recursion between fits."""
    T, U = returns.shape
    ok = np.zeros((T, U), dtype=bool)
    var = np.zeros((T, U))
    fits = failures = 0
    for j, und in enumerate(underlyings):
        fit = GarchFit(False, "too_few_returns")
        g_var = 0.0
        since = 0
        col = returns[:, j]
        for t in range(T):
            r = float(col[t])
            if fit.ok:
                g_var = garch_update(g_var, r, fit.omega, fit.alpha, fit.beta)
            since += 1
            n = t + 1
            if n >= s.garch_min_returns and (fit.reason == "too_few_returns" or since >= s.garch_refit_every):
                fit = fitter(und, t, col[max(0, n - s.garch_window):n], s.garch_min_returns)
                since = 0
                fits += 1
                if fit.ok:
                    g_var = fit.forecast_variance
                else:
                    failures += 1
            ok[t, j] = fit.ok
            var[t, j] = g_var if fit.ok else 0.0
    return GarchPath(ok, var, fits, failures)


def floor_path(returns: np.ndarray, s: EstimatorSettings, samples_per_year: float) -> np.ndarray:
    """σ_floor after each observation (0 before ``floor_min_returns`` returns)."""
    T, U = returns.shape
    out = np.zeros((T, U))
    for t in range(s.floor_min_returns - 1, T):
        lo = max(0, t + 1 - s.floor_lookback)
        for j in range(U):
            out[t, j] = floor_volatility(returns[lo:t + 1, j], s.floor_stress_window, s.floor_stress_weight,
                                         samples_per_year)
    return out


@dataclasses.dataclass(frozen=True)
class EstimatorPath:
    """Every estimate after each observation, annualised unless the name says per interval."""

    sigma_fast: np.ndarray
    sigma_slow: np.ndarray
    sigma_garch: np.ndarray
    sigma_floor: np.ndarray
    sigma_base: np.ndarray        # max(ewma_fast, garch, k·implied): σ_m with anti-procyclicality off
    sigma_margin: np.ndarray
    stress: np.ndarray            # bool
    binding: np.ndarray           # object[T, U]: the cause string of margin_volatility
    sigma_then: np.ndarray        # per interval, the fast-EWMA σ in force before each return (FHS)
    correlation: np.ndarray       # [T, U, U]
    samples_per_year: float


def estimator_path(returns: np.ndarray, prior_annual_vol: np.ndarray, s: EstimatorSettings, samples_per_year: float,
                   garch: GarchPath, floor: np.ndarray) -> EstimatorPath:
    T, U = returns.shape
    prior_var = np.asarray(prior_annual_vol, dtype=np.float64) ** 2 / samples_per_year
    var_fast = np.column_stack([ewma_variance_path(returns[:, j], s.lambda_fast, prior_var[j]) for j in range(U)])
    var_slow = np.column_stack([ewma_variance_path(returns[:, j], s.lambda_slow, prior_var[j]) for j in range(U)])
    sigma_then = np.sqrt(np.vstack([prior_var[None, :], var_fast[:-1]]))
    sig_fast = np.sqrt(np.maximum(var_fast, 0.0) * samples_per_year)
    sig_slow = np.sqrt(np.maximum(var_slow, 0.0) * samples_per_year)
    sig_garch = np.where(garch.ok, np.sqrt(np.maximum(garch.variance, 0.0) * samples_per_year), sig_fast)
    sig_m = np.zeros((T, U))
    sig_b = np.zeros((T, U))
    stress = np.zeros((T, U), dtype=bool)
    binding = np.empty((T, U), dtype=object)
    for j in range(U):
        prev: MarginVol | None = None
        for t in range(T):
            prev = margin_volatility(prev, sigma_fast=float(sig_fast[t, j]), sigma_slow=float(sig_slow[t, j]),
                                     sigma_garch=float(sig_garch[t, j]), sigma_implied=0.0,
                                     sigma_floor=float(floor[t, j]), config=s.apc)
            sig_m[t, j] = prev.sigma_margin
            sig_b[t, j] = prev.sigma_base
            stress[t, j] = prev.stress
            binding[t, j] = prev.cause
    cov = EwmaCovariance(U, s.lambda_correlation, prior_var)
    corr = np.empty((T, U, U))
    present = np.ones(U, dtype=bool)
    for t in range(T):
        cov.update(returns[t], present)
        corr[t] = repaired_correlation(cov.cov)[0]
    return EstimatorPath(sig_fast, sig_slow, sig_garch, floor, sig_b, sig_m, stress, binding, sigma_then, corr,
                         samples_per_year)


def historical_moves(returns: np.ndarray, path: EstimatorPath, t: int, sigma_margin: np.ndarray,
                     s: EstimatorSettings) -> tuple[np.ndarray, bool]:
    """The historical scenario set at observation ``t`` (FHS, or the bootstrap set early on)."""
    n = t + 1
    if n >= s.fhs_min_history:
        lo = max(0, n - s.fhs_count)
        moves = filtered_historical_scenarios(returns[lo:n], path.sigma_then[lo:n], sigma_margin,
                                              path.samples_per_year, s.grid.horizon_years)
        return moves, False
    return bootstrap_scenarios(sigma_margin, path.correlation[t], s.fhs_count, s.grid.horizon_years), True


def risk_version(underlyings: tuple[str, ...], t: int, event_time_ms: int, index_price: np.ndarray,
                 sigma_margin: np.ndarray, hist: np.ndarray, s: EstimatorSettings) -> RiskVersion:
    """The margin service's view of one risk-parameter version (what its codec decodes off Kafka)."""
    grids = {}
    for j, und in enumerate(underlyings):
        g = scenario_grid(float(sigma_margin[j]), s.grid)
        grids[und] = GridSpec(und, g.price_shocks, g.vol_shocks, g.tail_price_shocks, g.tail_vol_shocks,
                              g.tail_weights, g.horizon_seconds, g.surface)
    return RiskVersion(t + 1, event_time_ms, event_time_ms, {u: float(v) for u, v in zip(underlyings, sigma_margin)},
                       {u: float(p) for u, p in zip(underlyings, index_price)}, grids, underlyings, hist,
                       s.es_confidence)

