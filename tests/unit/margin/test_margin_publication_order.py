"""A mark move that republishes many accounts: the state changes and their calls go out first, the rest of
the republication after, in slices over the next turns (a backlog), each account's newest numbers once."""

from __future__ import annotations

import numpy as np
import pytest

import marginflow.margin.application.evaluation as evaluation
from marginflow.margin.domain.health import Health

from margin_unit_helpers import T0, book, mark, risk_version

BTC = 0
SLICE = 10          # accounts per slice in these tests (the service's are larger)
N_ACCOUNTS = 45
N_CALLED = 3        # 5,000 USDC: 1 BTC long from 60,000 is bankrupt at 54,000 (at once, no confirmation)


class BatchPublisher:
    """Every publish() call as one batch, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[list, list]] = []

    def publish(self, states, calls) -> None:
        self.batches.append((list(states), list(calls)))

    def states(self, since: int = 0) -> list:
        return [s for states, _calls in self.batches[since:] for s in states]


@pytest.fixture
def world(make_engine, monkeypatch):
    monkeypatch.setattr(evaluation, "PUBLISH_SLICE_ACCOUNTS", SLICE)
    monkeypatch.setattr(evaluation, "TRANSITION_SLICE_ACCOUNTS", 2)
    engine, _pub, clock = make_engine()
    pub = BatchPublisher()
    engine.publication.publisher = pub
    engine.apply_snapshots([book(f"a{i:03d}", [(BTC, 1.0, 60000.0, 0, 0.0)],
                                 {"USDC": 5000.0 if i >= N_ACCOUNTS - N_CALLED else 30000.0})
                            for i in range(N_ACCOUNTS)])
    engine.apply_risk_params(risk_version())
    engine.market.first_marks = False    # as after the service's start: no model refresh in tick()
    return engine, pub, clock


def move(engine, clock, price: float, dt_ms: int = 1000) -> None:
    clock.advance(dt_ms)
    engine.apply_marks([mark(BTC, price, clock.now_ms())])


def test_the_first_publication_of_a_move_is_the_state_changes_with_their_calls(world):
    engine, pub, clock = world
    first = len(pub.batches)
    assert len(pub.states()) == N_ACCOUNTS and not engine.publishing   # first states: all out at once
    move(engine, clock, 54000.0)       # every account's equity moves by 6,000: all republished
    published = engine.evaluate()
    # the transitions in slices of 2, each state with its call
    assert [(len(s), len(c)) for s, c in pub.batches[first:]] == [(2, 2), (1, 1)]
    states = pub.states(first)
    calls = [c for _s, cs in pub.batches[first:] for c in cs]
    called = {f"a{i:03d}" for i in range(N_ACCOUNTS - N_CALLED, N_ACCOUNTS)}
    assert {c.margin.account_id for c in calls} == called
    assert {s.account_id for s in states} == called and all(s.state == Health.BANKRUPT for s in states)
    # the rest is left for the next turns, in slices without calls
    assert published == N_CALLED and engine.publishing
    engine.tick()                      # a turn of the loop: evaluations due first, then the backlog
    assert all(len(s) <= SLICE and c == [] for s, c in pub.batches[first + 2:])
    assert sorted(s.account_id for s in pub.states(first)) == sorted(f"a{i:03d}" for i in range(N_ACCOUNTS))
    assert not engine.publishing


def test_the_backlog_goes_out_over_the_next_turns_each_account_once(world):
    engine, pub, clock = world
    first = len(pub.batches)
    move(engine, clock, 54000.0)
    engine.evaluate()
    turns = 0
    while engine.publishing:
        engine.evaluation.drain(SLICE)      # one turn's share
        turns += 1
        assert turns < 10
    ids = [s.account_id for s in pub.states(first)]
    assert sorted(ids) == sorted(f"a{i:03d}" for i in range(N_ACCOUNTS))    # every account once
    assert turns == (N_ACCOUNTS - N_CALLED + SLICE - 1) // SLICE
    assert all(s.equity_usd == pytest.approx(30000.0 - 6000.0) for s in pub.states(first) if s.state == Health.HEALTHY)


def test_a_newer_evaluation_replaces_the_backlog_with_its_own_numbers(world):
    engine, pub, clock = world
    first = len(pub.batches)
    move(engine, clock, 54000.0)
    engine.evaluate()
    done = {s.account_id for s in pub.states(first)}
    move(engine, clock, 50000.0)       # before the backlog is out: the next move
    engine.evaluate(force=True)        # forced: published whole now
    assert not engine.publishing
    later = pub.states(first)[len(done):]
    # the accounts not yet out go out once, with the newest numbers; those out already move again
    assert sorted(s.account_id for s in later) == sorted(f"a{i:03d}" for i in range(N_ACCOUNTS))
    healthy = [s for s in later if s.state == Health.HEALTHY]
    assert healthy and all(s.equity_usd == pytest.approx(30000.0 - 10000.0) for s in healthy)


def test_an_account_recomputed_alone_meanwhile_is_not_published_again_from_the_backlog(world):
    engine, pub, clock = world
    first = len(pub.batches)
    move(engine, clock, 54000.0)
    engine.evaluate()
    pending = engine.evaluation.backlog.rows.tolist()
    account = engine.accounts.rows[pending[-1]].account_id
    engine.apply_snapshots([book(account, [(BTC, 2.0, 60000.0, 0, 0.0)], {"USDC": 40000.0}, revision=2)])
    (own,) = [s for s in pub.states(first) if s.account_id == account]
    assert own.revision == 2
    engine.evaluation.drain(None)
    assert [s.revision for s in pub.states(first) if s.account_id == account] == [2]
    assert not engine.publishing


def test_a_small_republication_goes_out_whole_in_the_evaluation(world, make_engine):
    engine, pub, clock = world
    first = len(pub.batches)
    move(engine, clock, 59990.0, dt_ms=100)   # 10 USD: below every threshold, nothing due
    assert engine.evaluate() == 0 and not engine.publishing and len(pub.batches) == first
    np.testing.assert_array_equal(engine.evaluation.publication.state[:N_ACCOUNTS] > 0, True)
