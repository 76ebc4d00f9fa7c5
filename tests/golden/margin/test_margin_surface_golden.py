"""Worked examples of the surface-aware vol shocks and the contingency charges, with their arithmetic.

Market: BTC index 60,000 USD, contracts of 1 BTC, as of 2026-01-01T00:00Z; options expiring in exactly
15, 30 and 90 days (ACT/365). Every model-level example runs on both margin cores (C and numpy twin).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from marginflow.core import ccore, reference
from marginflow.margin.application import EngineConfig
from marginflow.margin.application.models import build_model
from marginflow.margin.domain.contingency import ContingencyRates, ContingencyTable
from marginflow.margin.domain.market import MarketState
from marginflow.margin.domain.scenarios import GridSpec, RiskVersion
from marginflow.margin.service import instrument_table
from marginflow.pricing import black76
from marginflow.shared.universe import parse_universe
from marginflow.shared.volsurface import DERIBIT, VolSurfaceShock, instrument_vol_shocks, tenor_factor

T0 = 1_767_225_600_000     # 2026-01-01T00:00Z
DAY_MS = 86_400_000

UNIVERSE = """
[[underlying]]
symbol = "BTC"
index_price_usd = 60000.0
annual_vol = 0.8
""" + "".join(f"""
[[instrument]]
symbol = "{sym}"
kind = "{kind}"
underlying = "BTC"
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
{extra}
""" for sym, kind, extra in [
    ("BTC-PERP", "perpetual", ""),
    ("BTC-F-30D", "future", 'expiry = "2026-01-31T00:00:00Z"'),
    ("BTC-F-90D", "future", 'expiry = "2026-04-01T00:00:00Z"'),
    ("BTC-C-60000-15D", "call", 'strike_usd = 60000.0\nexpiry = "2026-01-16T00:00:00Z"'),
    ("BTC-P-60000-15D", "put", 'strike_usd = 60000.0\nexpiry = "2026-01-16T00:00:00Z"'),
    ("BTC-C-60000-90D", "call", 'strike_usd = 60000.0\nexpiry = "2026-04-01T00:00:00Z"'),
    ("BTC-C-60000-30D", "call", 'strike_usd = 60000.0\nexpiry = "2026-01-31T00:00:00Z"'),
    ("BTC-P-48000-30D", "put", 'strike_usd = 48000.0\nexpiry = "2026-01-31T00:00:00Z"'),
])
PERP, F30, F90, C15, P15, C90, C30, P30 = range(8)
ASSETS = ("USDC", "USDT", "BTC")
VOL_STATES = (-0.25, 0.0, 0.5)      # Deribit's vol range: down 25 %, up 50 %
PRICE_SHOCKS = (-0.1, 0.0, 0.1)
HORIZON_S = 86_400.0                # the grid's horizon: one day


@pytest.fixture(params=["c", "python"], ids=lambda n: f"impl={n}")
def impl(request):
    module = {"c": ccore, "python": reference}[request.param]
    if module is None:
        pytest.fail("the C core is not built: run `make core-build`")
    return module


@pytest.fixture
def table():
    return instrument_table(parse_universe(UNIVERSE, T0))


def version(surface: VolSurfaceShock) -> RiskVersion:
    grid = GridSpec("BTC", PRICE_SHOCKS, VOL_STATES, (-0.2, 0.2), (0.0, 0.0), (0.5, 0.5), HORIZON_S, surface)
    hist = np.linspace(-0.08, 0.08, 40)[:, None]
    return RiskVersion(1, T0, T0, {"BTC": 0.8}, {"BTC": 60000.0}, {"BTC": grid}, ("BTC",), hist, 0.99)


def model_of(table, core, surface=DERIBIT, rates=ContingencyRates(), iv=0.8):
    market = MarketState(table, {"BTC": 60000.0}, {"BTC": iv}, 100.0, T0)
    cfg = EngineConfig(assets=ASSETS, bracket_floors_usd=(0.0,), bracket_rates=(0.01,), n_threads=1,
                       contingency=rates)
    recorder = _Recorder(core)
    return build_model(table, market, cfg, recorder, version(surface), T0), recorder.risk


class _Recorder:
    """The core module, keeping the risk arrays build_model asked for."""

    def __init__(self, core) -> None:
        self.core = core
        self.risk = None

    def risk_arrays(self, *args, **kwargs):
        self.risk = self.core.risk_arrays(*args, **kwargs)
        return self.risk

    def __getattr__(self, name):
        return getattr(self.core, name)


def row(price: float, vol: float) -> int:
    """Grid row of (price shock, vol state): price outer, vol inner."""
    return PRICE_SHOCKS.index(price) * len(VOL_STATES) + VOL_STATES.index(vol)


# ---------------------------------------------------------------- tenor: Deribit's (30/days)^power
def test_a_15_day_option_gets_the_vol_shock_up_times_2_to_the_0_3():
    # 15 days < 30: power 0.30. f = (30/15)^0.30 = 2^0.3 = e^(0.3 · 0.693147) = e^0.207944 = 1.231144
    # vol shock up = 0.5 · 1.231144 = 0.615572 (relative: σ' = σ · 1.615572); down −0.25 · f = −0.307786
    f = tenor_factor(np.array([15 / 365]), DERIBIT)[0]
    assert f == pytest.approx(1.231144, abs=1e-6)
    s = instrument_vol_shocks(np.zeros((3, 1)), np.array(VOL_STATES)[:, None], np.array([True]), np.array([0]),
                              [DERIBIT], np.array([60000.0]), np.array([60000.0]), np.array([15 / 365]),
                              np.array([0.8]))
    assert s.vol_shock[2, 0] == pytest.approx(0.5 * 2 ** 0.3, rel=1e-12)
    assert s.vol_shock[2, 0] == pytest.approx(0.6156, abs=1e-4)
    assert s.vol_shock[0, 0] == pytest.approx(-0.25 * 2 ** 0.3, rel=1e-12)
    assert s.vol_shock[1, 0] == 0.0


def test_a_90_day_option_gets_the_vol_shock_up_times_a_third_to_the_0_13():
    # 90 days ≥ 30: power 0.13. f = (30/90)^0.13 = e^(−0.13 · 1.098612) = e^−0.142820 = 0.866910
    # vol shock up = 0.5 · 0.866910 = 0.433455: a long-dated vol moves less than the 30-day one
    f = tenor_factor(np.array([90 / 365]), DERIBIT)[0]
    assert f == pytest.approx(0.866910, abs=1e-6)
    assert 0.5 * f == pytest.approx(0.5 * (30 / 90) ** 0.13, rel=1e-12)
    assert 0.5 * f == pytest.approx(0.433455, abs=1e-6)


def test_risk_arrays_reprice_each_option_at_its_own_vol_shock(table, impl):
    model, risk = model_of(table, impl)
    h = HORIZON_S / 86_400 / 365
    up15, up90 = 1.0 + 0.5 * 2 ** 0.3, 1.0 + 0.5 * (1 / 3) ** 0.13
    # R = V(F, K, T − h, σ · (1 + shock)) − V(F, K, T, σ), at an unchanged price (row (0, up))
    r15 = black76(60000.0, 60000.0, 15 / 365 - h, 0.8 * up15, True) - black76(60000.0, 60000.0, 15 / 365, 0.8, True)
    r90 = black76(60000.0, 60000.0, 90 / 365 - h, 0.8 * up90, True) - black76(60000.0, 60000.0, 90 / 365, 0.8, True)
    assert risk[C15, row(0.0, 0.5)] == pytest.approx(r15, rel=1e-9)
    assert risk[C90, row(0.0, 0.5)] == pytest.approx(r90, rel=1e-9)
    # the grid stays a grid: every instrument of BTC moves by the same price shock in a row
    assert risk[PERP, row(-0.1, 0.5)] == pytest.approx(-6000.0)
    assert risk[F90, row(0.1, -0.25)] == pytest.approx(6000.0)
    assert model.surface_of(C15, row(0.0, 0.5))[:4] == pytest.approx((2 ** 0.3, 0.0, 0.5 * 2 ** 0.3,
                                                                      -0.25 * 2 ** 0.3))


def test_the_minimum_vol_for_the_shock_up_lifts_a_low_vol():
    # 30 days: f = 1. σ = 0.2: σ · (1 + 0.5) = 0.30 < 0.50 (the minimum) → σ' = 0.50, shock = 0.5/0.2 − 1 = 1.5;
    # the down state is not floored: 0.2 · 0.75 = 0.15
    s = instrument_vol_shocks(np.zeros((3, 1)), np.array(VOL_STATES)[:, None], np.array([True]), np.array([0]),
                              [DERIBIT], np.array([60000.0]), np.array([60000.0]), np.array([30 / 365]),
                              np.array([0.2]))
    assert s.vol_shock[2, 0] == pytest.approx(1.5, rel=1e-12)
    assert s.vol_shock[0, 0] == pytest.approx(-0.25, rel=1e-12)


# ---------------------------------------------------------------- skew: vol up with price down, OTM puts more
def test_skew_shock_raises_vol_in_a_down_move_more_for_an_otm_put():
    surface = VolSurfaceShock(30.0, 0.30, 0.13, 1.0, 0.0, skew_shock=1.0, put_wing=0.5)
    years = 30 / 365
    # σ√T = 0.8 · √(30/365) = 0.8 · 0.286691 = 0.229353; the put strike one σ√T below the forward:
    # K = 60,000 · e^−0.229353 → m = ln(F/K)/(σ√T) = 1
    k_put = 60000.0 * math.exp(-0.8 * math.sqrt(years))
    p = np.array([-0.1, 0.0, 0.1])[:, None]
    s = instrument_vol_shocks(p, np.zeros((3, 1)), np.array([True, True]), np.array([0, 0]), [surface],
                              np.array([60000.0, 60000.0]), np.array([60000.0, k_put]), np.array([years, years]),
                              np.array([0.8, 0.8]))
    # down 10 %: d = −ln(0.9) = 0.105361. ATM (m = 0): +0.105361; OTM put (m = 1): 0.105361 · (1 + 0.5) = 0.158041
    assert s.moneyness[1] == pytest.approx(1.0, rel=1e-12)
    assert s.vol_shock[0, 0] == pytest.approx(-math.log(0.9), rel=1e-12)
    assert s.vol_shock[0, 1] == pytest.approx(0.158041, abs=1e-6)
    # unchanged price or a rally: no skew shock (vol never falls on the skew term)
    assert s.vol_shock[1].tolist() == [0.0, 0.0] and s.vol_shock[2].tolist() == [0.0, 0.0]


def test_linear_instruments_and_an_inactive_surface_keep_the_grid_vol_states(table, impl):
    model, risk = model_of(table, impl, surface=VolSurfaceShock())
    assert np.all(model.tenor_factor == 1.0)
    assert model.vol_shock[row(0.0, 0.5), C15] == 0.5
    assert model.vol_shock[row(0.0, 0.5), PERP] == 0.0


# ---------------------------------------------------------------- contingency: net short options per strike
def charges(table, positions, rates=ContingencyRates(0.01, 0.01)):
    ct = ContingencyTable(table.kind, table.underlying, table.strike, table.expiry_ms, table.contract_size,
                          np.array([60000.0]), rates)
    k = np.array([p[0] for p in positions], dtype=np.int32)
    q = np.array([p[1] for p in positions], dtype=np.float64)
    iso = np.array([p[2] if len(p) > 2 else 0 for p in positions], dtype=np.uint8)
    return ct.charges(np.array([0, len(positions)], dtype=np.int64), k, q, iso)


def test_a_net_short_straddle_pays_the_option_contingency_on_both_legs(table):
    # short 2 calls + short 2 puts at 60,000 (15 days): net −4 BTC at the strike
    # → 4 · 0.01 · 60,000 = 2,400 USD; each leg's share: 2/4 → 1,200 USD
    c = charges(table, [(C15, -2.0), (P15, -2.0)])
    assert c.cross_option[0] == pytest.approx(2400.0)
    assert c.position_option.tolist() == pytest.approx([1200.0, 1200.0])
    assert c.cross_basis[0] == 0.0


def test_deribit_example_call_plus_10_put_minus_20_is_net_short_10(table):
    # Deribit: call +10 and put −20 at strike X → net short 10 → 10 · 0.01 BTC = 0.1 BTC = 6,000 USD,
    # all of it on the short put
    c = charges(table, [(C15, 10.0), (P15, -20.0)])
    assert c.cross_option[0] == pytest.approx(6000.0)
    assert c.position_option.tolist() == pytest.approx([0.0, 6000.0])
    # a covered strike (call +2, put −2) and a different expiry at the same strike do not net
    assert charges(table, [(C15, 2.0), (P15, -2.0)]).cross_option[0] == 0.0
    assert charges(table, [(C90, 2.0), (P15, -2.0)]).cross_option[0] == pytest.approx(1200.0)


def test_an_isolated_short_option_pays_alone(table):
    # isolated short put 1 BTC: 1 · 0.01 · 60,000 = 600 USD on its own IM, not netted with the cross call
    c = charges(table, [(C15, 1.0), (P15, -1.0, 1)])
    assert c.isolated.tolist() == pytest.approx([0.0, 600.0])
    assert c.cross_option[0] == 0.0


# ---------------------------------------------------------------- contingency: basis of offsetting expiries
def test_a_calendar_spread_pays_the_basis_charge(table):
    # long 100 BTC in the 30-day future, short 100 BTC in the 90-day one: offset min(100, 100) = 100 BTC
    # → 100 · 0.01 · 60,000 = 60,000 USD (Deribit's "1 % of 100 BTC"); each leg 100/200 → 30,000 USD
    c = charges(table, [(F30, 100.0), (F90, -100.0)])
    assert c.cross_basis[0] == pytest.approx(60000.0)
    assert c.position_basis.tolist() == pytest.approx([30000.0, 30000.0])
    # perpetual long 3 vs future short 1: offset 1 → 600 USD; shares 3/4 and 1/4 → 450 and 150
    c = charges(table, [(PERP, 3.0), (F30, -1.0)])
    assert c.cross_basis[0] == pytest.approx(600.0)
    assert c.position_basis.tolist() == pytest.approx([450.0, 150.0])
    # one expiry in two rows is no spread; two longs offset nothing
    assert charges(table, [(F30, 2.0), (F30, -1.0)]).cross_basis[0] == 0.0
    assert charges(table, [(F30, 2.0), (F90, 1.0)]).cross_basis[0] == 0.0


def test_contingency_is_added_to_the_cross_im_and_shown_per_position(table, impl):
    rates = ContingencyRates(0.01, 0.01)
    model, _ = model_of(table, impl, rates=rates)
    plain, _ = model_of(table, impl)
    k = np.array([C15, P15, F30, F90, P30], dtype=np.int32)
    q = np.array([-2.0, -2.0, 100.0, -100.0, -1.0])
    iso = np.array([0, 0, 0, 0, 1], dtype=np.uint8)
    out = model.core.compute(np.array([0, 5], np.int64), k, q, iso, n_threads=1)
    base = plain.core.compute(np.array([0, 5], np.int64), k, q, iso, n_threads=1)
    # cross: straddle 2,400 + calendar 60,000; isolated short put 600 on its own IM
    assert out["cross_im"][0] == pytest.approx(base["cross_im"][0] + 62400.0, rel=1e-12)
    assert out["isolated_im"][4] == pytest.approx(base["isolated_im"][4] + 600.0, rel=1e-12)
    assert out["im"][0] == pytest.approx(base["im"][0] + 63000.0, rel=1e-12)
    assert out["mm"][0] == pytest.approx(0.5 * out["im"][0], rel=1e-15)
    assert out["contingency"][0] == pytest.approx(2400.0) and out["basis"][0] == pytest.approx(60000.0)
    ex = model.core.explain(k, q, iso)
    assert ex["im"] == pytest.approx(out["im"][0], rel=1e-12)
    assert ex["position_contingency"].tolist() == pytest.approx([1200.0, 1200.0, 0.0, 0.0, 600.0])
    assert ex["position_basis"].tolist() == pytest.approx([0.0, 0.0, 30000.0, 30000.0, 0.0])
    # a what-if that closes the short put leg of the straddle: net −2 at the strike → 1,200 USD
    wi = model.core.what_if(k, q, iso, np.array([P15], np.int32), np.array([2.0]))
    assert wi["contingency"] == pytest.approx(1200.0)


# ---------------------------------------------------------------- liquidation horizon and concentration
def test_a_position_ten_times_what_trades_in_its_horizon_has_its_horizon_and_losses_scaled(table, impl):
    from marginflow.margin.domain.horizon import HorizonRules, HorizonTable, VenueActivity

    rules = HorizonRules(participation=0.1, max_horizon_multiple=20.0, concentration_threshold=0.05,
                         concentration_rate=0.1)
    # The perpetual trades 1,000 contracts in 24 h and 7,700 in 7 days (1,100/day): ADV = min(1,000, 1,100)
    # = 1,000/day. Open interest 10,000 contracts.
    K = table.n
    activity = VenueActivity(np.full(K, 1000.0), np.full(K, 7700.0), np.full(K, 10000.0))
    h = HorizonTable(rules, activity, np.full(K, 60000.0), HORIZON_S)
    # grid horizon h = 1 day; a close-out trades 0.1 · 1,000 = 100 contracts/day, i.e. 100 in the horizon;
    # a position of 1,000 contracts is 10× that: t = 1,000 / 100 = 10 days, h_eff = max(1, 10) = 10 days,
    # scale = √(10 / 1) = 3.162278; OI share 1,000 / 10,000 = 0.10, 0.05 beyond the threshold:
    # add-on = 0.1 · 0.05 · 1,000 · 60,000 = 300,000 USD.
    ph = h.positions(np.array([PERP, PERP]), np.array([-1000.0, 50.0]))
    assert ph.horizon_days.tolist() == pytest.approx([10.0, 1.0])     # 50 contracts close within the day
    assert ph.scale.tolist() == pytest.approx([math.sqrt(10.0), 1.0])
    assert ph.oi_share.tolist() == pytest.approx([0.1, 0.005])
    assert ph.concentration.tolist() == pytest.approx([300000.0, 0.0])
    # capped: 100,000 contracts would take 1,000 days; h_eff = 20 × 1 day, scale √20
    assert h.positions(np.array([PERP]), np.array([1e5])).scale[0] == pytest.approx(math.sqrt(20.0))

    # Through the model: the position's grid and ES are √10 × those at h, minimum and liquidity unchanged,
    # and the add-on joins the cross IM.
    market = MarketState(table, {"BTC": 60000.0}, {"BTC": 0.8}, 100.0, T0)
    market.venue_activity = lambda _wall_ms: activity
    cfg = EngineConfig(assets=ASSETS, bracket_floors_usd=(0.0,), bracket_rates=(0.01,), n_threads=1, horizon=rules)
    model = build_model(table, market, cfg, impl, version(DERIBIT), T0)
    plain, _ = model_of(table, impl)
    csr = (np.array([0, 1], np.int64), np.array([PERP], np.int32), np.array([-1000.0]), np.zeros(1, np.uint8))
    got, base = model.core.compute(*csr, n_threads=1), plain.core.compute(*csr, n_threads=1)
    assert got["grid"][0] == pytest.approx(math.sqrt(10.0) * base["grid"][0], rel=1e-12)
    assert got["es"][0] == pytest.approx(math.sqrt(10.0) * base["es"][0], rel=1e-12)
    assert got["minimum"][0] == base["minimum"][0] and got["liquidity"][0] == base["liquidity"][0]
    assert got["concentration"][0] == pytest.approx(300000.0)
    assert got["cross_im"][0] == pytest.approx(max(got["grid"][0], got["es"][0], got["minimum"][0])
                                               + got["liquidity"][0] + 300000.0, rel=1e-12)
    ex = model.core.explain(csr[1], csr[2], csr[3])
    assert ex["position_horizon_days"][0] == pytest.approx(10.0)
    assert ex["position_scale"][0] == pytest.approx(math.sqrt(10.0))
    assert ex["position_concentration"][0] == pytest.approx(300000.0)
    assert ex["im"] == pytest.approx(got["im"][0], rel=1e-12)
    # isolated, the same position pays its add-on on its own IM and its scenario term √10-fold
    iso = model.core.compute(csr[0], csr[1], csr[2], np.ones(1, np.uint8), n_threads=1)
    iso_base = plain.core.compute(csr[0], csr[1], csr[2], np.ones(1, np.uint8), n_threads=1)
    term = iso_base["isolated_im"][0] - base["liquidity"][0]          # max(|q|·grid₁, |q|·ES₁) > minimum here
    assert term > base["minimum"][0]
    assert iso["isolated_im"][0] == pytest.approx(math.sqrt(10.0) * term + base["liquidity"][0] + 300000.0,
                                                  rel=1e-12)
