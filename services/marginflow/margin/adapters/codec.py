"""Protobuf ↔ domain for the margin service, with the validation of every input boundary.

Inputs that cannot be accepted raise :class:`~marginflow.shared.errors.Rejected` (reason code →
dead letter + metric). USD amounts out: decimal strings rounded to the cent, requirements up and
equity down (``money.usd_up`` / ``usd_down``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2 as pb
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.domain.book import AccountBook, InstrumentTable
from marginflow.margin.domain.market import MarkUpdate
from marginflow.margin.domain.results import AccountMargin, Explanation, MarginCallEvent
from marginflow.margin.domain.scenarios import GridSpec, RiskVersion
from marginflow.shared.depthcurve import curve_of_mark
from marginflow.shared.errors import Rejected
from marginflow.shared.money import (
    cents_down, cents_down_array, cents_text, cents_up, cents_up_array, parse_decimal, usd_down, usd_down_text, usd_up,
    usd_up_text)
from marginflow.shared.universe import MAX_IMPLIED_VOL, MAX_PRICE_USD
from marginflow.shared.volsurface import VolSurfaceShock

# Largest plausible amounts: beyond them a value is a unit or encoding error, not a position.
MAX_ABS_SIZE = 1e12
MAX_PRICE = MAX_PRICE_USD
MAX_ABS_AMOUNT = 1e15     # collateral balance or isolated collateral, asset units / USD


def _amount(text: str, what: str) -> float:
    """A decimal string as a float that the core can take: finite and plausible ("1e400" parses
    as a finite Decimal but is inf as a float)."""
    value = float(parse_decimal(text or "0", what))
    if not abs(value) <= MAX_ABS_AMOUNT:
        raise Rejected("implausible", f"{what} {text!r}")
    return value


def _finite(x: float, what: str, positive: bool = False, non_negative: bool = False) -> float:
    if not math.isfinite(x):
        raise Rejected("non_finite", f"{what} is not finite: {x!r}")
    if positive and x <= 0:
        raise Rejected("non_positive_price", f"{what} must be > 0, got {x!r}")
    if non_negative and x < 0:
        raise Rejected("negative_value", f"{what} must be >= 0, got {x!r}")
    return float(x)


# ------------------------------------------------------------------ inputs

def mark_from_proto(m: marketdata_pb2.Mark, table: InstrumentTable, key: str | None = None) -> MarkUpdate:
    """A validated mark; ``key`` (the record key, the instrument) must agree with the payload."""
    symbol = m.instrument
    if key is not None and key != symbol:
        raise Rejected("key_mismatch", f"record key {key!r} != instrument {symbol!r}")
    t_ms = int(m.meta.event_time_ms)
    if t_ms <= 0:
        raise Rejected("missing_field", f"mark of {symbol!r} has no event time")
    if symbol.startswith("index:"):
        und = symbol[len("index:"):]
        u = table.underlying_index.get(und)
        if u is None:
            raise Rejected("unknown_instrument", f"unknown underlying {und!r}")
        if m.underlying != und:
            raise Rejected("underlying_mismatch", f"{symbol}: underlying {m.underlying!r}")
        price = _finite(m.index_price or m.mark_price, "index_price", positive=True)
        if price > MAX_PRICE:
            raise Rejected("implausible", f"index price {price!r}")
        return MarkUpdate(None, u, price, price, 0.0, 0.0, 0.0, t_ms)
    k = table.index.get(symbol)
    if k is None:
        raise Rejected("unknown_instrument", f"unknown instrument {symbol!r}")
    expected = table.underlyings[int(table.underlying[k])]
    if m.underlying != expected:
        # Another message type read as a Mark, or a mark naming the wrong underlying: its index
        # price would be taken for the wrong asset.
        raise Rejected("underlying_mismatch", f"{symbol}: underlying {m.underlying!r}, expected {expected!r}")
    mark = _finite(m.mark_price, "mark_price", non_negative=True)
    if mark <= 0 and table.is_linear(k):
        raise Rejected("non_positive_price", f"mark_price of {symbol} must be > 0, got {mark!r}")
    index = _finite(m.index_price, "index_price", non_negative=True)
    iv = _finite(m.implied_vol, "implied_vol", non_negative=True)
    half_spread = _finite(m.half_spread_frac, "half_spread_frac", non_negative=True)
    depth = _finite(m.depth_contracts, "depth_contracts", non_negative=True)
    if mark > MAX_PRICE or index > MAX_PRICE or iv > MAX_IMPLIED_VOL or half_spread > 1:
        raise Rejected("implausible", f"mark of {symbol}: mark {mark!r}, index {index!r}, iv {iv!r}, "
                                      f"half spread {half_spread!r}")
    return MarkUpdate(k, int(table.underlying[k]), index, mark, iv, half_spread, depth, t_ms, curve_of_mark(m))


def _surface(g: risk_pb2.ScenarioGrid) -> VolSurfaceShock:
    """The grid's surface parameters; absent: the vol states as they are (a version before them)."""
    if not g.HasField("surface"):
        return VolSurfaceShock()
    sf = g.surface
    try:
        return VolSurfaceShock(sf.reference_days, sf.short_power, sf.long_power, sf.min_days, sf.min_vol_shock_up,
                               sf.skew_shock, sf.put_wing, sf.moneyness_cap)
    except ValueError as exc:
        raise Rejected("bad_risk_params", f"vol surface shock of {g.underlying}: {exc}") from None


