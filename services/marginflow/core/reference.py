"""NumPy reference twin of the C margin core (`marginflow.core._ccore`).

Same functions, same signatures, same semantics and the same error messages as the C
extension; the tests run both and compare. Written as ordinary vectorised numpy/scipy
(sparse products, ``np.partition``), it is also the baseline of ``bench/bench_core.py``.

Units
-----
Prices and values are USD per unit of the instrument's quote; ``multiplier`` converts one
contract to units of underlying, so a risk array entry is USD P&L per contract. Times are
in years (ACT/365 is the caller's business). Shocks are relative returns (``0.1`` = +10 %).

Scenario layout
---------------
One scenario matrix with ``S = G + T + H`` rows serves all three uses:

* rows ``[0, G)``: the price x vol grid. Column ``u`` holds underlying ``u``'s own grid, so
  row ``g`` is "grid point g of every underlying". Losses are grouped per underlying.
* rows ``[G, G + T)``: extended (tail) moves, weighted by ``tail_weights``, grouped the same way.
* rows ``[G + T, S)``: ``H`` filtered historical scenarios, joint across underlyings.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import numpy as np
import scipy.sparse
import scipy.special

__all__ = ["black76_price", "risk_arrays", "MarginModel", "valuate", "valuate_out", "depth_distance", "KIND_PERP", "KIND_FUTURE", "KIND_CALL",
           "KIND_PUT"]

KIND_PERP = 0
KIND_FUTURE = 1
KIND_CALL = 2
KIND_PUT = 3

# Accounts per dense block of the historical loss matrix: 4096 x 1000 float64 = 32 MiB.
_CHUNK_ACCOUNTS = 4096


# --------------------------------------------------------------------------- validation
# Every message here is repeated verbatim in _ccore.c; tests compare them.


def _array(name: str, obj: Any, dtype: Any, ndim: int) -> np.ndarray:
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    if obj.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {obj.dtype}")
    if obj.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {obj.ndim}-D")
    # Any memory layout is accepted: strided or Fortran-ordered input is copied to C order.
    return np.ascontiguousarray(obj)


def _flags(name: str, obj: Any) -> np.ndarray:
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    if obj.dtype != np.uint8 and obj.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype uint8 or bool, got {obj.dtype}")
    if obj.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {obj.ndim}-D")
    return np.ascontiguousarray(obj).view(np.uint8) != 0


def _shape(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")


def _real(name: str, x: Any) -> float:
    if isinstance(x, (str, bytes)) or not hasattr(type(x), "__float__"):
        raise TypeError(f"{name} must be a real number")
    return float(x)


def _int(name: str, x: Any) -> int:
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer") from None


def _first(bad: np.ndarray) -> tuple[int, ...] | None:
    """Row-major index of the first True in ``bad``, or None."""
    flat = np.flatnonzero(bad)
    if flat.size == 0:
        return None
    return tuple(int(i) for i in np.unravel_index(flat[0], bad.shape))


def _check(name: str, bad: np.ndarray, what: str) -> None:
    idx = _first(bad)
    if idx is not None:
        raise ValueError(f"{name}[{', '.join(map(str, idx))}] must be {what}")


def _scale(scale: Any, n: int) -> np.ndarray | None:
    """The optional per-position scale of the scenario losses: None, or float64[n] finite and > 0."""
    if scale is None:
        return None
    scale = _array("scale", scale, np.float64, 1)
    _shape("scale", scale, (n,))
    _check("scale", ~(np.isfinite(scale) & (scale > 0)), "finite and > 0")
    return scale


def _check_kind(kind: np.ndarray) -> None:
    idx = _first((kind < 0) | (kind > 3))
    if idx is not None:
        raise ValueError(f"kind[{idx[0]}] = {kind[idx]} is not 0 (perp), 1 (future), 2 (call) or 3 (put)")


def _instrument_arrays(kind, forward, strike, expiry_years, implied_vol):
    kind = _array("kind", kind, np.int8, 1)
    n = kind.shape[0]
    out = []
    for name, a in (("forward", forward), ("strike", strike), ("expiry_years", expiry_years),
                    ("implied_vol", implied_vol)):
        a = _array(name, a, np.float64, 1)
        _shape(name, a, (n,))
        out.append(a)
    forward, strike, expiry_years, implied_vol = out
    _check_kind(kind)
    option = kind >= KIND_CALL
    with np.errstate(invalid="ignore"):
        _check("forward", ~(np.isfinite(forward) & (forward > 0)), "finite and > 0")
        _check("strike", ~(np.isfinite(strike) & ((strike > 0) | ~option)), "finite (and > 0 for an option)")
        _check("expiry_years", ~(np.isfinite(expiry_years) & (expiry_years >= 0)), "finite and >= 0")
        _check("implied_vol", ~(np.isfinite(implied_vol) & (implied_vol >= 0)), "finite and >= 0")
    return kind, forward, strike, expiry_years, implied_vol


# --------------------------------------------------------------------------- pricing


def _black76(is_call: np.ndarray, f: np.ndarray, k: np.ndarray, t: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """Undiscounted Black-76 value; intrinsic value where ``vol * sqrt(t) == 0``."""
    sd = vol * np.sqrt(t)
    live = sd > 0
    sd_safe = np.where(live, sd, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(f / k) + 0.5 * sd_safe * sd_safe) / sd_safe
    d2 = d1 - sd_safe
    call = f * scipy.special.ndtr(d1) - k * scipy.special.ndtr(d2)
    put = k * scipy.special.ndtr(-d2) - f * scipy.special.ndtr(-d1)
    value = np.where(is_call, call, put)
    intrinsic = np.where(is_call, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
    return np.where(live, value, intrinsic)


def black76_price(kind, forward, strike, expiry_years, implied_vol) -> np.ndarray:
    r"""Value of one unit (before the multiplier) of each instrument, USD.

    Options are priced with Black-76 on the forward at a zero rate (undiscounted; crypto
    options settle in the underlying's quote with no funding leg in this model):

    .. math::

        C = F\,N(d_1) - K\,N(d_2), \qquad P = K\,N(-d_2) - F\,N(-d_1),

        d_{1,2} = \frac{\ln(F/K) \pm \tfrac12 \sigma^2 T}{\sigma\sqrt{T}}

    and at ``sigma * sqrt(T) == 0`` the intrinsic value ``max(F-K, 0)`` / ``max(K-F, 0)``.
    Perpetuals and futures (kind 0 and 1) are worth their forward ``F``.

    Parameters
    ----------
    kind : int8[K]
        0 perpetual, 1 dated future, 2 call, 3 put.
    forward, strike : float64[K]
        Forward (or mark) price and strike, USD; ``forward > 0``, ``strike > 0`` for options.
    expiry_years : float64[K]
        Time to expiry in years, ``>= 0``.
    implied_vol : float64[K]
        Annualised implied volatility, ``>= 0`` (0.6 = 60 %).

    Returns
    -------
    float64[K]
    """
    kind, forward, strike, expiry_years, implied_vol = _instrument_arrays(
        kind, forward, strike, expiry_years, implied_vol)
    option = kind >= KIND_CALL
    value = forward.copy()
    if option.any():
        value[option] = _black76(kind[option] == KIND_CALL, forward[option], strike[option],
                                 expiry_years[option], implied_vol[option])
    return value


def risk_arrays(kind, underlying, forward, strike, expiry_years, implied_vol, multiplier,
                price_shock, vol_shock, *, horizon_years=0.0, vol_shock_relative=False,
                n_threads=2) -> np.ndarray:
    r"""P&L per contract of each instrument under each scenario: ``R[k, s]``, USD.

    Linear instruments (perpetual, future)::

        R[k, s] = m_k * F_k * p[s, u_k]

    Options are fully repriced (Black-76, zero rate) after the horizon::

        R[k, s] = m_k * (V(F_k (1 + p[s, u_k]), K_k, T'_k, sigma'_ks) - V(F_k, K_k, T_k, sigma_k))
        T'_k      = max(T_k - horizon_years, 0)           (time decay; T' = 0 -> intrinsic)
        sigma'_ks = max(sigma_k + v[s, u_k], 0)           (absolute vol points, default)
        sigma'_ks = max(sigma_k * (1 + v[s, u_k]), 0)     (vol_shock_relative=True)

    Parameters
    ----------
    kind : int8[K]
        0 perpetual, 1 dated future, 2 call, 3 put.
    underlying : int32[K]
        Underlying index of each instrument, in ``[0, U)`` where ``U = price_shock.shape[1]``.
    forward, strike, expiry_years, implied_vol : float64[K]
        As in :func:`black76_price`.
    multiplier : float64[K]
        Units of underlying per contract, ``> 0``.
    price_shock : float64[S, U]
        Relative price move of each underlying in each scenario, finite and ``> -1``.
    vol_shock : float64[S, U]
        Implied-vol move (absolute vol points, or relative if ``vol_shock_relative``), finite.
    horizon_years : float
        Margin period of risk, years, ``>= 0``.
    vol_shock_relative : bool
        Interpret ``vol_shock`` as a relative change of the implied vol.
    n_threads : int
        Worker threads (the C core; accepted and ignored here).

    Returns
    -------
    float64[K, S]
        Instrument-major, so an account's loss over all scenarios is one axpy per position.
    """
    kind, forward, strike, expiry_years, implied_vol = _instrument_arrays(
        kind, forward, strike, expiry_years, implied_vol)
    n = kind.shape[0]
    underlying = _array("underlying", underlying, np.int32, 1)
    _shape("underlying", underlying, (n,))
    multiplier = _array("multiplier", multiplier, np.float64, 1)
    _shape("multiplier", multiplier, (n,))
    price_shock = _array("price_shock", price_shock, np.float64, 2)
    vol_shock = _array("vol_shock", vol_shock, np.float64, 2)
    _shape("vol_shock", vol_shock, price_shock.shape)
    horizon = _real("horizon_years", horizon_years)
    relative = bool(vol_shock_relative)
    n_threads = _int("n_threads", n_threads)
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    n_scen, n_und = price_shock.shape
    idx = _first((underlying < 0) | (underlying >= n_und))
    if idx is not None:
        raise ValueError(f"underlying[{idx[0]}] = {underlying[idx]} is out of range [0, {n_und})")
    with np.errstate(invalid="ignore"):
        _check("multiplier", ~(np.isfinite(multiplier) & (multiplier > 0)), "finite and > 0")
        _check("price_shock", ~(np.isfinite(price_shock) & (price_shock > -1.0)), "finite and > -1")
        _check("vol_shock", ~np.isfinite(vol_shock), "finite")
    if not (math.isfinite(horizon) and horizon >= 0):
        raise ValueError("horizon_years must be finite and >= 0")

    p = price_shock.T[underlying]            # [K, S]
    out = (multiplier * forward)[:, None] * p
    opt = np.flatnonzero(kind >= KIND_CALL)
    if opt.size:
        f = forward[opt, None]
        k = strike[opt, None]
        is_call = (kind[opt] == KIND_CALL)[:, None]
        v = vol_shock.T[underlying[opt]]
        sig = implied_vol[opt, None]
        sig_s = np.maximum(sig * (1.0 + v) if relative else sig + v, 0.0)
        t_s = np.maximum(expiry_years[opt] - horizon, 0.0)[:, None]
        v0 = _black76(is_call, f, k, expiry_years[opt, None], sig)
        v1 = _black76(is_call, f * (1.0 + p[opt]), k, t_s, sig_s)
        out[opt] = multiplier[opt, None] * (v1 - v0)
    return out


# --------------------------------------------------------------------------- margin


def _sum_by(group: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """float64[n]: sum of ``weights`` per ``group`` (bincount is int64 when it sees no data)."""
    return np.bincount(group, weights=weights, minlength=n).astype(np.float64, copy=False)


def _quiet(method):
    """Overflow is reported as one ValueError (as the C core does), not as numpy warnings."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return method(*args, **kwargs)
    return wrapper


