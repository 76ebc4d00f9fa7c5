"""A market simulator for crypto derivatives, deterministic for a seed.

Per underlying u, on a fixed event-time step Δt (years), the log return is

    r_u = σ_u · m_regime · √(h_u · Δt) · (L z)_u  −  ½ σ_u² m² h_u Δt  +  J · β_u

- ``L`` is the Cholesky factor of the regime's correlation matrix (calm: the configured one;
  stress: pulled toward 1 by ``stress_corr_pull``, as crypto correlations rise in sell-offs);
- ``h_u`` is a unit-mean GARCH(1,1)-type variance multiplier on the step scale,
  h ← (1 − α − β) + α·z²·h + β·h, which gives volatility clustering with persistence α + β;
- ``m_regime`` is 1 in the calm regime and ``stress_vol_multiplier`` in stress; the regime is a
  two-state Markov chain with per-day switching probabilities;
- ``J`` is a common jump: with probability λ·Δt per step (λ per day, higher in stress) a normal
  jump N(μ_J, σ_J) hits every underlying, scaled by its beta to the market ``β_u = σ_u / σ_BTC``.

Instruments are priced from the index: perpetual = index·(1 + b) with b a small mean-reverting
basis, future = index·exp(carry·T), options = Black-76 on the future with an implied-vol smile
whose ATM level follows the current realised volatility (× a variance risk premium):

    iv(K, T) = atm · (1 + skew·x + curvature·x²),  x = ln(K/F) / √T,   floored at 5 %.

A book of ``book_levels`` levels per side is quoted around each price with a half-spread ``h`` that
widens in stress (``stress_spread_multiplier``) and sizes that thin out (``stress_depth_multiplier``:
market makers pull size in a sell-off, so a close-out walks further into the book). Level ``i`` lies
``m_i·h`` from the price with size ``s·(1 + 0.3 i)``: ``m_i = 1 + i`` for the first five (the touch and
the levels behind it), then ``m_i = 5·2^(i−4)`` (10h, 20h, 40h, …: the resting size far from the mid
that a large close-out reaches, 640h at twelve levels), so the depth curve reaches a few % of the mid
and both its distances (×3 wider) and its sizes (×0.3) move with the regime. Not every instrument ticks
every step (options less often), like a real feed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import ndtr

from marginflow.marketdata.domain.ticks import RawTick
from marginflow.shared.universe import Kind, Universe
from marginflow.shared.units import DAYS_PER_YEAR, MS_PER_DAY, MS_PER_YEAR


@dataclasses.dataclass(frozen=True)
class SimConfig:
    seed: int = 7
    step_ms: int = 100
    correlation: tuple[tuple[str, str, float], ...] = (("BTC", "ETH", 0.80), ("BTC", "SOL", 0.70), ("ETH", "SOL", 0.75))
    default_correlation: float = 0.6
    garch_alpha: float = 0.02          # step-scale reaction of h to a squared shock
    garch_beta: float = 0.979          # step-scale persistence
    stress_vol_multiplier: float = 2.5
    stress_corr_pull: float = 0.5      # stress correlation = calm + pull · (1 − calm)
    stress_spread_multiplier: float = 3.0   # half-spread in stress / calm
    stress_depth_multiplier: float = 0.3    # size quoted at each level in stress / calm
    book_levels: int = 12                   # levels per side (>= 1; the first five 1h..5h from the price)
    p_calm_to_stress_per_day: float = 0.10
    p_stress_to_calm_per_day: float = 0.50
    jumps_per_day_calm: float = 0.5
    jumps_per_day_stress: float = 4.0
    jump_mean: float = -0.01
    jump_sd: float = 0.03
    future_carry_per_year: float = 0.05
    perp_basis_sd: float = 0.0005
    iv_premium: float = 1.1            # ATM implied / current realised volatility
    smile_skew: float = -0.15
    smile_curvature: float = 0.6
    tick_prob_index: float = 1.0
    tick_prob_perp: float = 1.0
    tick_prob_future: float = 0.5
    tick_prob_option: float = 0.15
    block_steps: int = 256

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"step_ms must be > 0, got {self.step_ms}")
        if not (0 <= self.garch_alpha and 0 <= self.garch_beta and self.garch_alpha + self.garch_beta < 1):
            raise ValueError("garch_alpha, garch_beta must be >= 0 with alpha + beta < 1")
        for name in ("p_calm_to_stress_per_day", "p_stress_to_calm_per_day"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.stress_vol_multiplier < 1:
            raise ValueError("stress_vol_multiplier must be >= 1")
        if not self.stress_spread_multiplier >= 1:
            raise ValueError(f"stress_spread_multiplier must be >= 1, got {self.stress_spread_multiplier!r}")
        if not 1 <= self.book_levels <= 32:
            raise ValueError(f"book_levels must be in 1..32, got {self.book_levels!r}")
        if not 0 < self.stress_depth_multiplier <= 1:
            raise ValueError(f"stress_depth_multiplier must be in (0, 1], got {self.stress_depth_multiplier!r}")


def _per_step(p_per_day: float, step_ms: int) -> float:
    return 1.0 - (1.0 - p_per_day) ** (step_ms / MS_PER_DAY)


def black76_vec(forward: np.ndarray, strike: np.ndarray, years: np.ndarray, vol: np.ndarray,
                is_call: np.ndarray) -> np.ndarray:
    """Vectorised Black-76 (zero rate); see marginflow.pricing for the formula."""
    sd = vol * np.sqrt(np.maximum(years, 0.0))
    live = sd > 0
    safe_sd = np.where(live, sd, 1.0)
    d1 = (np.log(forward / strike) + 0.5 * safe_sd**2) / safe_sd
    d2 = d1 - safe_sd
    call = forward * ndtr(d1) - strike * ndtr(d2)
    put = strike * ndtr(-d2) - forward * ndtr(-d1)
    value = np.where(is_call, call, put)
    intrinsic = np.where(is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
    return np.where(live, value, intrinsic)


class MarketSimulator:
    """Generates ticks block by block; ``state`` can be saved and restored across restarts."""

    def __init__(self, universe: Universe, config: SimConfig, start_ms: int,
                 start_prices: dict[str, float] | None = None) -> None:
        self.universe = universe
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.underlyings = list(universe.underlyings)
        n = len(self.underlyings)
        self.sigma = np.array([universe.underlyings[u].annual_vol for u in self.underlyings])
        prices = start_prices or {}
        self.index = np.array([prices.get(u, universe.underlyings[u].index_price_usd) for u in self.underlyings])
        self.h = np.ones(n)
        self.stress = False
        self.time_ms = start_ms
        self.perp_basis = np.zeros(n)
        calm = np.full((n, n), config.default_correlation)
        np.fill_diagonal(calm, 1.0)
        pos = {u: i for i, u in enumerate(self.underlyings)}
        for a, b, rho in config.correlation:
            if a in pos and b in pos:
                calm[pos[a], pos[b]] = calm[pos[b], pos[a]] = rho
        stress = calm + config.stress_corr_pull * (1.0 - calm)
        self.chol = {False: np.linalg.cholesky(calm), True: np.linalg.cholesky(stress)}
        btc = self.sigma[pos["BTC"]] if "BTC" in pos else self.sigma[0]
        self.jump_beta = self.sigma / btc
        insts = list(universe.instruments.values())
        self.symbols = [i.symbol for i in insts]
        self.und_idx = np.array([pos[i.underlying] for i in insts])
        self.kind = np.array([int(i.kind) for i in insts])
        self.strike = np.array([i.strike_usd for i in insts])
        self.expiry_ms = np.array([i.expiry_ms for i in insts], dtype=np.int64)
        self.tick_size = np.array([i.tick_size_usd for i in insts])
        self.spread_frac = np.array([universe.underlyings[i.underlying].spread_bps * 1e-4 for i in insts])
        self.depth = np.array([universe.underlyings[i.underlying].depth_contracts for i in insts])
        self.index_spread = np.array([universe.underlyings[u].spread_bps * 1e-4 for u in self.underlyings])
        prob = {int(Kind.PERPETUAL): config.tick_prob_perp, int(Kind.FUTURE): config.tick_prob_future,
                int(Kind.CALL): config.tick_prob_option, int(Kind.PUT): config.tick_prob_option}
        self.tick_prob = np.array([prob[k] for k in self.kind])
        self.is_option = (self.kind == int(Kind.CALL)) | (self.kind == int(Kind.PUT))
        self.is_call = self.kind == int(Kind.CALL)

    # ---- the index paths -------------------------------------------------------------------
    def _step_returns(self, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Log returns [steps, n], the realised-vol level per step [steps, n], stress flags [steps]."""
        cfg = self.config
        n = len(self.underlyings)
        dt = cfg.step_ms / MS_PER_YEAR
        z = self.rng.standard_normal((steps, n))
        u_regime = self.rng.random(steps)
        u_jump = self.rng.random(steps)
        jump_size = self.rng.normal(cfg.jump_mean, cfg.jump_sd, steps)
        p_up = _per_step(cfg.p_calm_to_stress_per_day, cfg.step_ms)
        p_down = _per_step(cfg.p_stress_to_calm_per_day, cfg.step_ms)
        lam_calm = cfg.jumps_per_day_calm * cfg.step_ms / MS_PER_DAY
        lam_stress = cfg.jumps_per_day_stress * cfg.step_ms / MS_PER_DAY
        omega = 1.0 - cfg.garch_alpha - cfg.garch_beta
        returns = np.empty((steps, n))
        vol_level = np.empty((steps, n))
        stress_flags = np.empty(steps, dtype=bool)
        h = self.h
        stress = self.stress
        for s in range(steps):
            if stress:
                stress = not (u_regime[s] < p_down)
            else:
                stress = u_regime[s] < p_up
            mult = cfg.stress_vol_multiplier if stress else 1.0
            shock = self.chol[stress] @ z[s]
            sd = self.sigma * mult * np.sqrt(h * dt)
            r = sd * shock - 0.5 * sd * sd
            if u_jump[s] < (lam_stress if stress else lam_calm):
                r = r + jump_size[s] * self.jump_beta
            returns[s] = r
            vol_level[s] = self.sigma * mult * np.sqrt(h)
            stress_flags[s] = stress
            h = np.clip(omega + cfg.garch_alpha * shock * shock * h + cfg.garch_beta * h, 0.05, 20.0)
        self.h = h
        self.stress = bool(stress)
        return returns, vol_level, stress_flags

    def index_paths(self, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance ``steps`` steps: index prices [steps, n], vol level [steps, n], stress [steps]."""
        returns, vol_level, stress = self._step_returns(steps)
        prices = self.index * np.exp(np.cumsum(returns, axis=0))
        self.index = prices[-1].copy()
        return prices, vol_level, stress

    # ---- ticks ------------------------------------------------------------------------------
    def next_block(self, steps: int | None = None) -> list[RawTick]:
        """The ticks of the next block of steps, in event-time order."""
        cfg = self.config
        steps = steps or cfg.block_steps
        prices, vol_level, stress = self.index_paths(steps)
        times = self.time_ms + cfg.step_ms * np.arange(1, steps + 1, dtype=np.int64)
        self.time_ms = int(times[-1])
        n_inst = len(self.symbols)
        # Perpetual basis: AR(1) mean-reverting noise.
        basis = np.empty((steps, len(self.underlyings)))
        b = self.perp_basis
        noise = self.rng.normal(0.0, cfg.perp_basis_sd, basis.shape)
        for s in range(steps):
            b = 0.98 * b + 0.2 * noise[s]
            basis[s] = b
        self.perp_basis = b
        idx = prices[:, self.und_idx]                                     # [steps, K]
        years = np.maximum((self.expiry_ms[None, :] - times[:, None]) / MS_PER_YEAR, 0.0)
        fwd = idx * np.exp(cfg.future_carry_per_year * years)
        price = np.where(self.kind == int(Kind.PERPETUAL), idx * (1.0 + basis[:, self.und_idx]), fwd)
        iv = np.zeros((steps, n_inst))
        if self.is_option.any():
            atm = cfg.iv_premium * vol_level[:, self.und_idx]
            safe_years = np.maximum(years, 1.0 / DAYS_PER_YEAR)
            x = np.log(self.strike[None, :].clip(1e-9) / fwd) / np.sqrt(safe_years)
            smile = np.maximum(atm * (1.0 + cfg.smile_skew * x + cfg.smile_curvature * x * x), 0.05)
            opt = black76_vec(fwd, np.maximum(self.strike[None, :], 1e-9), years, smile, self.is_call[None, :])
            price = np.where(self.is_option[None, :], opt, price)
            iv = np.where(self.is_option[None, :], smile, 0.0)
        tick = self.tick_size[None, :]
        price = np.maximum(np.round(price / tick) * tick, tick)
        widen = np.where(stress, cfg.stress_spread_multiplier, 1.0)[:, None]
        half = np.maximum(price * self.spread_frac[None, :] * widen, tick)
        half = np.where(self.is_option[None, :], np.maximum(half, 0.01 * price), half)
        bid = np.maximum(price - half, tick)
        ask = price + half
        thin = np.where(stress, cfg.stress_depth_multiplier, 1.0)[:, None]
        size = self.depth[None, :] / 5.0 * (0.5 + self.rng.random((steps, n_inst))) * thin
        emit = self.rng.random((steps, n_inst)) < self.tick_prob[None, :]
        idx_emit = self.rng.random((steps, len(self.underlyings))) < cfg.tick_prob_index
        out: list[RawTick] = []
        step_of, inst_of = np.nonzero(emit)          # row-major: in step order, instruments in order
        # The books of the ticks emitted, built as arrays: level i at m_i·h from the price, size s·(1 + 0.3 i).
        n_levels = cfg.book_levels
        level_mult = np.array([float(1 + i) if i < 5 else 5.0 * 2.0 ** (i - 4) for i in range(n_levels)])
        level_size = 1.0 + 0.3 * np.arange(n_levels)
        e_px, e_half, e_sz = price[step_of, inst_of], (ask - price)[step_of, inst_of], size[step_of, inst_of]
        off = e_half[:, None] * level_mult[None, :]
        bid_px = np.maximum(e_px[:, None] - off, self.tick_size[inst_of][:, None]).tolist()
        ask_px = (e_px[:, None] + off).tolist()
        lvl_sz = (e_sz[:, None] * level_size[None, :]).tolist()
        syms = self.symbols
        unds = self.underlyings
        e_step, e_inst = step_of.tolist(), inst_of.tolist()
        p_l, b_l, a_l, sz_l, iv_l = price.tolist(), bid.tolist(), ask.tolist(), size.tolist(), iv.tolist()
        ix_l, t_l, ie_l = prices.tolist(), times.tolist(), idx_emit.tolist()
        ix_half = (prices * self.index_spread[None, :]).tolist()
        j, n_emit = 0, len(e_step)
        for s in range(steps):
            t = t_l[s]
            for u, name in enumerate(unds):
                if ie_l[s][u]:
                    px = ix_l[s][u]
                    out.append(RawTick(t, name, px, px - ix_half[s][u], px + ix_half[s][u], 0.0, 0.0, 0.0,
                                       source="simulator"))
            while j < n_emit and e_step[j] == s:
                k, sizes = e_inst[j], lvl_sz[j]
                sz = sz_l[s][k]
                out.append(RawTick(t, syms[k], p_l[s][k], b_l[s][k], a_l[s][k], sz, sz, iv_l[s][k],
                                   tuple(zip(bid_px[j], sizes)), tuple(zip(ask_px[j], sizes)), "simulator"))
                j += 1
        return out
