"""Problem builders and comparison helpers for the core tests."""

from __future__ import annotations

import numpy as np

from marginflow.core import reference
from marginflow.core.synthetic import make_market, make_portfolio

RESULT_FLOAT_KEYS = ("im", "mm", "cross_im", "grid", "es", "var", "minimum", "liquidity", "isolated_im")


def close(a, b, rtol=1e-9):
    """Equal to ``rtol`` relative, with an absolute floor of ``rtol`` times the array's scale
    (a difference of two large terms carries their rounding)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def assert_same_results(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in RESULT_FLOAT_KEYS:
        assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype, key
        close(got[key], want[key])
    np.testing.assert_array_equal(got["worst"], want["worst"])


def problem(seed=0, n_und=3, n_inst=24, n_hist=64, n_acc=50, n_pos=300, n_side=4, iso_share=0.1):
    """A small market (real risk arrays) and a portfolio; returns (market, risk, portfolio)."""
    mk = make_market(n_underlyings=n_und, n_instruments=n_inst, n_hist=n_hist, seed=seed, n_side=n_side)
    risk = mk.risk(reference)
    pf = make_portfolio(n_acc, n_pos, n_inst, seed=seed + 1, isolated_share=iso_share)
    return mk, risk, pf


def model_args(mk, risk, es_level=0.975, mm_factor=0.6):
    return dict(risk=risk, underlying=mk.underlying, n_grid=mk.n_grid, tail_weights=mk.tail_weights,
                es_level=es_level, unit_notional=mk.unit_notional, mark_value=mk.mark_value,
                half_spread=mk.half_spread, depth=mk.depth, bracket_floor=mk.bracket_floor,
                bracket_rate=mk.bracket_rate, mm_factor=mm_factor)


def risk_args(mk):
    return dict(kind=mk.kind, underlying=mk.underlying, forward=mk.forward, strike=mk.strike,
                expiry_years=mk.expiry_years, implied_vol=mk.implied_vol, multiplier=mk.multiplier,
                price_shock=mk.price_shock, vol_shock=mk.vol_shock)


def account(pf, i):
    indptr, inst, size, iso = pf
    sl = slice(int(indptr[i]), int(indptr[i + 1]))
    return inst[sl], size[sl], iso[sl]
