"""The demo book: deterministic for a seed, realistic mix, every record acceptable to the ledger."""

from collections import Counter
from decimal import Decimal as D

import pytest

from marginflow.portfolio.demo_book import ARCHETYPES, generate_book
from marginflow.portfolio.domain.ledger import apply_command
from marginflow.portfolio.domain.model import Account, Deposit, Fill
from marginflow.portfolio.service import ledger_rules
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.shared.config import load
from marginflow.shared.universe import Kind, load_universe

AS_OF_MS = 1_767_225_600_000   # 2026-01-01T00:00Z: the universe's relative expiries resolve from here


@pytest.fixture(scope="module")
def universe():
    return load_universe(None, AS_OF_MS)


@pytest.fixture(scope="module")
def book(universe):
    return generate_book(universe, 1500, seed=7, start_ms=AS_OF_MS)


def test_same_seed_gives_the_same_book(universe, book):
    again = generate_book(universe, 1500, seed=7, start_ms=AS_OF_MS)
    assert again.fills == book.fills and again.deposits == book.deposits and again.archetypes == book.archetypes


def test_another_seed_gives_another_book(universe, book):
    other = generate_book(universe, 1500, seed=8, start_ms=AS_OF_MS)
    assert other.fills != book.fills


def test_a_prefix_of_accounts_is_the_same_whatever_the_total(universe, book):
    small = generate_book(universe, 100, seed=7, start_ms=AS_OF_MS)
    ids = {f"demo-{i:06d}" for i in range(100)}
    assert small.fills == [f for f in book.fills if f.account_id in ids]


def test_every_archetype_appears_in_about_its_share(book):
    counts = Counter(book.archetypes.values())
    assert set(counts) == {name for name, _ in ARCHETYPES}
    for name, share in ARCHETYPES:
        assert abs(counts[name] / 1500 - share) < 0.04, (name, counts[name])


def test_book_holds_perps_futures_and_long_and_short_options(universe, book):
    kinds = Counter((universe.instruments[f.instrument].kind, f.side) for f in book.fills)
    assert {k for k, _ in kinds} == {Kind.PERPETUAL, Kind.FUTURE, Kind.CALL, Kind.PUT}
    assert {s for k, s in kinds if k in (Kind.CALL, Kind.PUT)} == {1, 2}   # bought and sold


def test_every_record_is_accepted_and_collateral_covers_all_but_the_leveraged(universe, book):
    rules = ledger_rules(load(PortfolioSettings, {}), universe)
    accounts: dict[str, Account] = {}
    for cmd in [*book.deposits, *book.fills]:
        acct = accounts.get(cmd.account_id) or Account(cmd.account_id)
        accounts[cmd.account_id], _ = apply_command(acct, cmd, None, rules)   # raises if rejected
    assert len(accounts) == 1500
    for acct_id, acct in accounts.items():
        notional_usd = sum(abs(p.size) * p.entry_price_usd * rules.instruments[s].contract_size
                           for s, p in acct.positions.items() if not rules.instruments[s].is_option)
        usd = acct.balance("USDC") + sum(p.isolated_collateral_usd for p in acct.positions.values())
        if book.archetypes[acct_id] == "high_leverage":
            assert usd * D("2.4") < notional_usd <= usd * D("3.3"), acct_id   # 2.5-3.2x: just above IM, healthy
        elif book.archetypes[acct_id] not in ("hedged_book", "long_options") and notional_usd:
            assert usd * 6 >= notional_usd, acct_id          # at most ~6x for everyone else


def test_sizes_are_whole_lots_and_prices_positive(universe, book):
    for f in book.fills:
        inst = universe.instruments[f.instrument]
        assert f.size > 0 and f.size % D(repr(inst.lot_size)) == 0 and f.price_usd > 0


def test_fills_of_one_account_keep_their_order(book):
    last: dict[str, int] = {}
    for f in book.fills:
        n = int(f.fill_id.rsplit("-f", 1)[1])
        assert n > last.get(f.account_id, -1)
        last[f.account_id] = n


def test_deposits_are_positive(book):
    assert all(d.amount > 0 for d in book.deposits if isinstance(d, Deposit))
    assert all(isinstance(f, Fill) for f in book.fills)
