"""The margin engine on the worked market (see conftest): IM against a direct core computation,
states moved by marks, stale marks, isolated vs cross, what-if, explain, liquidation prices."""

from __future__ import annotations

import numpy as np
import pytest

import marginflow.core as core
from marginflow.margin.application import NotReady, UnknownAccount
from marginflow.margin.domain.trades import TradeDelta
from marginflow.margin.domain.health import Health

from margin_unit_helpers import T0, book, mark, risk_version

BTC, ETH, CALL = 0, 1, 2


def test_long_perp_im_is_worst_historical_move_plus_spread(make_engine):
    engine, pub, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    assert pub.states == []                      # nothing before a risk-parameter version
    engine.apply_risk_params(risk_version())
    m = pub.last("a")
    # grid: 10 % × 60,000 = 6,000; tail 0.5 × 20 % = 6,000; ES(99 %, 100 scen.) = worst = 15 % = 9,000;
    # minimum 1 % = 600; liquidity 0.0001 × 60,000 × 1 contract = 6 USD.
    assert m.grid_usd == pytest.approx(6000.0)
    assert m.es_usd == pytest.approx(9000.0)
    assert m.minimum_usd == pytest.approx(600.0)
    assert m.liquidity_usd == pytest.approx(6.0)
    assert m.im_usd == pytest.approx(9006.0)
    assert m.mm_usd == pytest.approx(4503.0)
    assert m.equity_usd == pytest.approx(10000.0)
    assert m.state == Health.HEALTHY and m.marks_fresh


def test_im_equals_a_direct_core_computation_for_many_accounts(make_engine, table):
    engine, pub, _ = make_engine()
    rng = np.random.default_rng(3)
    books = []
    for i in range(50):
        ks = rng.choice(3, size=rng.integers(1, 4), replace=False)
        books.append(book(f"acct{i}", [(int(k), float(rng.choice([-1, 1]) * rng.integers(1, 5)), 100.0,
                                        int(rng.random() < 0.3), 5000.0) for k in ks], {"USDC": 1e5}))
    engine.apply_snapshots(books)
    engine.apply_risk_params(risk_version())
    model = engine.model
    for b in books:
        direct = model.core.what_if(b.instrument, b.size, b.isolated, np.zeros(0, np.int32), np.zeros(0))
        assert engine.get_margin(b.account_id).im_usd == pytest.approx(direct["im"], rel=1e-12)
        assert pub.last(b.account_id).im_usd == pytest.approx(direct["im"], rel=1e-12)


def test_mark_moves_equity_into_margin_call_then_liquidation(make_engine):
    engine, pub, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    engine.apply_marks([mark(BTC, 59000.0, T0 + 1000)])    # equity 9,000 < IM 9,006: 0.07 % short, inside the band
    clock.advance(1000)
    engine.evaluate()
    assert pub.last("a").state == Health.HEALTHY and pub.calls == []   # seen once: not yet confirmed
    engine.apply_marks([mark(BTC, 59000.0, T0 + 2000)])    # a fresh mark 1 s later says the same
    clock.advance(1000)
    engine.evaluate()
    assert pub.last("a").state == Health.MARGIN_CALL
    assert [c.margin.state for c in pub.calls] == [Health.MARGIN_CALL]
    assert pub.calls[0].episode == 1 and not pub.calls[0].repeat
    engine.apply_marks([mark(BTC, 54000.0, T0 + 3000)])    # equity 4,000 < 0.9 × MM 4,503 = 4,052.70: at once
    clock.advance(1000)
    engine.evaluate()
    assert pub.last("a").state == Health.LIQUIDATION
    assert [c.previous_state for c in pub.calls] == [Health.HEALTHY, Health.MARGIN_CALL]
    assert [c.episode for c in pub.calls] == [1, 1]
    engine.apply_marks([mark(BTC, 49000.0, T0 + 4000)])    # equity −1,000: bankrupt, at once
    clock.advance(1000)
    engine.evaluate()
    assert pub.last("a").state == Health.BANKRUPT


def test_stale_marks_never_put_an_account_in_liquidation(make_engine):
    engine, pub, clock = make_engine(mark_max_age_ms=10_000)
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    # BTC-PERP's last mark (a crash) is 60 s behind the newest mark (ETH): stale.
    engine.apply_marks([mark(BTC, 40000.0, T0 + 1000), mark(ETH, 3000.0, T0 + 61_000)])
    clock.advance(1000)
    engine.evaluate()
    m = pub.last("a")
    assert m.equity_usd < 0
    assert not m.marks_fresh
    assert m.state == Health.MARGIN_CALL
    # A fresh mark at the same price liquidates (bankrupt: equity < 0).
    engine.apply_marks([mark(BTC, 40000.0, T0 + 61_000)])
    clock.advance(1000)
    engine.evaluate()
    assert pub.last("a").marks_fresh and pub.last("a").state == Health.BANKRUPT


