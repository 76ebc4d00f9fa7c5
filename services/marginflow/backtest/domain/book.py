"""The reference book along a history: instruments, positions and values at every observation.

At observation ``t`` the book holds ``h + 1`` vintages of every portfolio: the one opened at ``t``
(lag 0, margined for the coverage test) and those opened at ``t − 1 … t − h`` (still held, margined
for the liquidation paths). Instruments of the margin core at ``t``: the ``U`` perpetuals, then per
lag the ``D`` dated instruments (futures, options) of that vintage. One account per (lag, portfolio).
Everything here is market, not model: the same for every rule and every sweep point.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from marginflow.backtest.domain.history import History
from marginflow.backtest.domain.portfolios import PortfolioSpec, SmileProxy, black76_delta
from marginflow.marketdata.domain.simulator import black76_vec
from marginflow.riskparams.domain.ewma import ewma_variance_path
from marginflow.shared.universe import MS_PER_DAY, MS_PER_YEAR

CORE_KIND = {"perpetual": 0, "future": 1, "call": 2, "put": 3}


@dataclasses.dataclass(frozen=True)
class MarketStep:
    """Margin-core instrument arrays at one observation (contract size 1 throughout)."""

    kind: np.ndarray        # int8[K]
    underlying: np.ndarray  # int32[K]
    forward: np.ndarray     # [K] USD
    strike: np.ndarray      # [K]
    years: np.ndarray       # [K] to expiry
    iv: np.ndarray          # [K]
    value: np.ndarray       # [K] USD per contract (the mark)
    half_spread: np.ndarray  # [K] fraction
    depth: np.ndarray       # [K] contracts


@dataclasses.dataclass(frozen=True)
class Book:
    history: History
    portfolios: tuple[PortfolioSpec, ...]
    horizon_steps: int
    n_dated: int
    indptr: np.ndarray          # int64[A+1], accounts ordered (lag, portfolio)
    pos_portfolio: np.ndarray   # [npos] portfolio of each template position
    pos_is_perp: np.ndarray     # bool[npos]
    pos_ref: np.ndarray         # [npos] underlying (perp) or dated slot
    pos_und: np.ndarray         # [npos] underlying index
    size: np.ndarray            # [T, npos] contracts of the vintage opened at t
    open_value: np.ndarray      # [T, D] value per contract of each dated slot at its opening
    acc_lag: np.ndarray         # [A]
    acc_portfolio: np.ndarray   # [A]
    flat_pos: np.ndarray        # [nnz] template position of each CSR entry
    flat_lag: np.ndarray        # [nnz]
    flat_instrument: np.ndarray  # int32[nnz]
    steps: list[MarketStep]

    @property
    def n_portfolios(self) -> int:
        return len(self.portfolios)

    def sizes_at(self, t: int) -> np.ndarray:
        """CSR sizes at ``t`` (vintages before the history start hold nothing)."""
        v = t - self.flat_lag
        ok = v >= 0
        return np.where(ok, self.size[np.maximum(v, 0), self.flat_pos], 0.0)

    def pnl_gross_at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """P&L since opening and gross underlying notional (USD) of every account at ``t``."""
        h = self.history
        v = np.maximum(t - self.flat_lag, 0)
        q = self.sizes_at(t)
        value = self.steps[t].value[self.flat_instrument]
        entry = np.where(self.pos_is_perp[self.flat_pos], h.close[v, self.pos_und[self.flat_pos]],
                         self.open_value[v, self.pos_ref[self.flat_pos]])
        owner = np.repeat(np.arange(self.indptr.size - 1), np.diff(self.indptr))
        n = self.indptr.size - 1
        pnl = np.bincount(owner, weights=q * (value - entry), minlength=n)
        gross = np.bincount(owner, weights=np.abs(q) * h.close[t, self.pos_und[self.flat_pos]], minlength=n)
        return pnl, gross


def realised_vol(history: History, lam: float) -> np.ndarray:
    """Annualised EWMA volatility after each observation: the ATM level of the option-vol proxy."""
    var = np.column_stack([ewma_variance_path(history.returns[:, j], lam, history.prior_annual_vol[j] ** 2
                                              / history.samples_per_year) for j in range(len(history.underlyings))])
    return np.sqrt(var * history.samples_per_year)


def build_book(history: History, portfolios: list[PortfolioSpec], horizon_steps: int, smile: SmileProxy,
               carry_per_year: float, option_half_spread: float, iv_lambda: float = 0.94) -> Book:
    T, U = history.close.shape
    h = horizon_steps
    uidx = {u: j for j, u in enumerate(history.underlyings)}
    atm = realised_vol(history, iv_lambda)
    # dated instrument templates shared by every portfolio: (und, kind, tenor, moneyness)
    dated: list[tuple[int, str, float, float]] = []
    slots: dict[tuple, int] = {}
    pos_portfolio, pos_is_perp, pos_ref, pos_und, pos_leg = [], [], [], [], []
    for p, spec in enumerate(portfolios):
        for leg in spec.legs:
            j = uidx[leg.underlying]
            if leg.kind in ("perpetual", "delta_hedge"):
                ref, is_perp = j, True
            else:
                key = (j, leg.kind, leg.tenor_days, leg.moneyness if leg.is_option else 1.0)
                if key not in slots:
                    slots[key] = len(dated)
                    dated.append(key)
                ref, is_perp = slots[key], False
            pos_portfolio.append(p)
            pos_is_perp.append(is_perp)
            pos_ref.append(ref)
            pos_und.append(j)
            pos_leg.append(leg)
    D = len(dated)
    d_und = np.array([d[0] for d in dated], dtype=np.int32)
    d_kind = np.array([CORE_KIND[d[1]] for d in dated], dtype=np.int8)
    d_tenor_ms = np.array([d[2] * MS_PER_DAY for d in dated])
    d_money = np.array([d[3] for d in dated])
    d_is_opt = d_kind >= 2
    d_is_call = d_kind == 2
    # per vintage: strikes, expiries and opening values of the dated slots
    strike = np.where(d_is_opt[None, :], d_money[None, :] * history.close[:, d_und], 0.0)   # [T, D]
    expiry_ms = history.time_ms[:, None].astype(np.float64) + d_tenor_ms[None, :]

    cols = np.arange(D)
    times = history.time_ms.astype(np.float64)

    def dated_value(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Forward, years, iv and value at observations ``t`` [n] of the slots opened at ``v`` [n] ([n, D] each)."""
        spot = history.close[t][:, d_und]
        years = np.maximum((expiry_ms[v][:, cols] - times[t][:, None]) / MS_PER_YEAR, 0.0)
        fwd = np.where(d_is_opt, spot, spot * np.exp(carry_per_year * years))
        k = strike[v][:, cols]
        level = atm[t][:, d_und]
        iv = np.where(d_is_opt, smile.vol(level, np.where(d_is_opt, k, spot), spot, years), level)
        val = np.where(d_is_opt, black76_vec(fwd, np.where(d_is_opt, k, 1.0), years, iv, d_is_call), fwd)
        return fwd, years, iv, val

    every = np.arange(T)
    _f, open_years, open_iv, open_value = dated_value(every, every)
    # sizes per vintage: notional / index at opening; delta hedges cancel the options' delta
    npos = len(pos_leg)
    size = np.zeros((T, npos))
    for i, leg in enumerate(pos_leg):
        if leg.kind != "delta_hedge":
            size[:, i] = leg.notional_usd / history.close[:, pos_und[i]]
    for i, leg in enumerate(pos_leg):
        if leg.kind != "delta_hedge":
            continue
        p = pos_portfolio[i]
        hedge = np.zeros(T)
        for k in range(npos):
            if pos_portfolio[k] == p and pos_leg[k].is_option and pos_und[k] == pos_und[i]:
                d = pos_ref[k]
                delta = black76_delta(history.close[:, d_und[d]], strike[:, d], open_years[:, d], open_iv[:, d],
                                      np.full(T, bool(d_is_call[d])))
                hedge -= size[:, k] * delta
        size[:, i] = hedge
    # accounts (lag, portfolio) in CSR
    pos_portfolio_a = np.array(pos_portfolio)
    counts = np.bincount(pos_portfolio_a, minlength=len(portfolios))
    flat_pos, flat_lag, flat_inst, acc_lag, acc_port = [], [], [], [], []
    for lag in range(h + 1):
        for p in range(len(portfolios)):
            acc_lag.append(lag)
            acc_port.append(p)
            for k in np.nonzero(pos_portfolio_a == p)[0]:
                flat_pos.append(k)
                flat_lag.append(lag)
                flat_inst.append(pos_ref[k] if pos_is_perp[k] else U + lag * D + pos_ref[k])
    per_acc = np.tile(counts, h + 1)
    indptr = np.concatenate(([0], np.cumsum(per_acc))).astype(np.int64)
    # instrument arrays per observation
    kind = np.concatenate([np.zeros(U, np.int8)] + [d_kind] * (h + 1))
    und = np.concatenate([np.arange(U, dtype=np.int32)] + [d_und] * (h + 1)).astype(np.int32)
    half = np.concatenate([history.half_spread_frac] +
                          [np.where(d_is_opt, option_half_spread, history.half_spread_frac[d_und])] * (h + 1))
    depth_usd = np.concatenate([history.depth_usd] + [history.depth_usd[d_und]] * (h + 1))
    per_lag = []
    for lag in range(h + 1):
        v = np.maximum(every - lag, 0)
        f, y, iv, val = dated_value(every, v)
        per_lag.append((f, y, iv, val, np.where(d_is_opt, strike[v][:, cols], 0.0)))
    zeros = np.zeros(U)
    steps = []
    for t in range(T):
        steps.append(MarketStep(
            kind, und, np.concatenate([history.close[t]] + [x[0][t] for x in per_lag]),
            np.concatenate([zeros] + [x[4][t] for x in per_lag]), np.concatenate([zeros] + [x[1][t] for x in per_lag]),
            np.concatenate([atm[t]] + [x[2][t] for x in per_lag]),
            np.concatenate([history.close[t]] + [x[3][t] for x in per_lag]), half, depth_usd / history.close[t, und]))
    return Book(history, tuple(portfolios), h, D, indptr, pos_portfolio_a, np.array(pos_is_perp), np.array(pos_ref),
                np.array(pos_und), size, open_value, np.array(acc_lag), np.array(acc_port), np.array(flat_pos),
                np.array(flat_lag), np.array(flat_inst, dtype=np.int32), steps)