def risk_params_from_proto(p: risk_pb2.RiskParams) -> RiskVersion:
    if p.version <= 0:
        raise Rejected("missing_field", "risk params without a version")
    sigma = {}
    index = {}
    for u in p.underlyings:
        sigma[u.underlying] = _finite(u.sigma_margin, f"sigma_margin of {u.underlying}", non_negative=True)
        index[u.underlying] = _finite(u.index_price, f"index_price of {u.underlying}", non_negative=True)
    grids = {}
    for g in p.grids:
        for name, values in (("price_shocks", g.price_shocks), ("vol_shocks", g.vol_shocks),
                             ("tail_price_shocks", g.tail_price_shocks), ("tail_vol_shocks", g.tail_vol_shocks),
                             ("tail_weights", g.tail_weights)):
            if not all(math.isfinite(x) for x in values):
                raise Rejected("non_finite", f"{name} of {g.underlying} has a non-finite value")
        grids[g.underlying] = GridSpec(g.underlying, tuple(g.price_shocks), tuple(g.vol_shocks),
                                       tuple(g.tail_price_shocks), tuple(g.tail_vol_shocks), tuple(g.tail_weights),
                                       _finite(g.horizon_seconds, "horizon_seconds", non_negative=True),
                                       _surface(g))
    h = p.historical
    n_u = len(h.underlyings)
    returns = np.asarray(h.returns, dtype=np.float64)
    if h.count <= 0 or n_u == 0 or returns.size != h.count * n_u:
        raise Rejected("bad_risk_params", f"historical scenarios: count {h.count} × {n_u} underlyings "
                                          f"!= {returns.size} returns")
    if not np.all(np.isfinite(returns)):
        raise Rejected("non_finite", "historical scenarios have a non-finite return")
    return RiskVersion(int(p.version), int(p.meta.event_time_ms), int(p.meta.publish_time_ms), sigma, index, grids,
                       tuple(h.underlyings), returns.reshape(h.count, n_u), float(p.es_confidence))


def fill_volume_from_proto(f: account_pb2.Fill, table: InstrumentTable) -> tuple[int, float, int]:
    """(instrument index, contracts traded, event time ms) of a fill, for the venue's volume."""
    k = table.index.get(f.instrument)
    if k is None:
        raise Rejected("unknown_instrument", f"fill of unknown instrument {f.instrument!r}")
    size = _amount(f.size.value, f"size of fill {f.fill_id!r}")
    if size < 0:
        raise Rejected("negative_value", f"size of fill {f.fill_id!r} must be >= 0, got {f.size.value!r}")
    if f.meta.event_time_ms <= 0:
        raise Rejected("missing_field", f"fill {f.fill_id!r} without an event time")
    return k, size, int(f.meta.event_time_ms)