@pytest.mark.parametrize("size", [1.0, -1.0])
def test_liquidation_price_of_a_perp_gives_equity_equal_to_the_recomputed_mm_when_plugged_back(make_engine, size):
    engine, _, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, size, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    ex = engine.explain("a")
    liq = ex.positions[0].liquidation_price_usd
    # MM = 0.5 × (ES 15 % + liquidity 0.01 %) × notional = 0.07505 × p (4,503 USD at 60,000): it moves with p.
    # long:  p* = (10,000 − 60,000) / (0.07505 − 1) = −50,000 / −0.92495 = 54,056.9761 USD
    # short: p* = (10,000 + 60,000) / (0.07505 + 1) =  70,000 /  1.07505 = 65,113.2505 USD
    # (MM held at 4,503 would give 54,503 / 65,497: the old, wrong quotes.)
    assert liq == pytest.approx(50000.0 / 0.92495 if size > 0 else 70000.0 / 1.07505, rel=1e-12)
    engine.apply_marks([mark(BTC, liq, T0 + 1000)])
    engine.refresh_model()                          # the requirement recomputed at the new mark
    at = engine.get_margin("a")
    assert at.mm_usd == pytest.approx(0.07505 * liq, rel=1e-9)
    assert at.equity_usd == pytest.approx(at.mm_usd, rel=1e-9)


def test_isolated_position_margined_alone_with_its_own_collateral(make_engine):
    engine, pub, clock = make_engine()
    # Cross: 1 ETH long, 2,000 USDC. Isolated: 1 BTC long with 5,000 USDC of its own.
    engine.apply_snapshots([book("a", [(ETH, 1.0, 3000.0, 0, 0.0), (BTC, 1.0, 60000.0, 1, 5000.0)],
                                 {"USDC": 2000.0})])
    engine.apply_risk_params(risk_version())
    m = engine.get_margin("a")
    iso = m.isolated[0]
    # isolated BTC: max(grid1 6,000, ES1 9,000, min 600) + 6 = 9,006 > 5,000 collateral: below MM 4,503? no:
    # 5,000 ≥ 4,503 → margin call, alone.
    assert iso.im_usd == pytest.approx(9006.0)
    assert iso.equity_usd == pytest.approx(5000.0)
    assert iso.state == Health.MARGIN_CALL
    # cross ETH long: ES = 15 % × 3,000 = 450, + 0.3 spread; equity 2,000 → healthy
    assert m.cross_im_usd == pytest.approx(450.3)
    assert m.cross_state == Health.HEALTHY
    assert m.state == Health.MARGIN_CALL            # the worst of cross and isolated
    assert m.im_usd == pytest.approx(9006.0 + 450.3)
    # The same positions all cross: the BTC loss is covered by the pooled collateral, healthy.
    engine.apply_snapshots([book("b", [(ETH, 1.0, 3000.0, 0, 0.0), (BTC, 1.0, 60000.0, 0, 0.0)],
                                 {"USDC": 7000.0})])
    cross = engine.get_margin("b")
    assert cross.isolated == ()
    # BTC and ETH move oppositely in the historical set: ES = 15 % × (60,000 − 3,000) = 8,550, + 6.3 spread
    assert cross.im_usd == pytest.approx(8556.3)
    assert cross.im_usd < m.im_usd                 # the hedge counts only when margined together


def test_incremental_update_on_a_position_change(make_engine):
    engine, pub, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    engine.apply_snapshots([book("a", [(BTC, 2.0, 60000.0, 0, 0.0)], {"USDC": 10000.0}, revision=2)])
    m = pub.last("a")
    assert m.revision == 2
    assert m.im_usd == pytest.approx(2 * 9000.0 + 12.0)
    assert m.state == Health.MARGIN_CALL
    # An older revision arriving late changes nothing.
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0}, revision=1)])
    assert engine.get_margin("a").revision == 2
    # The vectorised full path agrees with the incremental one.
    engine.full_recalculation()
    assert engine.cross_im[engine.row_of["a"]] == pytest.approx(18012.0)


def test_grown_position_list_rebuilds_the_flat_book(make_engine):
    engine, pub, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0}),
                            book("b", [(ETH, 1.0, 3000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0), (ETH, 10.0, 3000.0, 0, 0.0)],
                                 {"USDC": 10000.0}, revision=2)])
    engine.apply_marks([mark(ETH, 2900.0, T0 + 1000)])
    clock.advance(10)
    engine.evaluate()
    assert engine.flat.n_accounts == 2 and engine.flat.size.shape[0] == 3
    assert pub.last("a").equity_usd == pytest.approx(10000.0 - 1000.0)
    # b moved by 100 USD = 1 % of its equity: not material (> 1 % needed), not republished
    assert pub.last("b").equity_usd == pytest.approx(10000.0)
    assert engine.get_margin("b").equity_usd == pytest.approx(10000.0 - 100.0)
    engine.apply_marks([mark(ETH, 2890.0, T0 + 2000)])
    clock.advance(10)
    engine.evaluate()
    assert pub.last("b").equity_usd == pytest.approx(10000.0 - 110.0)


