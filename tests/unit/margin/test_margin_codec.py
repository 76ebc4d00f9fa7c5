"""Wire boundary: validation of marks, snapshots and risk params; rounding in the venue's favour; settings."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from marginflow.api.account.v1 import account_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.adapters import codec
from marginflow.margin.domain.results import AccountMargin, MarginCallEvent
from marginflow.margin.settings import MarginSettings
from marginflow.shared.config import ConfigError, load
from marginflow.shared.errors import Rejected

from margin_unit_helpers import ASSETS, T0

ASSET_INDEX = {a: i for i, a in enumerate(ASSETS)}


def _margin(**kw) -> AccountMargin:
    base = dict(account_id="a", revision=3, risk_params_version=7, event_time_ms=T0, equity_usd=1234.567,
                im_usd=1000.001, mm_usd=500.0004, cross_equity_usd=1234.567, cross_im_usd=1000.001,
                cross_mm_usd=500.0004, cross_state=1, grid_usd=10.001, es_usd=1000.001, minimum_usd=1.0,
                liquidity_usd=0.004, state=1, marks_fresh=True, marks_time_ms=T0, collateral_usd=1234.567,
                cross_pnl_usd=-0.001)
    base.update(kw)
    return AccountMargin(**base)


def test_rounding_is_in_the_venues_favour():
    msg = codec.margin_state(_margin())
    assert msg.equity_usd.value == "1234.56"       # equity down
    assert msg.im_usd.value == "1000.01"           # requirements up
    assert msg.mm_usd.value == "500.01"
    assert msg.liquidity_addon_usd.value == "0.01"
    assert msg.unrealized_pnl_usd.value == "-0.01"  # a loss rounds to the larger loss
    neg = codec.margin_state(_margin(equity_usd=-0.001))
    assert neg.equity_usd.value == "-0.01"


def test_margin_call_shortfall_rounded_up():
    call = codec.margin_call(MarginCallEvent(_margin(equity_usd=900.005, state=2), previous_state=1))
    assert Decimal(call.shortfall_usd.value) == Decimal("1000.01") - Decimal("900.00")
    assert call.previous_state == 1 and call.risk_params_version == 7


def test_margin_call_carries_the_parts_of_its_requirement_rounded_up():
    call = codec.margin_call(MarginCallEvent(_margin(state=2, grid_usd=10.001, es_usd=990.004, minimum_usd=1.0,
                                                     liquidity_usd=0.004, cross_im_usd=990.008), previous_state=1))
    assert (call.cross_im_usd.value, call.grid_margin_usd.value, call.es_usd.value, call.min_margin_usd.value,
            call.liquidity_addon_usd.value) == ("990.01", "10.01", "990.01", "1.00", "0.01")
    assert call.marks_time_ms == T0


def test_marks_validated(table):
    ok = marketdata_pb2.Mark(instrument="BTC-PERP", underlying="BTC", index_price=60000, mark_price=60010,
                             half_spread_frac=0.0001, depth_contracts=20)
    ok.meta.event_time_ms = T0
    m = codec.mark_from_proto(ok, table)
    assert m.instrument == 0 and m.mark_price == 60010
    idx = marketdata_pb2.Mark(instrument="index:ETH", underlying="ETH", index_price=3000)
    idx.meta.event_time_ms = T0
    assert codec.mark_from_proto(idx, table).instrument is None
    for change, code in (({"instrument": "DOGE-PERP"}, "unknown_instrument"),
                         ({"mark_price": float("nan")}, "non_finite"),
                         ({"mark_price": -1.0}, "negative_value"),
                         ({"half_spread_frac": 5.0}, "implausible")):
        bad = marketdata_pb2.Mark()
        bad.CopyFrom(ok)
        for k, v in change.items():
            setattr(bad, k, v)
        with pytest.raises(Rejected) as err:
            codec.mark_from_proto(bad, table)
        assert err.value.code == code


def _snapshot(**pos) -> account_pb2.AccountSnapshot:
    s = account_pb2.AccountSnapshot(account_id="a", revision=4)
    s.balances.add(asset="USDC").amount.value = "100.5"
    p = s.positions.add(instrument=pos.get("instrument", "BTC-PERP"), mode=pos.get("mode", 1))
    p.size.value = pos.get("size", "-0.5")
    p.entry_price.value = "60000"
    p.isolated_collateral_usd.value = pos.get("coll", "0")
    return s


def test_snapshot_decoded_and_validated(table):
    b = codec.book_from_proto(_snapshot(), table, ASSET_INDEX, "a")
    assert b.revision == 4 and b.size.tolist() == [-0.5] and b.balances[0] == 100.5 and b.isolated.tolist() == [0]
    iso = codec.book_from_proto(_snapshot(mode=2, coll="250"), table, ASSET_INDEX, "a")
    assert iso.isolated.tolist() == [1] and iso.isolated_collateral.tolist() == [250.0]
    assert codec.book_from_proto(_snapshot(size="0"), table, ASSET_INDEX).n == 0   # flat positions dropped
    for kw, code in (({"instrument": "XRP-PERP"}, "unknown_instrument"), ({"size": "abc"}, "bad_decimal"),
                     ({"size": "NaN"}, "non_finite"), ({"size": "1e20"}, "implausible")):
        with pytest.raises(Rejected) as err:
            codec.book_from_proto(_snapshot(**kw), table, ASSET_INDEX)
        assert err.value.code == code
    with pytest.raises(Rejected) as err:
        codec.book_from_proto(_snapshot(), table, ASSET_INDEX, "other")
    assert err.value.code == "key_mismatch"


def test_risk_params_validated():
    p = risk_pb2.RiskParams(version=3, es_confidence=0.99)
    p.underlyings.add(underlying="BTC", sigma_margin=0.5, index_price=60000)
    p.grids.add(underlying="BTC", price_shocks=[-0.1, 0, 0.1], vol_shocks=[0.0], horizon_seconds=86400)
    p.historical.underlyings.extend(["BTC"])
    p.historical.count = 2
    p.historical.returns.extend([0.1, -0.1])
    v = codec.risk_params_from_proto(p)
    assert v.version == 3 and v.hist_returns.shape == (2, 1) and v.sigma_margin == {"BTC": 0.5}
    p.historical.count = 3
    with pytest.raises(Rejected):
        codec.risk_params_from_proto(p)
    p.historical.count = 2
    p.grids[0].price_shocks[0] = float("inf")
    with pytest.raises(Rejected) as err:
        codec.risk_params_from_proto(p)
    assert err.value.code == "non_finite"


def test_settings_defaults_and_bad_values_name_the_variable():
    s = load(MarginSettings, {})
    assert (s.grpc_port, s.metrics_port, s.mm_factor) == (50054, 9104, 0.5)
    assert s.collateral_assets(["BTC", "ETH"]) == ("USDC", "USDT", "BTC", "ETH")
    for env, name in (({"MF_MARGIN_MM_FACTOR": "1.5"}, "MF_MARGIN_MM_FACTOR"),
                      ({"MF_MARGIN_GRPC_PORT": "x"}, "MF_MARGIN_GRPC_PORT"),
                      ({"MF_MARGIN_BRACKET_RATES": "0.1"}, "MF_MARGIN_BRACKET_RATES")):
        with pytest.raises(ConfigError) as err:
            load(MarginSettings, env)
        assert name in str(err.value)
