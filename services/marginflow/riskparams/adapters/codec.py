"""Protobuf ⇄ riskparams: decode md.ticks / md.marks values in bulk, encode a version as RiskParams."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.riskparams.application import RiskParamsVersion, SigmaChange, UnderlyingSignals
from marginflow.shared.units import MS_PER_DAY
from marginflow.shared.config import DEFAULT_MAX_MESSAGE_BYTES
from marginflow.shared.depthcurve import curve_of_mark
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import check_size

_Tick = marketdata_pb2.Tick
_Mark = marketdata_pb2.Mark


def _decode(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None, message_type, extract,
            max_bytes: int) -> tuple[list, list[tuple[int, Rejected]]]:
    """``extract(message)`` per acceptable value; the others as ``(index, Rejected)``: no value
    (``empty_payload``), larger than ``max_bytes`` (``oversized``), not the message type
    (``malformed``), or a record key that is not the message's instrument (``key_mismatch``)."""
    out: list = []
    errors: list[tuple[int, Rejected]] = []
    parse = message_type.FromString
    for i, raw in enumerate(values):
        if not raw or len(raw) > max_bytes:
            try:
                check_size(raw, max_bytes)
            except Rejected as exc:
                errors.append((i, exc))
                continue
        try:
            msg = parse(raw)
        except (DecodeError, TypeError) as exc:
            errors.append((i, Rejected("malformed", f"not a {message_type.DESCRIPTOR.full_name}: {exc}")))
            continue
        if keys is not None:
            key = keys[i]
            if key and key.decode("utf-8", "replace") != msg.instrument:
                errors.append((i, Rejected("key_mismatch", f"record key {key!r} != instrument {msg.instrument!r}")))
                continue
        try:
            out.append(extract(msg))
        except Rejected as exc:            # a field the extraction validates (a mark's depth curve)
            errors.append((i, exc))
    return out, errors


def decode_ticks(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ) -> tuple[list[tuple[str, float, int]], list[tuple[int, Rejected]]]:
    """``(instrument, price, event_time_ms)`` per decodable value; the others as errors."""
    return _decode(values, keys, _Tick, lambda t: (t.instrument, t.price, t.meta.event_time_ms), max_bytes)


def decode_marks(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ) -> tuple[list[tuple], list[tuple[int, Rejected]]]:
    """``(instrument, underlying, index_price, implied_vol, event_time_ms, depth_curve)`` per decodable
    value (``depth_curve`` None when absent); a mark with an invalid curve is an error with the curve's
    reason (``depth_curve_non_finite``, ``_negative``, ``_non_monotone``, ``_shape``)."""
    return _decode(values, keys, _Mark, lambda m: (m.instrument, m.underlying, m.index_price, m.implied_vol,
                                                   m.meta.event_time_ms, curve_of_mark(m)), max_bytes)


def to_proto(v: RiskParamsVersion, source: str = "riskparams") -> risk_pb2.RiskParams:
    msg = risk_pb2.RiskParams(version=v.version, es_confidence=v.es_confidence,
                              correlation_repaired=v.correlation_repaired)
    msg.meta.event_time_ms = v.event_time_ms
    msg.meta.publish_time_ms = v.publish_time_ms
    msg.meta.source = source
    for e in v.underlyings:
        msg.underlyings.add(
            underlying=e.underlying, index_price=e.index_price, sigma_ewma_fast=e.sigma_ewma_fast,
            sigma_ewma_slow=e.sigma_ewma_slow, sigma_garch=e.sigma_garch, sigma_implied=e.sigma_implied,
            sigma_floor=e.sigma_floor, sigma_margin=e.sigma_margin, apc_buffer=e.apc_buffer, stress=e.stress,
            garch_ok=e.garch_ok, returns_observed=e.returns_observed, sample_interval_ms=e.sample_interval_ms,
            garch_status=e.garch_reason, last_sample_time_ms=e.last_event_time_ms, sigma_base=e.sigma_base)
    msg.correlation_underlyings.extend(v.correlation_underlyings)
    msg.correlation.extend(np.asarray(v.correlation, dtype=np.float64).ravel().tolist())
    for name, g in v.grids:
        msg.grids.add(underlying=name, price_shocks=g.price_shocks, vol_shocks=g.vol_shocks,
                      tail_price_shocks=g.tail_price_shocks, tail_vol_shocks=g.tail_vol_shocks,
                      tail_weights=g.tail_weights, horizon_seconds=g.horizon_seconds, range_fraction=g.range_fraction)
        if g.surface.active:
            sf = g.surface
            msg.grids[-1].surface.CopyFrom(risk_pb2.VolSurfaceShock(
                reference_days=sf.reference_days, short_power=sf.short_power, long_power=sf.long_power,
                min_days=sf.min_days, min_vol_shock_up=sf.min_vol_shock_up, skew_shock=sf.skew_shock,
                put_wing=sf.put_wing, moneyness_cap=sf.moneyness_cap))
    h = v.historical
    msg.historical.underlyings.extend(h.underlyings)
    msg.historical.count = int(h.returns.shape[0])
    msg.historical.returns.extend(np.asarray(h.returns, dtype=np.float64).ravel().tolist())
    msg.historical.bootstrap = h.bootstrap
    msg.historical.first_event_time_ms = h.first_event_time_ms
    msg.historical.last_event_time_ms = h.last_event_time_ms
    msg.historical.horizon_seconds = v.grids[0][1].horizon_seconds if v.grids else 0.0
    msg.historical.method = "bootstrap:student_t4" if h.bootstrap else "fhs"
    return msg