def book_from_proto(s: account_pb2.AccountSnapshot, table: InstrumentTable, asset_index: dict[str, int],
                    key: str | None = None) -> AccountBook:
    account = s.account_id
    if not account:
        raise Rejected("missing_field", "snapshot without account_id")
    if key is not None and key != account:
        raise Rejected("key_mismatch", f"record key {key!r} != account_id {account!r}")
    balances = np.zeros(len(asset_index))
    for b in s.balances:
        amount = _amount(b.amount.value, f"balance of {b.asset}")
        i = asset_index.get(b.asset)
        if i is None:
            if amount != 0:
                raise Rejected("unknown_asset", f"balance in unknown asset {b.asset!r}")
            continue
        balances[i] += amount
    inst, size, entry, iso, coll = [], [], [], [], []
    for p in s.positions:
        k = table.index.get(p.instrument)
        if k is None:
            raise Rejected("unknown_instrument", f"position in unknown instrument {p.instrument!r}")
        q = float(parse_decimal(p.size.value or "0", f"size of {p.instrument}"))
        if abs(q) > MAX_ABS_SIZE:
            raise Rejected("implausible", f"size {q!r} of {p.instrument}")
        e = float(parse_decimal(p.entry_price.value or "0", f"entry_price of {p.instrument}"))
        if q != 0 and (e < 0 or e > MAX_PRICE):
            raise Rejected("implausible", f"entry price {e!r} of {p.instrument}")
        isolated = p.mode == account_pb2.MARGIN_MODE_ISOLATED
        c = _amount(p.isolated_collateral_usd.value, f"isolated collateral of {p.instrument}")
        if q == 0:
            continue   # flat: portfolio returns isolated collateral to the cross balance
        inst.append(k)
        size.append(q)
        entry.append(e)
        iso.append(1 if isolated else 0)
        coll.append(c if isolated else 0.0)
    return AccountBook(account, int(s.revision), np.asarray(inst, np.int32), np.asarray(size, np.float64),
                       np.asarray(entry, np.float64), np.asarray(iso, np.uint8), np.asarray(coll, np.float64),
                       balances, int(s.updated_ms))


# ------------------------------------------------------------------ outputs

# Whole cents below this magnitude (10¹³ USD) are written through a float: c/100 is then within far less
# than half a cent of the exact amount, so "%.2f" gives its exact digits; larger ones digit by digit.
_FLOAT_EXACT_CENTS = 10 ** 15


def _text(cents: int) -> str:
    """Whole cents as the wire's decimal string: :func:`marginflow.shared.money.cents_text`, faster."""
    return f"{cents / 100:.2f}" if -_FLOAT_EXACT_CENTS < cents < _FLOAT_EXACT_CENTS else cents_text(cents)


def _up(value: float) -> str:
    """:func:`usd_up_text` (a requirement, rounded up to the cent)."""
    return _text(cents_up(value))


def _down(value: float) -> str:
    """:func:`usd_down_text` (equity, rounded down to the cent)."""
    return _text(cents_down(value))