def depth_distance(instrument, size, points_share, points_bps, last_contracts, last_bps, floor_bps,
                   uncovered_penalty) -> np.ndarray:
    r"""Distance from the mid (bps) at which each position's size is covered by the book's depth curve.

    Row ``r = 2k + (q < 0)`` of the tables is instrument k's bid side (longs sell into it) or ask side
    (shorts buy it): ``W`` points (a power of two), the sizes normalised by the row's last cumulative
    size ``C = last_contracts[r]`` (``points_share``, non-decreasing in [0, 1], the mid's 0 first) and
    their distances (``points_bps``). With ``s = |q| / C`` (inf for an empty side, C = 0) and
    ``u = min(s, 1)``:

    * ``j`` = the number of the row's points below ``u`` (clipped to [1, W − 1]): ``x_{j−1} < u <= x_j``,
      so a size equal to a point's is covered at its distance;
    * ``D = d_{j−1} + (d_j − d_{j−1}) (u − x_{j−1}) / (x_j − x_{j−1})`` (``d_j`` when the span is 0);
    * beyond the curve (``s > 1``): ``D = last_bps[r] (1 + uncovered_penalty (1 − 1/s))``;
    * the result ``max(floor_bps[k], D)`` (the half-spread for a size the touch absorbs).

    Parameters
    ----------
    instrument : int32[n]
        Instrument of each position, in ``[0, K)``, ``K = len(floor_bps)``.
    size : float64[n]
        Signed contracts, finite.
    points_share, points_bps : float64[2K, W]
        The rows' normalised sizes and distances (bps), finite and >= 0; ``W`` a power of two >= 2.
    last_contracts, last_bps : float64[2K]
        Each row's last cumulative size (contracts) and distance (bps), finite and >= 0.
    floor_bps : float64[K]
        The smallest distance charged per instrument (bps), finite and >= 0.
    uncovered_penalty : float
        Finite and >= 0.
    """
    instrument = _array("instrument", instrument, np.int32, 1)
    size = _array("size", size, np.float64, 1)
    points_share = _array("points_share", points_share, np.float64, 2)
    points_bps = _array("points_bps", points_bps, np.float64, 2)
    last_contracts = _array("last_contracts", last_contracts, np.float64, 1)
    last_bps = _array("last_bps", last_bps, np.float64, 1)
    floor_bps = _array("floor_bps", floor_bps, np.float64, 1)
    pen = _real("uncovered_penalty", uncovered_penalty)
    n, n_inst, w = instrument.shape[0], floor_bps.shape[0], points_share.shape[1]
    _shape("size", size, (n,))
    _shape("points_share", points_share, (2 * n_inst, w))
    _shape("points_bps", points_bps, (2 * n_inst, w))
    _shape("last_contracts", last_contracts, (2 * n_inst,))
    _shape("last_bps", last_bps, (2 * n_inst,))
    if w < 2 or w & (w - 1):
        raise ValueError(f"points_share must have a power of two >= 2 of columns, got {w}")
    if not (math.isfinite(pen) and pen >= 0.0):
        raise ValueError("uncovered_penalty must be finite and >= 0")
    with np.errstate(invalid="ignore"):
        for name, a in (("floor_bps", floor_bps), ("last_contracts", last_contracts), ("last_bps", last_bps),
                        ("points_share", points_share), ("points_bps", points_bps)):
            _check(name, ~(np.isfinite(a) & (a >= 0)), "finite and >= 0")
    idx = _first((instrument < 0) | (instrument >= n_inst))
    if idx is not None:
        raise ValueError(f"instrument[{idx[0]}] = {instrument[idx]} is out of range [0, {n_inst})")
    _check("size", ~np.isfinite(size), "finite")

    a = np.abs(size)
    row = instrument.astype(np.int64) * 2
    row += size < 0
    last = last_contracts[row]
    share = np.divide(a, last, out=np.full(a.shape, np.inf), where=last > 0)
    u = np.minimum(share, 1.0)
    xs, ds = points_share.ravel(), points_bps.ravel()
    base = row * w
    j = np.zeros(a.shape, dtype=np.int64)
    step = w // 2
    while step:
        j += step * (xs[base + (j + step - 1)] < u)
        step //= 2
    np.clip(j, 1, w - 1, out=j)
    hi = base + j
    lo = hi - 1
    x_lo = xs[lo]
    span = xs[hi] - x_lo
    t = np.divide(u - x_lo, span, out=np.ones(a.shape), where=span > 0)
    d_lo = ds[lo]
    distance = ds[hi] - d_lo
    distance *= t
    distance += d_lo
    beyond = share > 1.0
    if beyond.any():
        distance[beyond] = last_bps[row[beyond]] * (1.0 + pen * (1.0 - 1.0 / share[beyond]))
    np.maximum(distance, floor_bps[instrument], out=distance)
    return distance


