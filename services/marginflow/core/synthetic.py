"""Synthetic markets and portfolios for tests, benchmarks and demos (deterministic in ``seed``).

Not used in production paths: the real scenario sets come from riskparams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marginflow.shared.units import DAYS_PER_YEAR

from . import reference

__all__ = ["Market", "grid_scenarios", "make_market", "make_portfolio"]



def grid_scenarios(price_range: np.ndarray, vol_up: np.ndarray, vol_down: np.ndarray,
                   n_side: int = 4, tail_multiples: tuple[float, ...] = (2.0, 3.0),
                   tail_weights: tuple[float, ...] = (0.5, 0.33)):
    """Deribit-style grid plus extended moves, per underlying.

    Grid: price shocks ``linspace(-r, r, 2 n_side + 1)`` x vol shocks ``(-vol_down, 0, +vol_up)``
    (absolute vol points): ``3 (2 n_side + 1)`` rows (27 for ``n_side = 4``). Extended moves:
    price ``+-c r`` for each multiple ``c``, each with vol unchanged and vol up, weight per
    multiple: ``4 len(tail_multiples)`` rows (8 by default).

    Returns ``(price_shock[G+T, U], vol_shock[G+T, U], n_grid, tail_weights[T])``.
    """
    r = np.asarray(price_range, dtype=np.float64)
    steps = np.linspace(-1.0, 1.0, 2 * n_side + 1)
    vols = (-1.0, 0.0, 1.0)
    ps, vs = [], []
    for p in steps:
        for v in vols:
            ps.append(p * r)
            vs.append(np.where(v < 0, -vol_down, np.where(v > 0, vol_up, 0.0)))
    weights = []
    for c, wgt in zip(tail_multiples, tail_weights):
        for sign in (-1.0, 1.0):
            for v in (0.0, 1.0):
                ps.append(np.minimum(sign * c * r, 10.0) if sign > 0 else np.maximum(sign * c * r, -0.95))
                vs.append(v * vol_up)
                weights.append(wgt)
    return (np.array(ps), np.array(vs), 3 * (2 * n_side + 1), np.array(weights, dtype=np.float64))


@dataclass(frozen=True)
class Market:
    """Instruments, scenarios and margin parameters of a synthetic venue."""
    kind: np.ndarray
    underlying: np.ndarray
    forward: np.ndarray
    strike: np.ndarray
    expiry_years: np.ndarray
    implied_vol: np.ndarray
    multiplier: np.ndarray
    price_shock: np.ndarray
    vol_shock: np.ndarray
    n_grid: int
    tail_weights: np.ndarray
    horizon_years: float
    unit_notional: np.ndarray
    mark_value: np.ndarray
    half_spread: np.ndarray
    depth: np.ndarray
    bracket_floor: np.ndarray
    bracket_rate: np.ndarray

    def risk(self, impl=reference, n_threads: int = 2) -> np.ndarray:
        return impl.risk_arrays(self.kind, self.underlying, self.forward, self.strike, self.expiry_years,
                                self.implied_vol, self.multiplier, self.price_shock, self.vol_shock,
                                horizon_years=self.horizon_years, n_threads=n_threads)

    def model(self, impl=reference, risk: np.ndarray | None = None, es_level: float = 0.975,
              mm_factor: float = 0.6):
        return impl.MarginModel(self.risk(impl) if risk is None else risk, self.underlying, self.n_grid,
                                self.tail_weights, es_level, self.unit_notional, self.mark_value,
                                self.half_spread, self.depth, self.bracket_floor, self.bracket_rate, mm_factor)


def make_market(n_underlyings: int = 10, n_instruments: int = 200, n_hist: int = 1000, seed: int = 0,
                n_side: int = 4, horizon_days: float = 1.0) -> Market:
    """Per underlying one perpetual, a few futures and the rest options (calls and puts)."""
    rng = np.random.default_rng(seed)
    U, K = n_underlyings, n_instruments
    spot = np.exp(rng.uniform(np.log(1.0), np.log(60000.0), U))
    sigma = rng.uniform(0.4, 1.2, U)                      # annualised vol per underlying
    und = (np.arange(K) % U).astype(np.int32)
    slot = np.arange(K) // U                              # 0 perp, 1-2 futures, rest options
    kind = np.where(slot == 0, 0, np.where(slot <= 2, 1, np.where(slot % 2 == 1, 2, 3))).astype(np.int8)
    expiry = np.where(kind == 0, 0.0, rng.choice([7, 14, 30, 90, 180], K) / DAYS_PER_YEAR)
    forward = spot[und] * (1.0 + 0.05 * expiry)
    strike = np.where(kind >= reference.KIND_CALL, forward * np.exp(rng.normal(0.0, 0.25, K)), 0.0).round(2)
    vol = np.where(kind >= reference.KIND_CALL, sigma[und] * rng.uniform(0.8, 1.3, K), 0.0)
    mult = np.where(spot[und] > 1000, 0.01, 1.0)          # contracts of 0.01 BTC-like units
    h = horizon_days / DAYS_PER_YEAR
    move = np.clip(6.0 * sigma * np.sqrt(h), 0.08, 0.3)   # grid range: +-6 daily sigma, 8-30 %
    gps, gvs, n_grid, tw = grid_scenarios(move, vol_up=0.3 * sigma, vol_down=0.2 * sigma, n_side=n_side)
    # Filtered historical: joint student-t(4) returns with a common factor, scaled to sigma_now.
    common = rng.standard_t(4, (n_hist, 1))
    idio = rng.standard_t(4, (n_hist, U))
    z = (0.7 * common + 0.71 * idio) / np.sqrt(2.0)
    hps = np.clip(z * sigma * np.sqrt(h), -0.9, 5.0)
    hvs = -0.5 * hps + 0.02 * rng.standard_normal((n_hist, U))
    value = reference.black76_price(kind, forward, strike, expiry, vol)
    mark_value = value * mult
    notional = forward * mult
    half_spread = np.where(kind >= reference.KIND_CALL, 0.02, 0.0002)       # 2 % of premium, 2 bp of price
    depth = rng.uniform(50.0, 500.0, K)                   # contracts inside the spread
    floors = np.array([0.0, 50e3, 250e3, 1e6, 5e6, 20e6])
    rates = np.array([0.01, 0.02, 0.03, 0.05, 0.10, 0.20])
    return Market(kind, und, forward, strike, expiry, vol, mult,
                  np.vstack([gps, hps]), np.vstack([gvs, hvs]), n_grid, tw, h,
                  notional, mark_value, half_spread, depth,
                  np.tile(floors, (U, 1)), rates[None, :] * (0.5 + 0.1 * np.arange(U))[:, None])


def make_portfolio(n_accounts: int, n_positions: int, n_instruments: int, seed: int = 1,
                   isolated_share: float = 0.1, max_contracts: float = 50.0):
    """CSR positions: (indptr int64[N+1], instrument int32[nnz], size float64[nnz], isolated uint8[nnz]).

    Accounts get a Poisson-ish number of positions (mean ``n_positions / n_accounts``), some empty.
    """
    rng = np.random.default_rng(seed)
    owner = np.sort(rng.integers(0, n_accounts, n_positions))
    indptr = np.zeros(n_accounts + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_accounts), out=indptr[1:])
    instrument = rng.integers(0, n_instruments, n_positions).astype(np.int32)
    size = (rng.choice([-1.0, 1.0], n_positions) * np.round(rng.lognormal(0.0, 1.2, n_positions), 2)
            * max_contracts / 10.0)
    isolated = (rng.random(n_positions) < isolated_share).astype(np.uint8)
    return indptr, instrument, size, isolated


def make_valuation(market: Market, portfolio, margin: dict, n_assets: int = 3, seed: int = 2) -> dict:
    """Arguments of ``valuate`` for ``portfolio`` (as :func:`make_portfolio` returns it) margined by
    ``margin`` (a ``compute`` result): entries near the mark, collateral about 40 % of the notional
    in a stablecoin (unit value 1) and some crypto, every mark and price fresh."""
    rng = np.random.default_rng(seed)
    indptr, instrument, size, isolated = portfolio
    n, nnz, n_inst = indptr.shape[0] - 1, instrument.shape[0], market.kind.shape[0]
    mark = market.mark_value / market.multiplier      # USD per unit (Black-76 for options)
    contract = market.multiplier
    entry = mark[instrument] * (1.0 + rng.normal(0.0, 0.02, nnz))
    notional = np.zeros(n)
    np.add.at(notional, np.repeat(np.arange(n), np.diff(indptr)), np.abs(size) * market.mark_value[instrument])
    balances = np.zeros((n, n_assets))
    balances[:, 0] = np.round(0.4 * notional, 2)
    balances[::3, 1] = 0.5
    iso = isolated != 0
    iso_im = np.where(iso, margin["isolated_im"], 0.0)
    return dict(indptr=indptr, instrument=instrument, size=size, entry=entry, isolated=isolated,
                isolated_collateral=np.where(iso, 1.5 * iso_im, 0.0), isolated_im=iso_im, balances=balances,
                cross_im=margin["cross_im"], mm_factor=0.5, mark=mark, contract_size=contract,
                mark_time_ms=np.full(n_inst, 1_000, np.int64), fresh=np.ones(n_inst, np.uint8),
                unit_value=np.array([1.0, 60_000.0, 3_000.0][:n_assets] + [1.0] * max(0, n_assets - 3)),
                asset_fresh=np.ones(n_assets, np.uint8), asset_time_ms=np.full(n_assets, 1_000, np.int64))