def _state_fields(msg: pb.MarginState, m: AccountMargin, source: str, publish_ms: int,
                  texts: Sequence[str] | None = None, iso_texts: Sequence[str] | None = None) -> pb.MarginState:
    """``texts``: the 12 amounts already as wire strings, in :data:`_AMOUNTS` order, and ``iso_texts``
    (equity, IM, MM) of each isolated position in turn (a batch)."""
    if texts is None:
        texts = (_down(m.equity_usd), _down(m.cross_equity_usd), _down(m.collateral_usd), _down(m.cross_pnl_usd),
                 _up(m.im_usd), _up(m.mm_usd), _up(m.grid_usd), _up(m.es_usd), _up(m.minimum_usd),
                 _up(m.liquidity_usd), _up(m.cross_im_usd), _up(m.cross_mm_usd))
    meta = msg.meta
    meta.event_time_ms = m.event_time_ms
    meta.publish_time_ms = publish_ms
    meta.source = source
    msg.account_id = m.account_id
    msg.equity_usd.value = texts[0]
    msg.im_usd.value = texts[4]
    msg.mm_usd.value = texts[5]
    msg.grid_margin_usd.value = texts[6]
    msg.es_usd.value = texts[7]
    msg.min_margin_usd.value = texts[8]
    msg.liquidity_addon_usd.value = texts[9]
    msg.state = m.state
    msg.risk_params_version = m.risk_params_version
    msg.account_revision = m.revision
    msg.marks_time_ms = m.marks_time_ms
    msg.marks_fresh = m.marks_fresh
    msg.cross_equity_usd.value = texts[1]
    msg.cross_im_usd.value = texts[10]
    msg.cross_mm_usd.value = texts[11]
    msg.cross_state = m.cross_state
    msg.collateral_value_usd.value = texts[2]
    msg.unrealized_pnl_usd.value = texts[3]
    msg.episode = m.episode
    for j, iso in enumerate(m.isolated):
        item = msg.isolated.add(instrument=iso.instrument, state=iso.state)
        if iso_texts is None:
            item.equity_usd.value = _down(iso.equity_usd)
            item.im_usd.value = _up(iso.im_usd)
            item.mm_usd.value = _up(iso.mm_usd)
        else:
            item.equity_usd.value, item.im_usd.value, item.mm_usd.value = iso_texts[3 * j:3 * j + 3]
        item.size.value = repr(iso.size)
        if iso.liquidation_price_usd is not None:
            item.liquidation_price_usd.value = str(_price(iso.liquidation_price_usd))
    return msg


# The account-level amounts of a MarginState: the first four are credited (rounded down), the rest
# are requirements (rounded up).
_AMOUNTS = ("equity_usd", "cross_equity_usd", "collateral_usd", "cross_pnl_usd", "im_usd", "mm_usd", "grid_usd",
            "es_usd", "minimum_usd", "liquidity_usd", "cross_im_usd", "cross_mm_usd")
_N_DOWN = 4
# Below this many states a batch is encoded one by one (the vectorised rounding costs ~0.1 ms to set up).
_BATCH_MIN = 64


def _price(x: float) -> Decimal:
    return Decimal(repr(x)).quantize(Decimal("0.0001"))


def margin_state(m: AccountMargin, source: str = "margin", publish_ms: int = 0) -> pb.MarginState:
    return _state_fields(pb.MarginState(), m, source, publish_ms)


def margin_state_into(msg: pb.MarginState, m: AccountMargin, source: str = "margin",
                      publish_ms: int = 0) -> pb.MarginState:
    """:func:`margin_state` written into ``msg`` (an empty one, e.g. a field of a response)."""
    return _state_fields(msg, m, source, publish_ms)


def margin_states(margins: Sequence[AccountMargin], source: str = "margin", publish_ms: int = 0) -> list[pb.MarginState]:
    """:func:`margin_state` of many accounts (the same messages): the cents of every amount rounded in
    one vectorised pass (``shared.money``'s arrays: the same arithmetic as the scalar rounding)."""
    return _states_into([pb.MarginState() for _ in margins], margins, source, publish_ms)


def _states_into(msgs: Sequence[pb.MarginState], margins: Sequence[AccountMargin], source: str,
                 publish_ms: int) -> list[pb.MarginState]:
    """:func:`margin_states` written into ``msgs`` (empty messages, e.g. fields of a response), in order."""
    n = len(margins)
    if n < _BATCH_MIN:
        return [_state_fields(msg, m, source, publish_ms) for msg, m in zip(msgs, margins)]
    amounts = np.array([(m.equity_usd, m.cross_equity_usd, m.collateral_usd, m.cross_pnl_usd, m.im_usd, m.mm_usd,
                         m.grid_usd, m.es_usd, m.minimum_usd, m.liquidity_usd, m.cross_im_usd, m.cross_mm_usd)
                        for m in margins], dtype=np.float64).reshape(n, len(_AMOUNTS))
    iso = np.array([(i.equity_usd, i.im_usd, i.mm_usd) for m in margins for i in m.isolated],
                   dtype=np.float64).reshape(-1, 3)
    if not (np.isfinite(amounts).all() and np.isfinite(iso).all()):
        # raises for the bad amount, as one by one
        return [_state_fields(msg, m, source, publish_ms) for msg, m in zip(msgs, margins)]
    texts = _texts(amounts, _N_DOWN)
    iso_texts = _texts(iso, 1)
    width = len(_AMOUNTS)
    out = []
    k = 0
    for i, (msg, m) in enumerate(zip(msgs, margins)):
        n_iso = 3 * len(m.isolated)
        out.append(_state_fields(msg, m, source, publish_ms, texts[i * width:(i + 1) * width],
                                 iso_texts[k:k + n_iso]))
        k += n_iso
    return out


