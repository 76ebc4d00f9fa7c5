"""Pure domain: health states and their boundaries, haircuts and equity, liquidation prices, scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marginflow.margin.domain.equity import HaircutPolicy, account_equity, asset_values
from marginflow.margin.domain.health import Health, MarginResult, classify, classify_many
from marginflow.pricing import black76
from marginflow.margin.domain.liquidation import linear_liquidation_price, option_liquidation_forward
from marginflow.margin.domain.scenarios import build_scenarios
from marginflow.shared.errors import Rejected

from margin_unit_helpers import risk_version


# ---- states (USD; IM 1,000, MM 500)
@pytest.mark.parametrize("equity, fresh, expected", [
    (1000.00, True, Health.HEALTHY),          # equity = IM: healthy
    (999.99, True, Health.MARGIN_CALL),
    (500.00, True, Health.MARGIN_CALL),       # equity = MM: margin call, not yet liquidation
    (499.99, True, Health.LIQUIDATION),
    (0.00, True, Health.LIQUIDATION),         # zero equity: liquidation, not bankrupt
    (-0.01, True, Health.BANKRUPT),
    (499.99, False, Health.MARGIN_CALL),      # stale marks cap the state at margin call
    (-50.0, False, Health.MARGIN_CALL),
    (1200.0, False, Health.HEALTHY),
])
def test_state_boundaries(equity, fresh, expected):
    assert classify(equity, 1000.0, 500.0, fresh) == expected
    r = MarginResult(equity, 1000.0, 500.0, fresh)
    assert r.state == expected
    assert r.is_liquidatable() == (expected in (Health.LIQUIDATION, Health.BANKRUPT))
    assert classify_many(np.array([equity]), np.array([1000.0]), np.array([500.0]), np.array([fresh]))[0] == expected


def test_states_compare_the_rounded_wire_amounts():
    # IM 1,000.001 goes out as 1,000.01; equity 1,000.009 as 1,000.00 → margin call, as the numbers show
    assert classify(1000.009, 1000.001, 500.0) == Health.MARGIN_CALL
    assert classify(1000.01, 1000.001, 500.0) == Health.HEALTHY


def test_margin_ratio_by_cross_multiplication():
    r = MarginResult(equity_usd=750.0, im_usd=1000.0, mm_usd=500.0)
    assert r.margin_ratio_at_least(3, 2)        # 750 / 500 = 1.5
    assert not r.margin_ratio_at_least(151, 100)
    assert MarginResult(10.0, 0.0, 0.0).margin_ratio_at_least(1000, 1)   # MM = 0: no division by zero
    assert r.shortfall_usd() == pytest.approx(250.0)


def test_vectorised_states_match_the_scalar_rule():
    rng = np.random.default_rng(5)
    eq = np.round(rng.uniform(-200, 1200, 2000), 2)
    eq[:4] = [1000.0, 500.0, 0.0, -0.01]
    fresh = rng.random(2000) < 0.8
    got = classify_many(eq, np.full(2000, 1000.0), np.full(2000, 500.0), fresh)
    assert got.tolist() == [classify(e, 1000.0, 500.0, f) for e, f in zip(eq, fresh)]


# ---- haircuts and equity
def test_haircut_is_z_sigma_sqrt_horizon_capped():
    p = HaircutPolicy(z=2.33, cap=0.5, horizon_seconds=3 * 86400.0)
    # 2.33 × 0.60 × √(3/365) = 0.12674...
    assert p.haircut(0.60) == pytest.approx(2.33 * 0.60 * math.sqrt(3 / 365))
    assert p.haircut(5.0) == 0.5                  # capped
    assert p.haircut(None) == 0.5                 # unknown σ: the cap
    assert p.haircut(float("nan")) == 0.5


def test_equity_worked_example():
    # 1,000 USDC + 2,000 USDT + 0.5 BTC at 60,000 with a 10 % haircut (σ_m chosen for it)
    # + long 2 ETH-PERP from 3,000 marked at 2,900 (−200) + isolated BTC-PERP (excluded from cross).
    policy = HaircutPolicy(z=1.0, cap=0.5, horizon_seconds=365 * 86400.0)   # h = σ
    values, haircut = asset_values(["USDC", "USDT", "BTC", "XYZ"], frozenset({"USDC", "USDT"}),
                                   {"BTC": 60000.0}, {"BTC": 0.10}, policy)
    assert values.tolist() == pytest.approx([1.0, 1.0, 54000.0, 0.0])
    assert haircut.tolist() == pytest.approx([0.0, 0.0, 0.10, 0.5])
    equity = account_equity(np.array([1000.0, 2000.0, 0.5, 7.0]), values, np.array([2.0, 1.0]), np.array([1.0, 1.0]),
                            np.array([2900.0, 50000.0]), np.array([3000.0, 60000.0]), np.array([0, 1], np.uint8))
    assert equity == pytest.approx(1000 + 2000 + 27000 - 200)


# ---- liquidation prices (MM recomputed at the price)
@pytest.mark.parametrize("size", [2.0, -2.0])
def test_linear_liquidation_price_plugged_back_meets_the_recomputed_mm(size):
    equity, mm, mark, cs = 5000.0, 1200.0, 3000.0, 1.0
    p = linear_liquidation_price(equity, mm, size, cs, mark)
    # MM fraction m = 1,200 / (2 × 3,000) = 20 %;
    # long:  p* = (5,000 − 6,000) / (0.2·2 − 2) = −1,000 / −1.6 = 625 USD
    # short: p* = (5,000 + 6,000) / (0.2·2 + 2) = 11,000 / 2.4 = 4,583.33 USD
    assert p == pytest.approx(625.0 if size > 0 else 11000.0 / 2.4)
    assert equity + size * cs * (p - mark) == pytest.approx(mm * p / mark)    # requirement at p: m·|q|·p
    assert (p < mark) == (size > 0)


def test_linear_liquidation_price_holds_other_positions_mm_fixed():
    # 1 long with MM 300 of its own and 900 from other positions: 5,000 + (p − 3,000) = 900 + 0.1·p
    # ⇒ p* = (5,000 − 3,000 − 900) / (0.1 − 1) < 0 → none; with 4 long: (5,000 − 12,000 − 900)/(0.4 − 4) = 2,194.44
    assert linear_liquidation_price(5000.0, 1200.0, 1.0, 1.0, 3000.0, mm_other_usd=900.0) is None
    p = linear_liquidation_price(5000.0, 2100.0, 4.0, 1.0, 3000.0, mm_other_usd=900.0)
    assert p == pytest.approx(7900.0 / 3.6)
    assert 5000.0 + 4.0 * (p - 3000.0) == pytest.approx(900.0 + 1200.0 * p / 3000.0)


def test_no_liquidation_price_when_none_exists():
    assert linear_liquidation_price(100000.0, 10.0, 1.0, 1.0, 3000.0) is None   # long, equity above MM even at 0
    assert linear_liquidation_price(5000.0, 10.0, 0.0, 1.0, 3000.0) is None
    assert linear_liquidation_price(float("nan"), 10.0, 1.0, 1.0, 3000.0) is None


@pytest.mark.parametrize("is_call, size", [(True, -1.0), (False, -1.0), (True, 1.0)])
def test_option_liquidation_forward_plugged_back(is_call, size):
    equity, mm, forward, strike, years, vol = 3000.0, 1000.0, 60000.0, 60000.0, 0.1, 0.6
    f = option_liquidation_forward(equity, mm, size, 1.0, is_call, forward, strike, years, vol)
    if is_call and size > 0:
        # a long call loses at most its premium (~4,800): equity never falls to MM → none... unless premium > 2,000
        v0 = black76(forward, strike, years, vol, True)
        assert (f is None) == (v0 < equity - mm)
        return
    assert f is not None
    v0 = black76(forward, strike, years, vol, is_call)
    v1 = black76(f, strike, years, vol, is_call)
    assert equity + size * (v1 - v0) == pytest.approx(mm, abs=1e-6)


# ---- scenarios from a risk-parameter version
def test_scenario_rows_grid_then_tails_then_history():
    s = build_scenarios(risk_version(), ["BTC", "ETH"])
    assert s.n_grid == 3 and s.tail_weights.tolist() == [0.5, 0.5] and s.n_hist == 100
    assert s.price_shock.shape == (3 + 2 + 100, 2)
    assert s.price_shock[:5, 0].tolist() == pytest.approx([-0.1, 0.0, 0.1, -0.2, 0.2])
    assert s.price_shock[5, 0] == pytest.approx(-0.15) and s.price_shock[5, 1] == pytest.approx(0.15)
    assert s.horizon_years == pytest.approx(1 / 365)


def test_a_version_without_every_underlying_is_rejected():
    v = risk_version()
    with pytest.raises(Rejected) as err:
        build_scenarios(v, ["BTC", "ETH", "SOL"])
    assert err.value.code == "bad_risk_params" and "SOL" in err.value.detail


def test_valuate_chunked_equals_one_pass():
    """The sliced evaluation (queries run between slices) gives exactly the one-pass valuation, with
    either implementation."""
    from marginflow.core import reference
    from marginflow.margin.domain.valuation import MarketView, valuate, valuate_chunked

    rng = np.random.default_rng(3)
    n, K, A = 400, 7, 2
    lengths = rng.integers(0, 9, n)
    lengths[5] = 40   # one account longer than a slice
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    nnz = int(indptr[-1])
    owner = np.repeat(np.arange(n), lengths)
    instrument = rng.integers(0, K, nnz).astype(np.int32)
    size = rng.normal(0, 2, nnz) * (rng.random(nnz) > 0.1)
    entry = rng.uniform(50, 150, nnz)
    isolated = (rng.random(nnz) < 0.3).astype(np.uint8)
    iso_coll = np.where(isolated == 1, rng.uniform(0, 100, nnz), 0.0)
    iso_im = np.where(isolated == 1, rng.uniform(0, 150, nnz), 0.0)
    balances = rng.uniform(0, 500, (n, A)) * (rng.random((n, A)) < 0.7)
    cross_im = rng.uniform(0, 400, n)
    mark_time = np.array([1000, 1000, 0, 990, 1000, 500, 1000], dtype=np.int64)
    market = MarketView(rng.uniform(50, 150, K), np.ones(K), mark_time, mark_time >= 900, np.array([1.0, 90.0]),
                        np.array([True, False]), np.array([np.iinfo(np.int64).max, 800], dtype=np.int64))
    args = (owner, instrument, size, entry, isolated, iso_coll, iso_im, balances, cross_im, 0.5, market)
    one = valuate(*args, indptr=indptr)
    import marginflow.core as mcore

    for impl in (reference, mcore):
        pauses = []
        sliced = valuate_chunked(*args[1:], indptr=indptr, chunk_positions=17, pause=lambda: pauses.append(1),
                                 core=impl)
        assert len(pauses) > 10
        for name in one.__dataclass_fields__:
            a, b = getattr(one, name), getattr(sliced, name)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)


# ---- the general root finder (scenario margin at shifted prices)
def test_scenario_liquidation_price_equals_the_closed_form_for_a_linear_position():
    # short 3 at 3,000, equity 1,000, MM 5 % of notional: closed form 10,000 / 3.15 = 3,174.603 USD
    from marginflow.margin.domain.liquidation import scenario_liquidation_price
    p = scenario_liquidation_price(lambda x: 1000.0 - 3.0 * (x - 3000.0), lambda x: 0.05 * 3.0 * x, 3000.0,
                                   direction=1)
    assert p == pytest.approx(10000.0 / 3.15, rel=1e-10)
    assert scenario_liquidation_price(lambda x: 1000.0 - 3.0 * (x - 3000.0), lambda x: 0.05 * 3.0 * x, 3000.0,
                                      direction=-1) is None       # a short never liquidates on a fall


def test_scenario_liquidation_price_none_when_fully_collateralised():
    from marginflow.margin.domain.liquidation import scenario_liquidation_price
    # long 1 at 100 with 1,000 of collateral: equity ≥ 900 > MM 0.1·p for every p in (0, 10⁶]
    assert scenario_liquidation_price(lambda x: 1000.0 + (x - 100.0), lambda x: 0.1 * x, 100.0) is None


def test_option_liquidation_forward_with_the_requirement_recomputed():
    # short 1 call, requirement = 10 % of the forward (a stand-in for the model at shifted marks)
    equity, forward, strike, years, vol = 9000.0, 60000.0, 60000.0, 0.1, 0.6
    f = option_liquidation_forward(equity, 6000.0, -1.0, 1.0, True, forward, strike, years, vol,
                                   requirement_at=lambda x: 0.1 * x)
    v0 = black76(forward, strike, years, vol, True)
    assert f is not None and f > forward
    assert equity - (black76(f, strike, years, vol, True) - v0) == pytest.approx(0.1 * f, abs=1e-6)