def sigma_change_to_proto(c: SigmaChange) -> risk_pb2.SigmaChange:
    return risk_pb2.SigmaChange(underlying=c.underlying, event_time_ms=c.event_time_ms, version=c.version,
                                sigma_before=c.sigma_before, sigma_after=c.sigma_after, cause=c.cause)


def signals_to_proto(s: UnderlyingSignals, history: Sequence[SigmaChange]) -> risk_pb2.UnderlyingSignals:
    msg = risk_pb2.UnderlyingSignals(
        underlying=s.underlying, as_of_ms=s.as_of_ms, index_price=s.index_price, sigma_realised=s.sigma_realised,
        sigma_implied=s.sigma_implied, realised_implied_ratio=s.realised_implied_ratio, sigma_margin=s.sigma_margin,
        depth_instrument=s.depth_instrument, depth_reference_bps=s.depth_reference_bps,
        depth_contracts=s.depth_contracts, depth_usd=s.depth_usd, depth_index=s.depth_index,
        depth_time_ms=s.depth_time_ms)
    for t in s.tenors:
        msg.tenors.add(tenor_days=t.tenor_days, atm_vol=t.atm_vol, put_25d_vol=t.put_25d_vol,
                       call_25d_vol=t.call_25d_vol, skew_25d=t.skew_25d)
    for e in s.expiries:
        msg.expiries.add(expiry_ms=e.expiry_ms, days=(e.expiry_ms - s.as_of_ms) / MS_PER_DAY, atm_vol=e.atm_vol,
                         put_25d_strike_usd=e.put_25d_strike_usd, put_25d_vol=e.put_25d_vol,
                         call_25d_strike_usd=e.call_25d_strike_usd, call_25d_vol=e.call_25d_vol,
                         skew_25d=e.skew_25d)
    msg.sigma_history.extend(sigma_change_to_proto(c) for c in history)
    return msg


def select(params: risk_pb2.RiskParams, underlyings: Sequence[str]) -> risk_pb2.RiskParams:
    """The parameters restricted to ``underlyings`` (correlation and FHS columns too)."""
    names = list(params.correlation_underlyings)
    idx = [names.index(u) for u in underlyings]
    out = risk_pb2.RiskParams()
    out.CopyFrom(params)
    del out.underlyings[:]
    out.underlyings.extend(p for p in params.underlyings if p.underlying in underlyings)
    del out.grids[:]
    out.grids.extend(g for g in params.grids if g.underlying in underlyings)
    n = len(names)
    corr = np.asarray(params.correlation, dtype=np.float64).reshape(n, n)[np.ix_(idx, idx)]
    del out.correlation_underlyings[:]
    out.correlation_underlyings.extend(underlyings)
    del out.correlation[:]
    out.correlation.extend(corr.ravel().tolist())
    h = params.historical
    hn = list(h.underlyings)
    hidx = [hn.index(u) for u in underlyings]
    moves = np.asarray(h.returns, dtype=np.float64).reshape(h.count, len(hn))[:, hidx] if h.count else np.zeros((0, 0))
    del out.historical.underlyings[:]
    out.historical.underlyings.extend(underlyings)
    del out.historical.returns[:]
    out.historical.returns.extend(moves.ravel().tolist())
    return out