def _texts(amounts: np.ndarray, n_down: int) -> list[str]:
    """Wire strings of a [rows, columns] array of finite USD amounts, row by row: the first ``n_down``
    columns rounded down to the cent (credited), the others up (requirements)."""
    cents = np.empty_like(amounts)
    cents[:, :n_down] = cents_down_array(amounts[:, :n_down])
    cents[:, n_down:] = cents_up_array(amounts[:, n_down:])
    cents += 0.0    # ceil(−0.3) is −0.0: whole cents are integers, and "-0.00" is not one
    if cents.size == 0 or np.abs(cents).max() < _FLOAT_EXACT_CENTS:
        return [f"{x:.2f}" for x in (cents / 100).ravel().tolist()]
    return [cents_text(int(x)) for x in cents.ravel().tolist()]


def margin_call(c: MarginCallEvent, source: str = "margin", publish_ms: int = 0) -> pb.MarginCall:
    m = c.margin
    msg = pb.MarginCall(account_id=m.account_id, state=m.state, previous_state=c.previous_state,
                        risk_params_version=m.risk_params_version, marks_fresh=m.marks_fresh,
                        episode=c.episode, repeat=c.repeat, account_revision=m.revision, cause=int(c.cause))
    _contributions(msg.causes, c.causes)
    msg.meta.event_time_ms = m.event_time_ms
    msg.meta.publish_time_ms = publish_ms
    msg.meta.source = source
    equity, im = usd_down(m.equity_usd), usd_up(m.im_usd)
    msg.equity_usd.value = str(equity)
    msg.im_usd.value = str(im)
    msg.mm_usd.value = usd_up_text(m.mm_usd)
    msg.shortfall_usd.value = str(max(Decimal("0.00"), im - equity))
    msg.cross_im_usd.value = _up(m.cross_im_usd)
    msg.grid_margin_usd.value = _up(m.grid_usd)
    msg.es_usd.value = _up(m.es_usd)
    msg.min_margin_usd.value = _up(m.minimum_usd)
    msg.liquidity_addon_usd.value = _up(m.liquidity_usd)
    msg.marks_time_ms = m.marks_time_ms
    return msg


def _contributions(field, contributions) -> None:
    """Contributions on the wire: equity changes rounded down, IM changes up (the venue's side)."""
    for c in contributions:
        item = field.add(cause=int(c.cause), subject=c.subject, relative_move=c.relative_move)
        item.equity_change_usd.value = usd_down_text(c.equity_change_usd)
        item.im_change_usd.value = usd_up_text(c.im_change_usd)