def test_what_if_adds_the_trade_and_keeps_equity_at_the_mark(make_engine):
    engine, _, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    before, after = engine.what_if("a", [TradeDelta(BTC, -1.0)])   # closes the long at the mark
    assert before.im_usd == pytest.approx(9006.0)
    assert after.im_usd == pytest.approx(0.0)
    assert after.equity_usd == pytest.approx(10000.0)
    _, worse = engine.what_if("a", [TradeDelta(BTC, 1.0, price=61000.0)])  # buys above the mark: −1,000
    assert worse.equity_usd == pytest.approx(9000.0)
    assert worse.im_usd == pytest.approx(2 * 9000.0 + 12.0)
    direct = engine.model.core.what_if(np.array([BTC], np.int32), np.array([1.0]), np.array([0], np.uint8),
                                       np.array([BTC], np.int32), np.array([1.0]))
    assert worse.im_usd == pytest.approx(direct["im"])
    with pytest.raises(UnknownAccount):
        engine.what_if("nobody", [TradeDelta(BTC, 1.0)])
    with pytest.raises(ValueError):
        engine.what_if("a", [TradeDelta(BTC, float("nan"))])


def test_explain_contributions_sum_and_binding_component(make_engine):
    engine, _, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0), (ETH, 2.0, 3000.0, 0, 0.0),
                                       (CALL, -1.0, 3000.0, 0, 0.0)], {"USDC": 50000.0})])
    engine.apply_risk_params(risk_version())
    ex = engine.explain("a")
    m = ex.margin
    assert sum(p.es_contribution_usd for p in ex.positions) == pytest.approx(m.es_usd)
    assert sum(p.grid_loss_usd for p in ex.positions) == pytest.approx(m.grid_usd)
    assert sum(u.grid_margin_usd for u in ex.underlyings) == pytest.approx(m.grid_usd)
    assert ex.binding_component == max((("grid", m.grid_usd), ("es", m.es_usd), ("min_margin", m.minimum_usd)),
                                       key=lambda x: x[1])[0]
    assert 0 <= ex.worst_historical_scenario < 100
    call = [p for p in ex.positions if p.instrument == "BTC-C-60000"][0]
    assert call.liquidation_price_basis == "underlying"
    btc = [u for u in ex.underlyings if u.underlying == "BTC"][0]
    assert btc.worst_price_shock in (-0.2, -0.1, 0.0, 0.1, 0.2)


def test_not_ready_and_unknown_account(make_engine):
    engine, _, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    with pytest.raises(NotReady):
        engine.get_margin("a")
    engine.apply_risk_params(risk_version())
    with pytest.raises(UnknownAccount):
        engine.get_margin("zz")
    assert engine.apply_risk_params(risk_version(1)) is False     # not newer: ignored


@pytest.mark.parametrize("impl", [core.reference, core.ccore], ids=["twin", "c"])
def test_c_core_and_twin_give_the_same_margins(make_engine, impl):
    if impl is None:
        pytest.skip("C core not built")
    engine, pub, _ = make_engine(core_impl=impl)
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0), (CALL, -2.0, 3000.0, 0, 0.0)],
                                 {"USDC": 30000.0, "BTC": 0.1})])
    engine.apply_risk_params(risk_version())
    m = pub.last("a")
    ref_engine, ref_pub, _ = make_engine(core_impl=core.reference)
    ref_engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0), (CALL, -2.0, 3000.0, 0, 0.0)],
                                     {"USDC": 30000.0, "BTC": 0.1})])
    ref_engine.apply_risk_params(risk_version())
    assert m.im_usd == pytest.approx(ref_pub.last("a").im_usd, rel=1e-9)
    assert m.equity_usd == pytest.approx(ref_pub.last("a").equity_usd, rel=1e-12)


def test_every_call_says_what_moved_the_account(make_engine):
    from marginflow.margin.domain.results import ChangeCause

    engine, pub, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    # BTC-PERP from 60,000 to 54,000: 1 contract × 1 BTC × −6,000 = −6,000 USD of equity; beyond the band
    engine.apply_marks([mark(BTC, 54000.0, T0 + 1000)])
    clock.advance(1000)
    engine.evaluate()
    call = pub.calls[-1]
    assert call.margin.state == Health.LIQUIDATION and call.cause == ChangeCause.MARK_MOVE
    moves = [c for c in call.causes if c.subject == "BTC-PERP"]
    assert len(moves) == 1 and moves[0].equity_change_usd == pytest.approx(-6000.0)
    assert moves[0].relative_move == pytest.approx(-0.1)
    assert engine.explain("a").last_change == call.causes


def test_a_call_after_a_trade_names_the_position_change(make_engine):
    from marginflow.margin.domain.results import ChangeCause

    engine, pub, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    assert pub.calls == []
    # the account doubles its position: IM 9,006 → 18,012 against equity 10,000 → margin call at once
    engine.apply_snapshots([book("a", [(BTC, 2.0, 60000.0, 0, 0.0)], {"USDC": 10000.0}, revision=2)])
    call = pub.calls[-1]
    assert call.margin.state == Health.MARGIN_CALL and call.cause == ChangeCause.POSITION_CHANGE
    change = [c for c in call.causes if c.cause == ChangeCause.POSITION_CHANGE][0]
    assert change.im_change_usd == pytest.approx(9006.0)
