"""Recheck's results gathered at once are the results built one account at a time (account_margin), with the
hysteresis and episode of the publication, and the reliefs of a lone cross position are the cross IM."""

from __future__ import annotations

import numpy as np

from marginflow.margin.application.results import account_margin
from marginflow.margin.domain.book import FlatBook

from margin_unit_helpers import T0, book, mark, risk_version

BTC, ETH, CALL = 0, 1, 2


def _one_by_one(engine, books):
    """What recheck returned before its results were gathered at once: account_margin per account, then
    reported() (its published state's hysteresis and its episode)."""
    q = engine.queries
    model, at = q._model(), q.market_at()
    flat = FlatBook.build(books)
    core, val = q.computed(model, flat, np.stack([b.balances for b in books]), at.view)
    out = []
    for i, b in enumerate(books):
        parts = tuple(float(core[k][i]) for k in ("grid", "es", "minimum", "liquidity"))
        out.append(q.reported(account_margin(q.instruments, q.config.mm_factor, b, val, i, flat, model, at.event_ms,
                                             parts)))
    return out


def test_recheck_results_equal_those_built_one_by_one_with_the_published_episode_and_hysteresis(make_engine):
    engine, _pub, _clock = make_engine()
    books = [book("multi", [(BTC, 1.0, 60000.0, 0, 0.0), (ETH, -4.0, 3000.0, 0, 0.0), (CALL, 2.0, 500.0, 0, 0.0)],
                  {"USDC": 20000.0}),
             book("low", [(BTC, 1.0, 60000.0, 0, 0.0)], {"USDC": 12000.0}),
             book("iso", [(BTC, 1.0, 60000.0, 1, 7000.0), (ETH, 2.0, 3000.0, 0, 0.0)], {"USDC": 5000.0}),
             book("flat", [], {"USDC": 100.0})]
    engine.apply_snapshots(books)
    engine.apply_risk_params(risk_version())
    engine.evaluate()
    engine.apply_marks([mark(BTC, 51000.0, T0 + 500)])
    engine.evaluate()                        # "low" published in a worse state, with an episode
    engine.apply_marks([mark(BTC, 56000.0, T0 + 900)])   # partly back: the published state's hysteresis holds
    current = [engine.queries.accounts.book(b.account_id) for b in books]
    rechecked, unknown = engine.recheck([b.account_id for b in books], True)
    assert unknown == []
    expected = _one_by_one(engine, current)
    assert [r.margin for r in rechecked] == expected
    low = next(r.margin for r in rechecked if r.margin.account_id == "low")
    assert low.episode >= 1
    (relief,) = next(r.relief_usd for r in rechecked if r.margin.account_id == "low")
    assert relief == low.cross_im_usd        # the only cross position: closing it frees the whole cross IM
