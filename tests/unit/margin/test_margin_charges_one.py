"""One account's contingency charges without the batch's arrays (what a query margins): bit for bit the
batch's, alone and as a row among other accounts, and the model's whole result of one account bit for bit
its row in a batch, on the C core and on its numpy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from marginflow.core import ccore, reference
from marginflow.margin.application import EngineConfig
from marginflow.margin.application.models import build_model
from marginflow.margin.domain.contingency import ContingencyRates, ContingencyTable
from marginflow.margin.domain.market import MarketState
from marginflow.margin.service import instrument_table
from marginflow.shared.universe import parse_universe

from margin_unit_helpers import ASSETS, T0, risk_version

# Two underlyings, each with a perpetual, two dated futures (offsets between them pay the basis charge)
# and calls and puts on shared strikes (netted per strike); contract sizes other than 1.
CHAINS = parse_universe("""
[[underlying]]
symbol = "BTC"
index_price_usd = 60000.0
annual_vol = 0.8
[[underlying]]
symbol = "ETH"
index_price_usd = 3000.0
annual_vol = 0.9
[[instrument]]
symbol = "BTC-PERP"
kind = "perpetual"
underlying = "BTC"
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
[[instrument]]
symbol = "ETH-PERP"
kind = "perpetual"
underlying = "ETH"
contract_size = 0.1
tick_size_usd = 0.05
lot_size = 0.01
[[future_series]]
underlying = "BTC"
expiries = ["2026-02-27T08:00:00Z", "2026-03-27T08:00:00Z", "2026-06-26T08:00:00Z"]
contract_size = 1.0
tick_size_usd = 0.5
lot_size = 0.001
[[future_series]]
underlying = "ETH"
expiries = ["2026-02-27T08:00:00Z"]
contract_size = 0.1
tick_size_usd = 0.05
lot_size = 0.01
[[option_chain]]
underlying = "BTC"
expiries = ["2026-02-27T08:00:00Z", "2026-03-27T08:00:00Z"]
moneyness = [0.9, 1.0]
strike_step_usd = 1000.0
contract_size = 0.1
tick_size_usd = 0.5
lot_size = 0.01
[[option_chain]]
underlying = "ETH"
expiries = ["2026-02-27T08:00:00Z"]
moneyness = [1.0]
strike_step_usd = 100.0
contract_size = 1.0
tick_size_usd = 0.05
lot_size = 0.01
""", T0)

SIZES = [-3.0, -1.0, -0.7, -0.5, 0.0, 0.3, 0.5, 1.1, 2.0]
BOOKS = st.lists(st.lists(st.tuples(st.integers(0, 63), st.sampled_from(SIZES), st.booleans()), max_size=10),
                 min_size=1, max_size=6)
RATES = st.sampled_from([(0.01, 0.01), (0.02, 0.0), (0.0, 0.005), (0.0, 0.0), (0.013, 0.0071)])


def _bits(a) -> bytes:
    """The exact bits (−0.0 and 0.0 told apart), after the dtype the batch gives."""
    return np.ascontiguousarray(a).tobytes()


def _flat(books, n_instruments):
    books = [[(k % n_instruments, q, i) for k, q, i in b] for b in books]
    indptr = np.cumsum([0] + [len(b) for b in books]).astype(np.int64)
    rows = [p for b in books for p in b]
    return (indptr, np.array([p[0] for p in rows], np.int32), np.array([p[1] for p in rows], np.float64),
            np.array([p[2] for p in rows], np.uint8))


def _table(rates, index=(60000.0, 3000.0)):
    t = instrument_table(CHAINS)
    return t, ContingencyTable(t.kind, t.underlying, t.strike, t.expiry_ms, t.contract_size, np.array(index),
                               ContingencyRates(*rates))


def test_the_chains_have_what_the_charges_need():
    t, ct = _table((0.01, 0.01))
    assert ct.n_groups < int(np.sum(ct.is_option))           # calls and puts share strikes
    assert int(np.sum(ct.is_linear)) >= 5 and len(t.underlyings) == 2


@settings(max_examples=150, deadline=None)
@given(books=BOOKS, rates=RATES)
def test_one_account_charges_are_the_batch_charges_bit_for_bit(books, rates):
    t, ct = _table(rates)
    indptr, k, q, iso = _flat(books, t.n)
    batch = ct.charges_of(ct.netting(indptr, k, q, iso))
    for a, (lo, hi) in enumerate(zip(indptr[:-1].tolist(), indptr[1:].tolist())):
        one = ct.charges_one(k[lo:hi], q[lo:hi], iso[lo:hi])
        alone = ct.charges_of(ct.netting(np.array([0, hi - lo], np.int64), k[lo:hi], q[lo:hi], iso[lo:hi]))
        for want in (alone, batch):
            rows = slice(0, 1) if want is alone else slice(a, a + 1)
            positions = slice(0, hi - lo) if want is alone else slice(lo, hi)
            for name in ("cross", "cross_option", "cross_basis", "isolated_per_account"):
                got, expected = getattr(one, name), getattr(want, name)[rows]
                assert got.dtype == expected.dtype and _bits(got) == _bits(expected), (name, got, expected)
            assert _bits(one.isolated) == _bits(want.isolated[positions])
        assert not one.position_option.any() and not one.position_basis.any()
        assert one.position_option.shape == one.position_basis.shape == (hi - lo,)


def test_one_account_charges_take_the_sums_in_the_batch_order():
    # Sums that floats make depend on the order of the additions: two charges below half an ulp of a third,
    # which comes last in key order (0.9 + 0.9 + 1.2e16 is 1.2e16 + 2, 1.2e16 + 0.9 + 0.9 is 1.2e16); the
    # positions listed in every order.
    t, ct = _table((0.01, 0.01))
    by_group: dict[int, int] = {}
    for k in np.flatnonzero(ct.is_option).tolist():
        by_group.setdefault(int(ct.group[k]), k)
    groups = sorted(by_group)[:3]
    per_unit = [float(ct.option_usd_per_unit[by_group[g]] * ct.units[by_group[g]]) for g in groups]  # USD per contract
    options = [(by_group[g], -charge / usd) for g, charge, usd in zip(groups, (0.9, 0.9, 1.2e16), per_unit)]
    btc = [k for k in np.flatnonzero(ct.is_linear).tolist() if ct.underlying[k] == 0]
    assert len(btc) >= 4
    usd = float(ct.basis_usd_per_unit[btc[0]])
    # three long expiries (the offset is their sum, in instrument order) against one larger short
    linear = [(btc[0], 0.9 / usd), (btc[1], 0.9 / usd), (btc[2], 1.2e16 / usd), (btc[3], -2.4e16 / usd)]
    for positions in (options, linear):
        for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]):
            rows = [positions[i] for i in order] + positions[3:]
            k = np.array([r[0] for r in rows], np.int32)
            q = np.array([r[1] for r in rows])
            iso = np.zeros(len(rows), np.uint8)
            one = ct.charges_one(k, q, iso)
            batch = ct.charges_of(ct.netting(np.array([0, len(rows)], np.int64), k, q, iso))
            assert _bits(one.cross) == _bits(batch.cross), (order, one.cross, batch.cross)
    naive = 0.0
    for charge in (1.2e16, 0.9, 0.9):
        naive += charge
    assert naive != 0.9 + 0.9 + 1.2e16     # the order did matter


@pytest.mark.parametrize("impl", ["c", "twin"])
@settings(max_examples=40, deadline=None)
@given(books=BOOKS, rates=RATES)
def test_a_model_margins_one_account_as_its_row_of_a_batch_bit_for_bit(impl, books, rates):
    if impl == "c" and ccore is None:
        pytest.fail("the C core is not built: run `make core-build`")
    core = ccore if impl == "c" else reference
    t = instrument_table(CHAINS)
    cfg = EngineConfig(assets=ASSETS, bracket_floors_usd=(0.0, 1e5), bracket_rates=(0.01, 0.02), n_threads=1,
                       contingency=ContingencyRates(*rates))
    market = MarketState(t, {"BTC": 60000.0, "ETH": 3000.0}, {"BTC": 0.6, "ETH": 0.8}, 100.0, T0)
    model = build_model(t, market, cfg, core, risk_version(), T0).core
    indptr, k, q, iso = _flat(books, t.n)
    batch = model.compute(indptr, k, q, iso, n_threads=1)
    for a, (lo, hi) in enumerate(zip(indptr[:-1].tolist(), indptr[1:].tolist())):
        one = model.compute(np.array([0, hi - lo], np.int64), k[lo:hi], q[lo:hi], iso[lo:hi], n_threads=1)
        assert set(one) == set(batch)
        for name, values in batch.items():
            values = np.asarray(values)
            got = np.asarray(one[name])
            expected = values[lo:hi] if name == "isolated_im" else values[a:a + 1]
            assert got.dtype == expected.dtype and _bits(got) == _bits(expected), (name, got, expected)