def _n_worst(level: float, n_hist: int) -> int:
    # The 1e-9 guards against (1 - 0.975) * 1000 = 25.000000000000004 -> 26.
    return max(1, math.ceil((1.0 - level) * n_hist - 1e-9))


class MarginModel:
    r"""Margin model for one risk-parameter version: risk arrays plus margin parameters.

    Built once per version (validation and per-instrument precomputation happen here), then
    :meth:`compute` margins every account, :meth:`what_if` / :meth:`explain` one account.

    Formulas (loss = -P&L, USD; ``q`` signed contracts; ``R`` the risk arrays)
    --------------------------------------------------------------------------
    * Loss of a set of positions in scenario s: ``L[s] = -sum_j q_j R[k_j, s]``.
    * Grid margin: per underlying ``u`` with positions, using only those positions,
      ``M_u = max(0, max_{g<G} L_u[g], max_{t<T} w_t L_u[G+t])``; grid = ``sum_u M_u``.
    * Historical (FHS) losses ``L[G+T+h]``, ``h < H``; ``m = max(1, ceil((1-alpha) H))``;
      sorted descending ``L_(1) >= ... >= L_(H)``: ``VaR = L_(m)``,
      ``ES = (1/m) sum_{i<=m} L_(i)``; worst = the ``h`` of ``L_(1)`` (lowest h on ties).
    * Tiered minimum per position, notional ``n = |q| unit_notional_k``, bracket
      ``b = max{b: floor[u,b] <= n}``: ``min = n rate[u,b] - cum[u,b]`` with
      ``cum[u,0] = 0``, ``cum[u,b] = cum[u,b-1] + floor[u,b] (rate[u,b] - rate[u,b-1])``
      (continuous in n, exchange "maintenance amount" style).
    * Liquidity add-on per position, ``a = |q|``, ``D`` = book depth (contracts):
      ``liq = mark_value_k half_spread_k (a + max(0, a - D)^2 / D)``: half the spread on every
      contract, plus an impact that grows quadratically with the size beyond the depth.
    * Cross IM = ``max(grid, ES, sum min) + sum liq`` over the cross positions (0 if none).
      Each isolated position alone: ``max(|q| grid1, |q| ES1, min) + liq``, where
      ``grid1``/``ES1`` are those of one contract in the position's direction (both are
      positively homogeneous). IM = cross IM + sum isolated IM; MM = mm_factor IM.

    Parameters
    ----------
    risk : float64[K, S]
        Risk arrays (USD P&L per contract), e.g. from :func:`risk_arrays`.
    underlying : int32[K]
        Underlying of each instrument, in ``[0, U)``, ``U = bracket_floor.shape[0]``.
    n_grid : int
        ``G``, number of grid rows at the start of the scenario axis.
    tail_weights : float64[T]
        Weights of the ``T`` extended moves that follow the grid, ``>= 0``.
    es_level : float
        ES confidence level alpha in (0, 1), e.g. 0.975.
    unit_notional : float64[K]
        USD notional of one contract for the brackets (forward x multiplier), ``>= 0``.
    mark_value : float64[K]
        USD value of one contract the spread is paid on (mark x multiplier), ``>= 0``.
    half_spread : float64[K]
        Half bid-ask spread as a fraction of the mark, ``>= 0``.
    depth : float64[K]
        Contracts available within the spread, ``> 0``.
    bracket_floor : float64[U, B]
        Lower notional bound (USD) of each bracket; ``floor[u, 0] == 0``, strictly increasing.
    bracket_rate : float64[U, B]
        Margin rate of each bracket, in [0, 1], non-decreasing.
    mm_factor : float
        MM / IM ratio in (0, 1].
    """

    def __init__(self, risk, underlying, n_grid, tail_weights, es_level, unit_notional, mark_value,
                 half_spread, depth, bracket_floor, bracket_rate, mm_factor):
        risk = _array("risk", risk, np.float64, 2)
        n_inst, n_scen = risk.shape
        underlying = _array("underlying", underlying, np.int32, 1)
        _shape("underlying", underlying, (n_inst,))
        n_grid = _int("n_grid", n_grid)
        tail_weights = _array("tail_weights", tail_weights, np.float64, 1)
        es_level = _real("es_level", es_level)
        inst = []
        for name, a in (("unit_notional", unit_notional), ("mark_value", mark_value),
                        ("half_spread", half_spread), ("depth", depth)):
            a = _array(name, a, np.float64, 1)
            _shape(name, a, (n_inst,))
            inst.append(a)
        unit_notional, mark_value, half_spread, depth = inst
        bracket_floor = _array("bracket_floor", bracket_floor, np.float64, 2)
        bracket_rate = _array("bracket_rate", bracket_rate, np.float64, 2)
        _shape("bracket_rate", bracket_rate, bracket_floor.shape)
        mm_factor = _real("mm_factor", mm_factor)

        n_und, n_br = bracket_floor.shape
        n_tail = tail_weights.shape[0]
        if n_grid < 0:
            raise ValueError("n_grid must be >= 0")
        if n_scen < n_grid + n_tail + 1:
            raise ValueError(f"risk has {n_scen} scenario columns, need n_grid + n_tail "
                             f"({n_grid} + {n_tail}) + at least 1 historical")
        if n_br < 1:
            raise ValueError("bracket_floor must have at least 1 bracket")
        if not (0.0 < es_level < 1.0):
            raise ValueError("es_level must be in (0, 1)")
        if not (0.0 < mm_factor <= 1.0):
            raise ValueError("mm_factor must be in (0, 1]")
        _check("risk", ~np.isfinite(risk), "finite")
        idx = _first((underlying < 0) | (underlying >= n_und))
        if idx is not None:
            raise ValueError(f"underlying[{idx[0]}] = {underlying[idx]} is out of range [0, {n_und})")
        with np.errstate(invalid="ignore"):
            _check("tail_weights", ~(np.isfinite(tail_weights) & (tail_weights >= 0)), "finite and >= 0")
            _check("unit_notional", ~(np.isfinite(unit_notional) & (unit_notional >= 0)), "finite and >= 0")
            _check("mark_value", ~(np.isfinite(mark_value) & (mark_value >= 0)), "finite and >= 0")
            _check("half_spread", ~(np.isfinite(half_spread) & (half_spread >= 0)), "finite and >= 0")
            _check("depth", ~(np.isfinite(depth) & (depth > 0)), "finite and > 0")
            prev = np.concatenate([np.full((n_und, 1), -np.inf), bracket_floor[:, :-1]], axis=1)
            bad = ~(np.isfinite(bracket_floor) & (bracket_floor > prev))
            bad[:, 0] = bracket_floor[:, 0] != 0.0
            _check("bracket_floor", bad, "finite, 0 in the first bracket and increasing")
            prev = np.concatenate([np.zeros((n_und, 1)), bracket_rate[:, :-1]], axis=1)
            _check("bracket_rate", ~(np.isfinite(bracket_rate) & (bracket_rate >= prev) & (bracket_rate <= 1.0)),
                   "finite, in [0, 1] and non-decreasing")

        ro = lambda a: np.array(a, copy=True)  # noqa: E731  - private, immutable copies
        self._risk = ro(risk)
        self._und = ro(underlying)
        self._n_grid = n_grid
        self._n_tail = n_tail
        self._n_hist = n_scen - n_grid - n_tail
        self._m = _n_worst(es_level, self._n_hist)
        self._es_level = es_level
        self._w = np.concatenate([np.ones(n_grid), tail_weights])   # weight per grid/tail row
        self._notional = ro(unit_notional)
        self._liq_unit = mark_value * half_spread                    # USD per contract
        self._depth = ro(depth)
        self._floor = ro(bracket_floor)
        self._rate = ro(bracket_rate)
        cum = np.zeros((n_und, n_br))
        for b in range(1, n_br):
            cum[:, b] = cum[:, b - 1] + bracket_floor[:, b] * (bracket_rate[:, b] - bracket_rate[:, b - 1])
        self._cum = cum
        self._mm = mm_factor
        self._n_und = n_und
        # One contract long (index 0) and short (index 1): grid margin and ES, per instrument.
        gt = n_grid + n_tail
        self._rg = np.ascontiguousarray(self._risk[:, :gt])
        self._rh = np.ascontiguousarray(self._risk[:, gt:])
        rg = self._rg * self._w
        rh = self._rh
        self._grid1 = np.zeros((2, n_inst))
        if gt:
            self._grid1[0] = np.maximum(0.0, (-rg).max(axis=1))
            self._grid1[1] = np.maximum(0.0, rg.max(axis=1))
        m, h = self._m, self._n_hist
        self._es1 = np.stack([np.partition(-rh, h - m, axis=1)[:, h - m:].sum(axis=1) / m,
                              np.partition(rh, h - m, axis=1)[:, h - m:].sum(axis=1) / m])
        for a in (self._risk, self._rg, self._rh, self._und, self._w, self._notional, self._liq_unit, self._depth,
                  self._floor, self._rate, self._cum, self._grid1, self._es1):
            a.flags.writeable = False

    # ---------------------------------------------------------------- properties
    n_instruments = property(lambda self: self._risk.shape[0])
    n_underlyings = property(lambda self: self._n_und)
    n_grid = property(lambda self: self._n_grid)
    n_tail = property(lambda self: self._n_tail)
    n_hist = property(lambda self: self._n_hist)
    n_worst = property(lambda self: self._m, doc="m, the number of scenarios averaged by ES")
    es_level = property(lambda self: self._es_level)
    mm_factor = property(lambda self: self._mm)

    # ---------------------------------------------------------------- per position terms

    def _minimum(self, k: np.ndarray, a: np.ndarray) -> np.ndarray:
        u = self._und[k]
        notional = a * self._notional[k]
        b = (self._floor[u] <= notional[:, None]).sum(axis=1) - 1
        return notional * self._rate[u, b] - self._cum[u, b]

    def _liquidity(self, k: np.ndarray, a: np.ndarray) -> np.ndarray:
        d = self._depth[k]
        e = np.maximum(a - d, 0.0)
        return self._liq_unit[k] * (a + e * e / d)

    def _isolated(self, k: np.ndarray, q: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        a = np.abs(q)
        a_s = a if scale is None else a * scale      # scenario losses at the scaled size, the rest at |q|
        short = (q < 0).astype(np.intp)
        return (np.maximum(np.maximum(a_s * self._grid1[short, k], a_s * self._es1[short, k]),
                           self._minimum(k, a)) + self._liquidity(k, a))

    def _positions(self, instrument, size, name_i="instrument", name_s="size"):
        bad_i = (instrument < 0) | (instrument >= self._risk.shape[0])
        bad_s = ~np.isfinite(size)
        idx = _first(bad_i | bad_s)
        if idx is not None:
            p = idx[0]
            if bad_i[p]:
                raise ValueError(f"{name_i}[{p}] = {instrument[p]} is out of range [0, {self._risk.shape[0]})")
            raise ValueError(f"{name_s}[{p}] must be finite")

    # ---------------------------------------------------------------- all accounts

    @_quiet
    def compute(self, indptr, instrument, size, isolated, n_threads=2, *, scale=None) -> dict[str, np.ndarray]:
        """Margin of every account (positions in CSR form).

        Parameters
        ----------
        indptr : int64[N+1]
            Account ``i`` holds positions ``indptr[i]:indptr[i+1]``.
        instrument : int32[nnz]
            Instrument of each position, in ``[0, K)``.
        size : float64[nnz]
            Signed contracts (negative = short).
        isolated : uint8[nnz] or bool[nnz]
            Nonzero: the position is margined alone.
        n_threads : int
            Worker threads (the C core; accepted and ignored here).
        scale : float64[nnz] or None
            Per position, a factor on its scenario losses (grid, tails, historical; e.g. the
            liquidation horizon's ``sqrt(h_eff / h)``), finite and ``> 0``; the minimum and the
            liquidity add-on stay on the true size. None: 1 for every position.

        Returns
        -------
        dict with float64[N] ``im``, ``mm``, ``cross_im``, ``grid``, ``es``, ``var``,
        ``minimum``, ``liquidity`` (the last five for the cross positions), int64[N]
        ``worst`` (FHS scenario index in ``[0, H)`` of the largest cross loss; -1 without
        cross positions) and float64[nnz] ``isolated_im`` (0 for cross positions).
        """
        indptr = _array("indptr", indptr, np.int64, 1)
        instrument = _array("instrument", instrument, np.int32, 1)
        nnz = instrument.shape[0]
        size = _array("size", size, np.float64, 1)
        _shape("size", size, (nnz,))
        iso = _flags("isolated", isolated)
        _shape("isolated", iso, (nnz,))
        scale = _scale(scale, nnz)
        n_threads = _int("n_threads", n_threads)
        if n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        if indptr.shape[0] < 1:
            raise ValueError("indptr must have at least 1 element")
        if indptr[0] != 0:
            raise ValueError("indptr[0] must be 0")
        dec = np.flatnonzero(np.diff(indptr) < 0)
        if dec.size:
            i = int(dec[0]) + 1
            raise ValueError(f"indptr must be non-decreasing: indptr[{i}] < indptr[{i - 1}]")
        if indptr[-1] != nnz:
            raise ValueError(f"indptr[-1] = {indptr[-1]} must equal the number of positions {nnz}")
        self._positions(instrument, size)

        n_acc = indptr.shape[0] - 1
        gt = self._n_grid + self._n_tail
        h, m = self._n_hist, self._m
        account = np.repeat(np.arange(n_acc), np.diff(indptr))

        iso_im = np.zeros(nnz)
        if iso.any():
            iso_im[iso] = self._isolated(instrument[iso], size[iso], None if scale is None else scale[iso])
        iso_total = _sum_by(account, iso_im, n_acc)

        cross = ~iso
        acc_c, k_c, q_c = account[cross], instrument[cross], size[cross]
        a_c = np.abs(q_c)
        if scale is not None:
            q_c = q_c * scale[cross]     # the scenario losses' weights; a_c keeps the true size
        n_cross = np.bincount(acc_c, minlength=n_acc)
        has = n_cross > 0
        minimum = _sum_by(acc_c, self._minimum(k_c, a_c), n_acc)
        liquidity = _sum_by(acc_c, self._liquidity(k_c, a_c), n_acc)
        finite = np.ones(n_acc, dtype=bool)

        # Grid: one sparse row per (account, underlying) pair that has cross positions.
        grid = np.zeros(n_acc)
        if gt and acc_c.size:
            key = acc_c * np.int64(self._n_und) + self._und[k_c]
            pairs, row = np.unique(key, return_inverse=True)
            pmat = scipy.sparse.csr_array((-q_c, (row, k_c)), shape=(pairs.size, self._risk.shape[0]))
            loss = pmat @ self._rg
            pair_acc = pairs // self._n_und
            np.logical_and.at(finite, pair_acc, np.isfinite(loss).all(axis=1))
            grid = _sum_by(pair_acc, np.maximum(0.0, (loss * self._w).max(axis=1)), n_acc)

        # Historical scenarios: dense loss blocks of _CHUNK_ACCOUNTS accounts.
        es = np.zeros(n_acc)
        var = np.zeros(n_acc)
        worst = np.full(n_acc, -1, dtype=np.int64)
        c_ptr = np.concatenate([[0], np.cumsum(n_cross)])
        pmat = scipy.sparse.csr_array((-q_c, k_c, c_ptr), shape=(n_acc, self._risk.shape[0]))
        for a0 in range(0, n_acc, _CHUNK_ACCOUNTS):
            a1 = min(a0 + _CHUNK_ACCOUNTS, n_acc)
            rows = np.flatnonzero(has[a0:a1])
            if rows.size == 0:
                continue
            sel = rows + a0
            loss = (pmat[a0:a1] @ self._rh)[rows]
            finite[sel] &= np.isfinite(loss).all(axis=1)
            top = np.partition(loss, h - m, axis=1)[:, h - m:]
            es[sel] = top.sum(axis=1) / m
            var[sel] = top.min(axis=1)
            worst[sel] = loss.argmax(axis=1)

        cross_im = np.where(has, np.maximum(np.maximum(grid, es), minimum) + liquidity, 0.0)
        im = cross_im + iso_total
        bad = np.flatnonzero(~(finite & np.isfinite(im)))
        if bad.size:
            raise ValueError(f"margin overflow in account {bad[0]}: losses or margin not finite (sizes too large?)")
        return {"im": im, "mm": self._mm * im, "cross_im": cross_im, "grid": grid, "es": es, "var": var,
                "worst": worst, "minimum": minimum, "liquidity": liquidity, "isolated_im": iso_im}

    # ---------------------------------------------------------------- one account

    def _one(self, instrument, size, isolated, delta_instrument=None, delta_size=None):
        instrument = _array("instrument", instrument, np.int32, 1)
        n = instrument.shape[0]
        size = _array("size", size, np.float64, 1)
        _shape("size", size, (n,))
        iso = _flags("isolated", isolated)
        _shape("isolated", iso, (n,))
        if delta_instrument is not None:
            delta_instrument = _array("delta_instrument", delta_instrument, np.int32, 1)
            delta_size = _array("delta_size", delta_size, np.float64, 1)
            _shape("delta_size", delta_size, delta_instrument.shape)
        self._positions(instrument, size)
        if delta_instrument is not None:
            self._positions(delta_instrument, delta_size, "delta_instrument", "delta_size")
            k_list, q_list, iso_list = list(instrument), list(size), list(iso)
            for k, dq in zip(delta_instrument.tolist(), delta_size.tolist()):
                for j in range(len(k_list)):
                    if not iso_list[j] and k_list[j] == k:
                        q_list[j] = q_list[j] + dq
                        break
                else:
                    k_list.append(k)
                    q_list.append(dq)
                    iso_list.append(False)
            instrument = np.array(k_list, dtype=np.int32)
            size = np.array(q_list, dtype=np.float64)
            iso = np.array(iso_list, dtype=bool)
        return instrument, size, iso

    def _account(self, instrument, size, iso, explain, scale=None):
        n = instrument.shape[0]
        gt = self._n_grid + self._n_tail
        h, m = self._n_hist, self._m
        iso_im = np.zeros(n)
        if iso.any():
            iso_im[iso] = self._isolated(instrument[iso], size[iso], None if scale is None else scale[iso])
        cross = np.flatnonzero(~iso)
        k_c, q_c = instrument[cross], size[cross]
        a_c = np.abs(q_c)
        if scale is not None:
            q_c = q_c * scale[cross]
        min_c = self._minimum(k_c, a_c)
        liq_c = self._liquidity(k_c, a_c)
        # Per-position losses in the grid/tail rows and in the historical rows.
        pos_loss = -q_c[:, None] * self._risk[k_c]                     # [n_cross, S]
        u_c = self._und[k_c]
        und_grid = np.zeros(self._n_und)
        und_scen = np.full(self._n_und, -1, dtype=np.int64)
        pos_grid = np.zeros(cross.size)
        finite = bool(np.isfinite(pos_loss).all())
        grid = 0.0
        for u in np.unique(u_c):
            mine = u_c == u
            loss_u = pos_loss[mine, :gt].sum(axis=0)
            finite &= bool(np.isfinite(loss_u).all())
            if gt == 0:
                continue
            wl = loss_u * self._w
            g = int(wl.argmax())
            if wl[g] > 0.0:
                und_grid[u] = wl[g]
                und_scen[u] = g
                pos_grid[mine] = pos_loss[mine, g] * self._w[g]
                grid += wl[g]
        if cross.size:
            loss = pos_loss[:, gt:].sum(axis=0)
            finite &= bool(np.isfinite(loss).all())
            order = np.argsort(-loss, kind="stable")[:m]              # worst m, lowest h on ties
            es = loss[order].sum() / m
            var = float(loss[order[-1]])
            worst = int(order[0])
            cross_im = max(grid, es, float(min_c.sum())) + float(liq_c.sum())
        else:
            order = np.zeros(0, dtype=np.int64)
            es = var = cross_im = 0.0
            worst = -1
        iso_total = float(iso_im.sum())
        im = cross_im + iso_total
        if not (finite and math.isfinite(im)):
            raise ValueError("margin overflow: losses or margin not finite (sizes too large?)")
        out = {"im": float(im), "mm": float(self._mm * im), "cross_im": float(cross_im), "grid": float(grid),
               "es": float(es), "var": float(var), "worst": worst, "minimum": float(min_c.sum()),
               "liquidity": float(liq_c.sum()), "isolated_im": iso_total}
        if explain:
            def per_pos(v, dtype=np.float64):
                full = np.zeros(n, dtype=dtype)
                full[cross] = v
                return full
            pos_es = pos_loss[:, gt + order].sum(axis=1) / m if cross.size else np.zeros(0)
            out.update({
                "position_grid": per_pos(pos_grid),
                "position_es": per_pos(pos_es),
                "position_worst_loss": per_pos(pos_loss[:, gt + worst] if cross.size else np.zeros(0)),
                "position_minimum": per_pos(min_c) + np.where(iso, self._minimum(instrument, np.abs(size)), 0.0),
                "position_liquidity": per_pos(liq_c) + np.where(iso, self._liquidity(instrument, np.abs(size)), 0.0),
                "position_isolated_im": iso_im,
                "underlying_grid": und_grid,
                "underlying_grid_scenario": und_scen,
                "underlying_es": _sum_by(u_c, pos_es, self._n_und),
                "es_scenarios": order.astype(np.int64),
            })
        return out

    @_quiet
    def what_if(self, instrument, size, isolated, delta_instrument, delta_size) -> dict[str, Any]:
        """Margin of one account after hypothetical trades.

        Each delta ``(k, dq)`` is added to the account's first cross position on instrument
        ``k``, or appended as a new cross position; isolated positions are not touched.

        Returns
        -------
        dict of Python scalars: ``im``, ``mm``, ``cross_im``, ``grid``, ``es``, ``var``,
        ``worst``, ``minimum``, ``liquidity`` (as in :meth:`compute`) and ``isolated_im``,
        the sum of the isolated positions' IM.
        """
        k, q, iso = self._one(instrument, size, isolated, delta_instrument, delta_size)
        return self._account(k, q, iso, explain=False)

    @_quiet
    def explain(self, instrument, size, isolated, *, scale=None) -> dict[str, Any]:
        """Margin of one account and where it comes from.

        Returns
        -------
        The :meth:`what_if` scalars plus, per position (float64[n]): ``position_grid``
        (loss in its underlying's binding grid/tail row times that row's weight; sums to
        ``grid``), ``position_es`` (Euler contribution, mean loss over the ``m`` worst
        scenarios; sums to ``es``), ``position_worst_loss`` (loss in scenario ``worst``),
        ``position_minimum``, ``position_liquidity``, ``position_isolated_im`` (cross
        terms are 0 for isolated positions and vice versa, except minimum and liquidity);
        per underlying (U): ``underlying_grid`` (M_u), ``underlying_grid_scenario``
        (binding row in ``[0, G+T)``, -1 if M_u = 0), ``underlying_es``; and
        ``es_scenarios`` (int64[m], the worst historical scenarios, worst first).
        ``scale`` (float64[n] or None) as in :meth:`compute`.
        """
        k, q, iso = self._one(instrument, size, isolated)
        return self._account(k, q, iso, explain=True, scale=_scale(scale, k.shape[0]))


# --------------------------------------------------------------------------- valuation

# Health states (values of ``marginflow.margin.v1.HealthState``; a larger value is a worse state).
STATE_HEALTHY, STATE_MARGIN_CALL, STATE_LIQUIDATION, STATE_BANKRUPT = 1, 2, 3, 4
# Oldest-mark sentinel: a time no mark has (stablecoins' asset time, "no mark used").
NEVER_MS = np.iinfo(np.int64).max
# A hundred-millionth of a cent either side of a cent boundary counts as on it (shared.money).
_CENT_TOLERANCE = 1e-9


def _classify(equity: np.ndarray, im: np.ndarray, mm: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """int8 health states on whole cents, equity rounded down, requirements up (shared.money's rule)."""
    e = np.floor(equity * 100.0 + _CENT_TOLERANCE)
    i = np.ceil(im * 100.0 - _CENT_TOLERANCE)
    m = np.ceil(mm * 100.0 - _CENT_TOLERANCE)
    state = np.full(e.shape, STATE_HEALTHY, dtype=np.int8)
    below_im = e < i
    state[below_im] = STATE_MARGIN_CALL
    liq = below_im & (e < m) & fresh
    state[liq] = STATE_LIQUIDATION
    state[liq & (e < 0)] = STATE_BANKRUPT
    return state


def _segment_min(values: np.ndarray, indptr: np.ndarray, fill) -> np.ndarray:
    """Minimum of each CSR segment (``fill`` for an empty one); reduceat, not ufunc.at (10x faster)."""
    n = indptr.shape[0] - 1
    out = np.full(n, fill, dtype=values.dtype)
    nonempty = indptr[1:] > indptr[:-1]
    if values.size and nonempty.any():
        out[nonempty] = np.minimum.reduceat(values, indptr[:-1][nonempty])
    return out


def _indptr_structure(indptr: np.ndarray, nnz: int) -> None:
    if indptr[0] != 0:
        raise ValueError("indptr[0] must be 0")
    dec = np.flatnonzero(np.diff(indptr) < 0)
    if dec.size:
        i = int(dec[0]) + 1
        raise ValueError(f"indptr must be non-decreasing: indptr[{i}] < indptr[{i - 1}]")
    if indptr[-1] != nnz:
        raise ValueError(f"indptr[-1] = {indptr[-1]} must equal the number of positions {nnz}")


def valuate(indptr, instrument, size, entry, isolated, isolated_collateral, isolated_im, balances, cross_im,
            mm_factor, mark, contract_size, mark_time_ms, fresh, unit_value, asset_fresh, asset_time_ms, *,
            n_threads=1, rows=None, out=None) -> dict[str, np.ndarray]:
    r"""Equity, requirements and health of every account at current marks (positions in CSR form).

    Account ``i`` holds positions ``j`` in ``indptr[i]:indptr[i+1]`` on instruments ``k_j``;
    ``iso_j`` = the position is isolated, ``held_j`` = ``q_j != 0``. USD throughout::

        pnl_j          = q_j * contract_size[k_j] * (mark[k_j] - entry_j)
        collateral_i   = sum_a balances[i, a] * unit_value[a]
        cross_pnl_i    = sum_{j in i, not iso_j} pnl_j
        cross_equity_i = collateral_i + cross_pnl_i
        fresh_i        = fresh[k_j] for every held j in i  and  asset_fresh[a] for every a with balances[i, a] != 0
        marks_time_i   = min(mark_time_ms[k_j] (held j), asset_time_ms[a] (balances[i, a] != 0)); 0 if none
        cross_mm_i     = mm_factor * cross_im_i
        cross_state_i  = classify(cross_equity_i, cross_im_i, cross_mm_i, fresh_i)
        iso_equity_j   = isolated_collateral_j + pnl_j,  iso_im_j = isolated_im_j   (iso_j and held_j; else 0)
        iso_mm_j       = mm_factor * iso_im_j
        iso_state_j    = classify(iso_equity_j, iso_im_j, iso_mm_j, fresh_i)       (iso_j and held_j; else 0)
        state_i        = max(cross_state_i, max_{j in i} iso_state_j)              (worst of the two)
        equity_i       = cross_equity_i + sum_{j in i} iso_equity_j
        im_i           = cross_im_i + sum_{j in i} iso_im_j,  mm_i = mm_factor * im_i

    ``classify`` compares whole cents in the venue's favour (``shared.money``): with
    ``E = floor(100 equity + 1e-9)``, ``I = ceil(100 IM - 1e-9)``, ``M = ceil(100 MM - 1e-9)``:
    HEALTHY (1) if ``E >= I``, else MARGIN_CALL (2) if ``E >= M`` or the marks are not fresh,
    else BANKRUPT (4) if ``E < 0``, else LIQUIDATION (3).

    Parameters
    ----------
    indptr : int64[N+1]
        CSR row pointer over the N accounts.
    instrument : int32[nnz]
        Instrument of each position, in ``[0, K)`` with ``K = mark.shape[0]``.
    size, entry : float64[nnz]
        Signed contracts and entry price (USD), finite.
    isolated : uint8[nnz] or bool[nnz]
        Nonzero: the position is margined alone with its own collateral.
    isolated_collateral, isolated_im : float64[nnz]
        Collateral (USD) and IM (USD, the core's ``isolated_im``) of each isolated position, finite.
    balances : float64[N, A]
        Asset balances of each account (units), finite.
    cross_im : float64[N]
        Cross IM of each account (USD, the core's ``cross_im``), finite.
    mm_factor : float
        MM / IM, in (0, 1].
    mark, contract_size : float64[K]
        Mark price (USD; 0 where none was seen) and units per contract, finite.
    mark_time_ms : int64[K]
        Time of each instrument's mark (0 = never).
    fresh : uint8[K] or bool[K]
        The instrument's mark is within the allowed age.
    unit_value : float64[A]
        USD per asset unit after haircut, finite.
    asset_fresh : uint8[A] or bool[A]
        The asset's price is within the allowed age (stablecoins: always).
    asset_time_ms : int64[A]
        Time of each asset's price (stablecoins: ``NEVER_MS``, never the oldest).
    n_threads : int
        Worker threads (the C core; accepted and ignored here).
    out : dict, optional
        Arrays to write the results into, one per key of the returned dict, each contiguous, writeable,
        of its dtype and length (N or nnz); returned. (A pass in slices writes into one set of arrays.)
    rows : (lo, hi), optional
        Compute accounts ``lo:hi`` only (with their positions), into ``out`` (required); the other
        elements of ``out`` are left as they are. Every value is checked here; the C core checks those
        of the rows (and reports the first bad element of the whole book, as here, when one is bad).

    Returns
    -------
    dict with float64[N] ``collateral cross_pnl cross_equity cross_mm equity im mm``, int8[N]
    ``cross_state state``, bool[N] ``fresh``, int64[N] ``marks_time_ms`` and per position
    float64[nnz] ``pnl iso_equity iso_mm``, int8[nnz] ``iso_state`` (0 for cross positions).
    """
    indptr = _array("indptr", indptr, np.int64, 1)
    if indptr.shape[0] < 1:
        raise ValueError("indptr must have at least 1 element")
    n = indptr.shape[0] - 1
    instrument = _array("instrument", instrument, np.int32, 1)
    nnz = instrument.shape[0]
    per_position = {}
    for name, a in (("size", size), ("entry", entry)):
        per_position[name] = _array(name, a, np.float64, 1)
        _shape(name, per_position[name], (nnz,))
    iso = _flags("isolated", isolated)
    _shape("isolated", iso, (nnz,))
    for name, a in (("isolated_collateral", isolated_collateral), ("isolated_im", isolated_im)):
        per_position[name] = _array(name, a, np.float64, 1)
        _shape(name, per_position[name], (nnz,))
    size, entry = per_position["size"], per_position["entry"]
    isolated_collateral, isolated_im = per_position["isolated_collateral"], per_position["isolated_im"]
    balances = _array("balances", balances, np.float64, 2)
    n_assets = balances.shape[1]
    _shape("balances", balances, (n, n_assets))
    cross_im = _array("cross_im", cross_im, np.float64, 1)
    _shape("cross_im", cross_im, (n,))
    mm = _real("mm_factor", mm_factor)
    mark = _array("mark", mark, np.float64, 1)
    n_inst = mark.shape[0]
    contract_size = _array("contract_size", contract_size, np.float64, 1)
    _shape("contract_size", contract_size, (n_inst,))
    mark_time_ms = _array("mark_time_ms", mark_time_ms, np.int64, 1)
    _shape("mark_time_ms", mark_time_ms, (n_inst,))
    fresh_k = _flags("fresh", fresh)
    _shape("fresh", fresh_k, (n_inst,))
    unit_value = _array("unit_value", unit_value, np.float64, 1)
    _shape("unit_value", unit_value, (n_assets,))
    asset_fresh = _flags("asset_fresh", asset_fresh)
    _shape("asset_fresh", asset_fresh, (n_assets,))
    asset_time_ms = _array("asset_time_ms", asset_time_ms, np.int64, 1)
    _shape("asset_time_ms", asset_time_ms, (n_assets,))
    n_threads = _int("n_threads", n_threads)
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    _indptr_structure(indptr, nnz)
    # values, in argument order: the first bad element of the first bad argument is reported
    idx = _first((instrument < 0) | (instrument >= n_inst))
    if idx is not None:
        raise ValueError(f"instrument[{idx[0]}] = {instrument[idx]} is out of range [0, {n_inst})")
    for name, a in (("size", size), ("entry", entry), ("isolated_collateral", isolated_collateral),
                    ("isolated_im", isolated_im), ("balances", balances), ("cross_im", cross_im)):
        _check(name, ~np.isfinite(a), "finite")
    if not (mm > 0.0 and mm <= 1.0):
        raise ValueError("mm_factor must be in (0, 1]")
    for name, a in (("mark", mark), ("contract_size", contract_size), ("unit_value", unit_value)):
        _check(name, ~np.isfinite(a), "finite")

    if rows is not None:
        return _valuate_rows(rows, out, indptr, instrument, size, entry, iso, isolated_collateral, isolated_im,
                             balances, cross_im, mm, mark, contract_size, mark_time_ms, fresh_k, unit_value,
                             asset_fresh, asset_time_ms)
    if out is not None:
        _check_out(out, n, nnz)
    owner = np.repeat(np.arange(n), np.diff(indptr))
    with np.errstate(over="ignore", invalid="ignore"):
        pnl = size * contract_size[instrument] * (mark[instrument] - entry)
        held = size != 0.0
        # Not ``balances @ unit_value``: a BLAS call wakes OpenBLAS threads that then spin on the cores
        # other threads need.
        collateral = (balances * unit_value).sum(axis=1) if balances.size else np.zeros(n)
        cross_pnl = _sum_by(owner, np.where(iso, 0.0, pnl), n)
        cross_equity = collateral + cross_pnl
        # Freshness: every instrument held and every crypto collateral asset with a balance.
        stale = _sum_by(owner, held & ~fresh_k[instrument], n) > 0
        stale |= ((balances != 0) & ~asset_fresh).any(axis=1)
        acc_fresh = ~stale
        oldest = _segment_min(np.where(held, mark_time_ms[instrument], NEVER_MS), indptr, NEVER_MS)
        if balances.size:
            used = np.where(balances != 0, asset_time_ms[None, :], NEVER_MS)
            np.minimum(oldest, used.min(axis=1), out=oldest)
        oldest[oldest == NEVER_MS] = 0
        cross_mm = mm * cross_im
        cross_state = _classify(cross_equity, cross_im, cross_mm, acc_fresh)
        iso_held = iso & held
        iso_equity = np.where(iso_held, isolated_collateral + pnl, 0.0)
        iso_im = np.where(iso_held, isolated_im, 0.0)
        iso_mm = mm * iso_im
        iso_state = np.zeros(nnz, dtype=np.int8)
        state = cross_state.copy()
        if iso_held.any():
            iso_state[iso_held] = _classify(iso_equity[iso_held], iso_im[iso_held], iso_mm[iso_held],
                                            acc_fresh[owner[iso_held]])
            worst_iso = -_segment_min(-iso_state.astype(np.int64), indptr, 0)
            np.maximum(state, worst_iso.astype(np.int8), out=state)
        equity = cross_equity + _sum_by(owner, iso_equity, n)
        im = cross_im + _sum_by(owner, iso_im, n)
    res = {"collateral": collateral, "cross_pnl": cross_pnl, "cross_equity": cross_equity, "cross_mm": cross_mm,
           "cross_state": cross_state, "equity": equity, "im": im, "mm": mm * im, "state": state,
           "fresh": acc_fresh, "marks_time_ms": oldest, "pnl": pnl, "iso_equity": iso_equity, "iso_mm": iso_mm,
           "iso_state": iso_state}
    if out is None:
        return res
    for key, v in res.items():
        out[key][...] = v
    return out


# valuate's results: name → (dtype, per position)
VALUATE_OUTPUTS = {"collateral": (np.float64, False), "cross_pnl": (np.float64, False),
                   "cross_equity": (np.float64, False), "cross_mm": (np.float64, False),
                   "cross_state": (np.int8, False), "equity": (np.float64, False), "im": (np.float64, False),
                   "mm": (np.float64, False), "state": (np.int8, False), "fresh": (np.bool_, False),
                   "marks_time_ms": (np.int64, False), "pnl": (np.float64, True), "iso_equity": (np.float64, True),
                   "iso_mm": (np.float64, True), "iso_state": (np.int8, True)}


def valuate_out(n: int, nnz: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays for ``valuate(..., out=)`` over N accounts and nnz positions."""
    return {k: np.empty(nnz if per_position else n, dtype=dt) for k, (dt, per_position) in VALUATE_OUTPUTS.items()}


def _check_out(out, n: int, nnz: int) -> None:
    if not isinstance(out, dict):
        raise TypeError("out must be a dict of arrays (as valuate returns)")
    for key, (dt, per_position) in VALUATE_OUTPUTS.items():
        v = out.get(key)
        length = nnz if per_position else n
        if (not isinstance(v, np.ndarray) or v.dtype != dt or v.ndim != 1 or v.shape[0] != length
                or not v.flags.c_contiguous or not v.flags.writeable):
            raise ValueError(f"out[{key}] must be a writeable contiguous {np.dtype(dt).name} array of length {length}")


def _valuate_rows(rows, out, indptr, instrument, size, entry, iso, isolated_collateral, isolated_im, balances,
                  cross_im, mm, mark, contract_size, mark_time_ms, fresh_k, unit_value, asset_fresh,
                  asset_time_ms) -> dict[str, np.ndarray]:
    """valuate of accounts ``rows`` = (lo, hi), written into ``out``: the sub-book valuated alone."""
    n, nnz = indptr.shape[0] - 1, instrument.shape[0]
    if out is None:
        raise ValueError("rows needs out (the whole-book arrays the rows are written into)")
    if not isinstance(rows, tuple) or len(rows) != 2:
        raise TypeError("rows must be a tuple (lo, hi)")
    lo, hi = (operator.index(r) for r in rows)
    if not 0 <= lo <= hi <= n:
        raise ValueError(f"rows ({lo}, {hi}) must satisfy 0 <= lo <= hi <= {n}")
    _check_out(out, n, nnz)
    p0, p1 = int(indptr[lo]), int(indptr[hi])
    part = valuate(indptr[lo:hi + 1] - p0, instrument[p0:p1], size[p0:p1], entry[p0:p1], iso[p0:p1],
                   isolated_collateral[p0:p1], isolated_im[p0:p1], balances[lo:hi], cross_im[lo:hi], mm, mark,
                   contract_size, mark_time_ms, fresh_k, unit_value, asset_fresh, asset_time_ms)
    for key, (_dt, per_position) in VALUATE_OUTPUTS.items():
        if per_position:
            out[key][p0:p1] = part[key]
        else:
            out[key][lo:hi] = part[key]
    return out
