"""Worked examples (tests/golden/core/core_golden.json, computed by hand) on both implementations."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from marginflow.core import ccore, reference

GOLDEN = json.loads((pathlib.Path(__file__).parent / "core_golden.json").read_text())


@pytest.fixture(params=["c", "python"], ids=lambda n: f"impl={n}")
def impl(request):
    if request.param == "c" and ccore is None:
        pytest.fail("the C core is not built: run `make core-build`")
    return ccore if request.param == "c" else reference


def f64(x):
    return np.asarray(x, dtype=np.float64)


def test_black76_closed_form_and_put_call_parity(impl):
    g = GOLDEN["black76"]
    kind = np.asarray(g["kind"], np.int8)
    f, k, t, v = f64(g["forward"]), f64(g["strike"]), f64(g["expiry_years"]), f64(g["implied_vol"])
    value = impl.black76_price(kind, f, k, t, v)
    np.testing.assert_allclose(value, g["value"], rtol=0, atol=g["tolerance"])
    calls, puts = value[kind == 2], value[kind == 3]
    np.testing.assert_allclose(calls - puts, (f - k)[kind == 2], rtol=0, atol=1e-12 * 100)   # C - P = F - K
    # linear instruments are worth their forward
    np.testing.assert_array_equal(impl.black76_price(np.array([0, 1], np.int8), f64([5.0, 7.0]), f64([0, 0]),
                                                     f64([0, 1]), f64([0, 0])), [5.0, 7.0])


def test_put_call_parity_on_random_options(impl):
    rng = np.random.default_rng(0)
    n = 500
    f, k = rng.uniform(1, 1e5, n), rng.uniform(1, 1e5, n)
    t, v = rng.uniform(0, 2, n), rng.uniform(0, 3, n)
    c = impl.black76_price(np.full(n, 2, np.int8), f, k, t, v)
    p = impl.black76_price(np.full(n, 3, np.int8), f, k, t, v)
    assert np.all(np.abs((c - p) - (f - k)) <= 1e-9 * np.maximum(f, k))
    assert np.all(c >= np.maximum(f - k, 0) - 1e-9 * f) and np.all(c <= f)


def _perp_model(impl, g, floor=None, rate=None):
    shocks = f64(g["price_shock"])[:, None]
    risk = impl.risk_arrays(np.zeros(1, np.int8), np.zeros(1, np.int32), f64([g["forward"]]), f64([0.0]), f64([0.0]),
                            f64([0.0]), f64([1.0]), shocks, np.zeros_like(shocks))
    np.testing.assert_allclose(risk[0], g["forward"] * shocks[:, 0], rtol=1e-15)
    return impl.MarginModel(risk, np.zeros(1, np.int32), g.get("n_grid", 0), f64(g.get("tail_weights", [])),
                            g.get("es_level", 0.975), f64([g["forward"]]), f64([g["forward"]]),
                            f64([g.get("half_spread", 0.0)]), f64([g.get("depth", 1.0)]),
                            f64([floor if floor is not None else g.get("bracket_floor", [0.0])]),
                            f64([rate if rate is not None else g.get("bracket_rate", [0.0])]), g.get("mm_factor", 1.0))


def test_linear_perp_under_the_16_percent_grid(impl):
    g = GOLDEN["perp_grid"]
    m = _perp_model(impl, g)
    accounts = g["accounts"]
    indptr = np.arange(len(accounts) + 1, dtype=np.int64)
    out = m.compute(indptr, np.zeros(len(accounts), np.int32), f64([a["size"] for a in accounts]),
                    np.array([a["isolated"] for a in accounts], np.uint8))
    for key in ("im", "mm", "cross_im", "grid", "es", "var", "minimum", "liquidity", "worst"):
        np.testing.assert_allclose(out[key], [a[key] for a in accounts], rtol=1e-12, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(out["isolated_im"], [a["isolated_im"] for a in accounts], rtol=1e-12)
    e = m.explain(np.zeros(1, np.int32), f64([10.0]), np.zeros(1, np.uint8))
    assert e["underlying_grid_scenario"].tolist() == [0]        # the -16 % row binds for a long
    assert e["es_scenarios"].tolist() == [2, 0]
    np.testing.assert_allclose(e["position_worst_loss"], [100.0])


def test_expected_shortfall_of_a_known_distribution(impl):
    g = GOLDEN["expected_shortfall"]
    base = {"price_shock": [-(h + 1) / 1000 for h in range(100)], "forward": 100.0}
    for level, es, var in zip(g["levels"], g["es"], g["var"]):
        m = _perp_model(impl, dict(base, es_level=level))
        out = m.compute(np.array([0, 1], np.int64), np.zeros(1, np.int32), f64([10.0]), np.zeros(1, np.uint8))
        np.testing.assert_allclose(out["es"], [es], rtol=1e-12)
        np.testing.assert_allclose(out["var"], [var], rtol=1e-12)
        assert out["worst"].tolist() == [g["worst"]]


def test_n_worst_is_not_fooled_by_rounding(impl):
    """(1 - 0.975) * 1000 = 25.000000000000004 in floating point: m must be 25, not 26."""
    m = _perp_model(impl, {"price_shock": list(np.linspace(-0.1, 0.1, 1000)), "forward": 100.0, "es_level": 0.975})
    assert m.n_worst == 25


def test_tiered_brackets(impl):
    g = GOLDEN["brackets"]
    # a perp with no price risk, so IM = minimum: notional = size * forward with forward 1
    m = _perp_model(impl, {"price_shock": [0.0], "forward": 1.0}, g["bracket_floor"], g["bracket_rate"])
    n = len(g["notional"])
    out = m.compute(np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int32), f64(g["notional"]), np.zeros(n, np.uint8))
    np.testing.assert_allclose(out["minimum"], g["minimum"], rtol=1e-12)
    np.testing.assert_allclose(out["im"], g["minimum"], rtol=1e-12)


def test_option_time_decay_to_intrinsic(impl):
    g = GOLDEN["option_decay"]
    ps, vs = f64(g["price_shock"])[:, None], f64(g["vol_shock"])[:, None]
    risk = impl.risk_arrays(np.array([2], np.int8), np.zeros(1, np.int32), f64([100.0]), f64([100.0]),
                            f64([1 / 365]), f64([0.5]), f64([2.0]), ps, vs, horizon_years=1 / 365)
    np.testing.assert_allclose(risk[0], g["risk"], rtol=0, atol=g["tolerance"])