def explain_response(e: Explanation, publish_ms: int = 0) -> pb.ExplainResponse:
    out = pb.ExplainResponse(worst_historical_scenario=e.worst_historical_scenario,
                             binding_component=e.binding_component)
    _contributions(out.last_change, e.last_change)
    _state_fields(out.margin, e.margin, "margin", publish_ms)
    for p in e.positions:
        item = out.positions.add(instrument=p.instrument, underlying=p.underlying, isolated=p.isolated,
                                 liquidation_price_basis=p.liquidation_price_basis)
        item.loss_in_worst_grid_usd.value = usd_up_text(p.grid_loss_usd)
        item.es_contribution_usd.value = usd_up_text(p.es_contribution_usd)
        item.minimum_usd.value = usd_up_text(p.minimum_usd)
        item.liquidity_usd.value = usd_up_text(p.liquidity_usd)
        item.size.value = repr(p.size)
        item.vol_tenor_factor, item.vol_moneyness = p.vol_tenor_factor, p.vol_moneyness
        item.vol_shock_up, item.vol_shock_down = p.vol_shock_up, p.vol_shock_down
        item.vol_shock_in_worst_grid = p.vol_shock_in_worst_grid
        item.option_contingency_usd.value = usd_up_text(p.option_contingency_usd)
        item.basis_contingency_usd.value = usd_up_text(p.basis_contingency_usd)
        item.liquidation_horizon_days, item.loss_scale = p.liquidation_horizon_days, p.loss_scale
        item.open_interest_share = p.open_interest_share
        item.concentration_usd.value = usd_up_text(p.concentration_usd)
        item.depth_curve_used, item.liquidity_distance_bps = p.depth_curve_used, p.liquidity_distance_bps
        item.depth_covered_share, item.half_spread_bps = p.depth_covered_share, p.half_spread_bps
        if p.liquidation_price_usd is not None:
            item.liquidation_price_usd.value = str(_price(p.liquidation_price_usd))
    for u in e.underlyings:
        item = out.underlyings.add(underlying=u.underlying, worst_price_shock=u.worst_price_shock,
                                   worst_vol_shock=u.worst_vol_shock)
        item.grid_margin_usd.value = usd_up_text(u.grid_margin_usd)
        item.es_contribution_usd.value = usd_up_text(u.es_contribution_usd)
    return out


def published_from_proto(msg: pb.MarginState) -> tuple[str, int, float, float, int, int]:
    """(account, state, equity USD, IM USD, publish time, episode) of a state this service published before."""
    try:
        equity = float(Decimal(msg.equity_usd.value or "0"))
        im = float(Decimal(msg.im_usd.value or "0"))
    except ArithmeticError:
        raise Rejected("bad_decimal", f"margin state of {msg.account_id!r} has a malformed amount") from None
    if not (math.isfinite(equity) and math.isfinite(im)):
        raise Rejected("non_finite", f"margin state of {msg.account_id!r} has a non-finite amount")
    return msg.account_id, int(msg.state), equity, im, int(msg.meta.publish_time_ms), int(msg.episode)


def recheck_response(rechecked, unknown: Sequence[str], symbols: Sequence[str], publish_ms: int) -> pb.RecheckResponse:
    """:class:`~marginflow.margin.application.queries.Rechecked` accounts as a RecheckResponse (margins
    encoded as one batch; reliefs rounded down to the cent: a relief counts toward health)."""
    out = pb.RecheckResponse(unknown_account_ids=list(unknown))
    items = [out.accounts.add() for _ in rechecked]
    _states_into([item.margin for item in items], [r.margin for r in rechecked], "margin", publish_ms)
    for r, item in zip(rechecked, items):
        book = r.book
        for j, (k, size, iso) in enumerate(zip(book.instrument.tolist(), book.size.tolist(),
                                               book.isolated.tolist())):
            pos = item.positions.add(instrument=symbols[k], isolated=bool(iso))
            pos.size.value = repr(size)
            relief = r.relief_usd[j]
            if relief is not None:
                pos.im_relief_usd.value = _down(relief)
    return out


def price_text(x: float) -> str:
    """A price as the wire's decimal string: the shortest decimal that reads back as the same binary
    value, in plain notation (no exponent)."""
    return format(Decimal(repr(x)), "f")


def margin_at_response(margin: AccountMargin, prices, publish_ms: int) -> pb.MarginAtResponse:
    """A :meth:`~marginflow.margin.application.queries.Queries.margin_at` answer as a MarginAtResponse."""
    out = pb.MarginAtResponse()
    margin_state_into(out.margin, margin, publish_ms=publish_ms)
    for p in prices:
        item = out.prices.add(key=p.key, given=p.given, event_time_ms=p.event_time_ms, fresh=p.fresh)
        item.price_usd.value = price_text(p.price_usd)
    return out
