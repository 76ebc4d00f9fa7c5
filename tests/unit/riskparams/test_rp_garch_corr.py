"""GARCH(1,1) against the arch library on its S&P 500 series; nearest correlation matrix."""

import numpy as np
import pytest
from arch import arch_model
from arch.data import sp500
from statsmodels.stats.correlation_tools import corr_nearest

from marginflow.riskparams.domain.correlation import (EwmaCovariance, is_correlation_matrix, nearest_correlation,
                                                      repaired_correlation)
from marginflow.riskparams.domain.garch import fit_garch11, garch_update

import rp_helpers as h


@pytest.fixture(scope="module")
def sp500_returns() -> np.ndarray:
    px = sp500.load()["Adj Close"].to_numpy()
    return np.diff(np.log(px))[-1000:]


def test_garch_matches_arch_on_sp500(sp500_returns):
    fit = fit_garch11(sp500_returns)
    assert fit.ok, fit.reason
    # Reference: the library's own fit on percent returns (its usual scaling).
    ref = arch_model(sp500_returns * 100, mean="Zero", vol="GARCH", p=1, q=1, dist="normal").fit(disp="off")
    omega_pct, alpha, beta = ref.params.to_numpy()
    assert fit.alpha == pytest.approx(alpha, abs=2e-3)
    assert fit.beta == pytest.approx(beta, abs=2e-3)
    assert fit.omega == pytest.approx(omega_pct / 1e4, rel=2e-2)
    ref_forecast = ref.forecast(horizon=1, reindex=False).variance.to_numpy()[-1, 0] / 1e4
    assert fit.forecast_variance == pytest.approx(ref_forecast, rel=5e-3)
    assert 0.0 < fit.persistence < 1.0


def test_garch_forecast_is_the_recursion_on_the_last_return(sp500_returns):
    fit = fit_garch11(sp500_returns)
    ref = arch_model(sp500_returns / np.sqrt(np.mean(sp500_returns ** 2)), mean="Zero", vol="GARCH",
                     p=1, q=1, rescale=False).fit(disp="off")
    scale2 = np.mean(sp500_returns ** 2)
    last_var = ref.conditional_volatility[-1] ** 2 * scale2
    assert garch_update(last_var, sp500_returns[-1], fit.omega, fit.alpha, fit.beta) == pytest.approx(
        fit.forecast_variance, rel=1e-8)


def test_degenerate_fits_say_why():
    assert fit_garch11(np.full(300, 0.0)).reason == "zero_variance"
    assert fit_garch11(np.full(10, 0.01), min_returns=250).reason == "too_few_returns"
    bad = np.full(300, 0.01)
    bad[5] = np.nan
    assert fit_garch11(bad).reason == "non_finite_input"
    assert not fit_garch11(np.full(300, 0.0)).ok


def test_engine_falls_back_to_ewma_and_reports_the_failure(monkeypatch):
    from marginflow.riskparams import application
    from marginflow.riskparams.domain.garch import GarchFit
    monkeypatch.setattr(application, "fit_garch11", lambda r, m: GarchFit(False, "not_converged", n_obs=len(r)))
    e = h.engine()
    rep = e.ingest_ticks(h.daily_ticks(h.daily_paths(130)))
    assert ("BTC", "not_converged") in rep.garch_failures
    est = {x.underlying: x for x in e.estimates()}["BTC"]
    assert not est.garch_ok and est.garch_reason == "not_converged"
    assert est.sigma_garch == est.sigma_ewma_fast


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.IterationLimitWarning")
def test_higham_example_known_answer():
    # Higham (2002) §4 example: nearest correlation matrix to [[1,1,0],[1,1,1],[0,1,1]].
    a = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    c = nearest_correlation(a)
    np.testing.assert_allclose(c, [[1, 0.7607, 0.1573], [0.7607, 1, 0.7607], [0.1573, 0.7607, 1]], atol=1e-4)
    assert is_correlation_matrix(c)
    np.testing.assert_allclose(c, corr_nearest(a, n_fact=100), atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_repair_gives_a_valid_correlation_matrix(seed):
    rng = np.random.default_rng(seed)
    n = 10
    a = rng.uniform(-1, 1, (n, n))
    a = (a + a.T) / 2
    np.fill_diagonal(a, 1.0)
    assert not is_correlation_matrix(a)          # random symmetric: not PSD
    c = nearest_correlation(a)
    assert is_correlation_matrix(c)
    assert np.linalg.eigvalsh(c).min() >= -1e-12
    # Nearest: no farther than a simple valid candidate (the identity).
    assert np.linalg.norm(c - a) <= np.linalg.norm(np.eye(n) - a)


def test_valid_matrix_is_left_alone():
    cov = np.array([[4.0, 1.2], [1.2, 1.0]])
    c, repaired = repaired_correlation(cov)
    assert not repaired
    np.testing.assert_allclose(c, [[1, 0.6], [0.6, 1]])


def test_pairwise_ewma_covariance_updates_only_present_pairs():
    cov = EwmaCovariance(3, 0.9, np.array([1.0, 1.0, 1.0]))
    cov.update(np.array([1.0, 2.0, 5.0]), np.array([True, True, False]))
    assert cov.cov[0, 1] == pytest.approx(0.1 * 2.0)           # 0.9·0 + 0.1·1·2
    assert cov.cov[0, 0] == pytest.approx(0.9 + 0.1)
    assert cov.cov[2, 2] == 1.0 and cov.cov[0, 2] == 0.0       # SOL absent: unchanged
