"""Queries answered from the last computation of an account (the evaluation's arrays, or the account's
own recomputation since): the same numbers as margining it alone, and never stale — a trade, a new
risk version and an evaluation on moved marks each change the answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from marginflow.margin.adapters import codec
from marginflow.margin.domain.trades import TradeDelta

from margin_unit_helpers import T0, book, mark, risk_version

BTC, ETH, CALL = 0, 1, 2


def _alone(engine, account_id):
    """The account margined alone at the market now (what queries did before answering from evaluations)."""
    q = engine.queries
    b, model = q.require(account_id)
    return q.reported(q.margin_of(q.single(b, model), model, liquidation_prices=True))


def _engine_with_accounts(make_engine, n=40, seed=7):
    engine, pub, clock = make_engine()
    rng = np.random.default_rng(seed)
    books = []
    for i in range(n):
        ks = rng.choice(3, size=rng.integers(1, 4), replace=False)
        books.append(book(f"acct{i}", [(int(k), float(rng.choice([-1, 1]) * rng.integers(1, 5)),
                                        float(rng.uniform(0.9, 1.1)) * (60000.0 if k == BTC else 3000.0),
                                        int(rng.random() < 0.4), float(rng.uniform(0, 20000)))
                                       for k in ks], {"USDC": float(rng.uniform(1e3, 1e5)), "BTC": 0.1}))
    engine.apply_snapshots(books)
    engine.apply_risk_params(risk_version())
    return engine, pub, clock, books


def test_answers_from_the_evaluation_equal_the_account_margined_alone_on_the_wire(make_engine):
    engine, _, clock, books = _engine_with_accounts(make_engine)
    engine.apply_marks([mark(BTC, 58000.0, T0 + 1000), mark(CALL, 2500.0, T0 + 1000, index=58000.0, iv=0.55)])
    clock.advance(1000)
    engine.evaluate()
    with_iso_price = 0
    for b in books:
        assert engine.queries._latest(engine.row_of[b.account_id], engine.accounts.book(b.account_id),
                                      engine.model) is engine.queries.evaluated
        answer = engine.get_margin(b.account_id)
        alone = _alone(engine, b.account_id)
        assert (codec.margin_state(answer, publish_ms=1).SerializeToString()
                == codec.margin_state(alone, publish_ms=1).SerializeToString())
        with_iso_price += sum(iso.liquidation_price_usd is not None for iso in answer.isolated)
        before, _after = engine.what_if(b.account_id, [TradeDelta(ETH, 1.0)])
        assert dataclasses.replace(before, isolated=()) == dataclasses.replace(alone, isolated=())
    assert with_iso_price > 5      # the comparison covered liquidation prices, options among them


def test_a_trade_changes_the_answer_at_once(make_engine):
    engine, _, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 1, 20000.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    first = engine.get_margin("a")
    assert first.revision == 1 and first.im_usd == pytest.approx(9006.0)
    engine.apply_snapshots([book("a", [(BTC, 2.0, 60000.0, 1, 20000.0)], {"USDC": 10000.0}, revision=2)])
    second = engine.get_margin("a")          # no evaluation in between
    assert second.revision == 2 and second.im_usd == pytest.approx(2 * 9000.0 + 12.0)
    assert second.isolated[0].liquidation_price_usd != first.isolated[0].liquidation_price_usd
    assert second == _alone(engine, "a")
    # the next evaluation supersedes the account's own recomputation
    engine.apply_marks([mark(BTC, 59000.0, T0 + 1000)])
    clock.advance(1000)
    engine.evaluate()
    third = engine.get_margin("a")
    assert third.revision == 2 and third.equity_usd == pytest.approx(second.equity_usd - 2000.0)
    assert third == _alone(engine, "a")


def test_a_new_risk_version_changes_the_answer(make_engine):
    engine, _, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version(1))
    assert engine.get_margin("a").risk_params_version == 1
    # the historical moves twice as wide: ES 15 % → 30 % of the notional
    wider = dataclasses.replace(risk_version(2), hist_returns=risk_version(2).hist_returns * 2)
    engine.apply_risk_params(wider)
    m = engine.get_margin("a")
    assert m.risk_params_version == 2
    assert m.es_usd == pytest.approx(2 * 9000.0)
    assert m == _alone(engine, "a")


def test_an_evaluation_on_moved_marks_changes_the_answer_and_its_liquidation_prices(make_engine):
    engine, _, clock = make_engine()
    engine.apply_snapshots([book("a", [(CALL, -1.0, 3000.0, 1, 20000.0), (BTC, 1.0, 60000.0, 1, 20000.0)],
                                 {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    first = engine.get_margin("a")
    assert engine.get_margin("a") is first          # the same evaluation: the answer built once
    engine.apply_marks([mark(BTC, 59000.0, T0 + 1000), mark(CALL, 2600.0, T0 + 1000, index=59000.0, iv=0.5)])
    # Until the next evaluation the answer is the last evaluation's (never older than it) ...
    assert engine.get_margin("a") == first
    clock.advance(1000)
    engine.evaluate()
    moved = engine.get_margin("a")
    # ... and after it, the new marks: equity, and the liquidation prices of both isolated positions
    assert moved.equity_usd == pytest.approx(first.equity_usd - 1000.0 + 400.0)
    assert moved.event_time_ms == T0 + 1000
    for a, b in zip(first.isolated, moved.isolated):
        assert a.liquidation_price_usd != b.liquidation_price_usd
    assert moved == _alone(engine, "a")


def test_what_if_values_before_and_after_at_the_same_marks(make_engine):
    engine, _, clock = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    engine.apply_marks([mark(BTC, 59000.0, T0 + 1000)])      # not evaluated yet
    before, after = engine.what_if("a", [TradeDelta(BTC, -1.0)])
    # closed at the marks the account was last valued at (60,000): the P&L is 0 on both sides
    assert before.equity_usd == pytest.approx(10000.0)
    assert after.equity_usd == pytest.approx(10000.0) and after.im_usd == pytest.approx(0.0)
    clock.advance(1000)
    engine.evaluate()
    before, after = engine.what_if("a", [TradeDelta(BTC, -1.0)])
    assert before.equity_usd == pytest.approx(9000.0) and after.equity_usd == pytest.approx(9000.0)


def test_an_account_evaluated_with_another_book_or_model_is_margined_alone(make_engine):
    engine, _, _ = make_engine()
    engine.apply_snapshots([book("a", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 10000.0})])
    engine.apply_risk_params(risk_version())
    q = engine.queries
    row = engine.row_of["a"]
    q.incremental = {}
    stale = dataclasses.replace(q.evaluated, stamps=q.evaluated.stamps - 1)
    q.publish_evaluation(stale)                    # as if evaluated before this book arrived
    assert q._latest(row, engine.accounts.book("a"), engine.model) is None
    assert engine.get_margin("a") == _alone(engine, "a")
    current = dataclasses.replace(stale, stamps=engine.accounts.stamp[:stale.stamps.shape[0]].copy())
    q.publish_evaluation(current)
    assert q._latest(row, engine.accounts.book("a"), engine.model) is current   # the same book: answered from it
    assert q._latest(row, dataclasses.replace(engine.accounts.book("a")), engine.model) is None   # another object
    q.publish_evaluation(dataclasses.replace(current, model=object()))
    assert q._latest(row, engine.accounts.book("a"), engine.model) is None   # another model (a version being applied)
    assert engine.get_margin("a").im_usd == pytest.approx(9006.0)


def test_states_built_in_one_batch_equal_those_built_one_by_one(make_engine):
    from marginflow.margin.application.results import account_margin, account_margins

    engine, pub, _, books = _engine_with_accounts(make_engine, n=60, seed=11)
    ev = engine.queries.evaluated
    n = ev.stamps.shape[0]
    rows_books = engine.accounts.rows[:n]
    rows = np.arange(n)[::-1].copy()                     # any order
    states = (rows % 4 + 1).astype(np.int8)
    episodes = (rows % 3).tolist()
    batch = account_margins(engine.instruments, engine.config.mm_factor, rows_books, ev.valuation, rows, ev.flat,
                            ev.model, ev.market.event_ms, ev.parts, states, episodes)
    for i, row in enumerate(rows.tolist()):
        parts = tuple(float(p[row]) for p in ev.parts)
        one = account_margin(engine.instruments, engine.config.mm_factor, rows_books[row], ev.valuation, row, ev.flat,
                             ev.model, ev.market.event_ms, parts, state=int(states[i]), episode=episodes[i])
        assert batch[i] == one
    assert sum(len(m.isolated) for m in batch) > 10
    # and the first publication (every account at once) is what the one-by-one build gives
    for b in books:
        assert pub.last(b.account_id) == dataclasses.replace(
            engine.get_margin(b.account_id), isolated=tuple(dataclasses.replace(i, liquidation_price_usd=None)
                                                            for i in engine.get_margin(b.account_id).isolated))


def test_recheck_of_many_accounts_equals_each_margined_alone_and_reliefs_equal_what_ifs(make_engine):
    engine, _pub, _clock = make_engine()
    books = [book("multi", [(BTC, 1.0, 60000.0, 0, 0.0), (ETH, -4.0, 3000.0, 0, 0.0), (CALL, 2.0, 500.0, 0, 0.0)],
                  {"USDC": 20000.0}),
             book("one", [(BTC, -2.0, 60000.0, 0, 0.0)], {"USDC": 15000.0}),
             book("iso", [(BTC, 1.0, 60000.0, 1, 7000.0), (ETH, 2.0, 3000.0, 0, 0.0)], {"USDC": 5000.0})]
    engine.apply_snapshots(books)
    engine.apply_risk_params(risk_version())
    engine.apply_marks([mark(BTC, 57000.0, T0 + 500), mark(ETH, 2900.0, T0 + 500)])   # not yet evaluated
    rechecked, unknown = engine.recheck(["multi", "nobody", "one", "iso"], True)
    assert unknown == ["nobody"] and [r.margin.account_id for r in rechecked] == ["multi", "one", "iso"]
    for r in rechecked:
        alone = engine.explain(r.margin.account_id).margin      # a fresh computation at the marks now
        for field in ("equity_usd", "im_usd", "mm_usd", "cross_equity_usd", "cross_im_usd", "cross_mm_usd"):
            assert getattr(r.margin, field) == pytest.approx(getattr(alone, field), rel=1e-12, abs=1e-9), field
        assert (r.margin.state, r.margin.revision) == (alone.state, alone.revision)
        for j in range(r.book.n):
            k, size, isolated = int(r.book.instrument[j]), float(r.book.size[j]), bool(r.book.isolated[j])
            if isolated:
                assert r.relief_usd[j] is None
                continue
            before, after = engine.what_if(r.margin.account_id, [TradeDelta(k, -size)])
            assert r.relief_usd[j] == pytest.approx(max(before.im_usd - after.im_usd, 0.0), rel=1e-9, abs=1e-6)
    assert engine.recheck(["one"], False)[0][0].relief_usd == (None,)


def test_a_pass_waits_for_queries_in_flight_within_its_budget():
    """Between slices the pass waits for queries in flight, at most 5 ms a slice and its budget in all;
    with none in flight (or the budget spent) it goes straight on: a voluntary release of the GIL by the
    lower-priority loop had cost the calls of a mark move ~40 ms a slice on a busy host."""
    from marginflow.margin.application import queries as qm

    asked: list[float] = []

    class Counted(qm.Readers):
        __slots__ = ()

        def yield_to_queries(self, most_s: float = qm.EVALUATE_YIELD_MAX_S) -> float:
            asked.append(most_s)
            return most_s if self.count and most_s > 0 else 0.0   # a query stays in flight throughout

    readers = Counted()
    pause = readers.pauser(budget_s=0.012)
    pause()                                   # no query in flight: the pass goes straight on
    assert asked == []
    with readers:
        for _ in range(6):
            pause()
    assert asked == pytest.approx([0.005, 0.005, 0.002])   # 12 ms in all, then nothing more
