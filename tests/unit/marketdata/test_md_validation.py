"""Every validation rule of marketdata, and the suspect-jump protocol."""

from __future__ import annotations

import math

import pytest

from marginflow.marketdata.domain.ticks import RawTick
from marginflow.marketdata.domain.validation import TickValidator, ValidationConfig

T0 = 1_764_000_000_000


def tick(i: int, price: float, instrument: str = "BTC-PERP", **kw) -> RawTick:
    return RawTick(T0 + i * 1000, instrument, price, **kw)


def accepted_prices(outcome) -> list[float]:
    return [a.tick.price for a in outcome.accepted]


@pytest.mark.parametrize(
    "bad, code",
    [
        (RawTick(T0, "NOPE-PERP", 100.0), "unknown_instrument"),
        (RawTick(T0, "BTC-PERP", math.nan), "non_finite_price"),
        (RawTick(T0, "BTC-PERP", math.inf), "non_finite_price"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid=math.nan, ask=60001.0), "non_finite_price"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid_size=-math.inf), "non_finite_price"),
        (RawTick(T0, "BTC-PERP", 0.0), "non_positive_price"),
        (RawTick(T0, "BTC-PERP", -5.0), "non_positive_price"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid=-1.0, ask=60001.0), "non_positive_price"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid_size=-1.0), "negative_size"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid=60010.0, ask=60000.0), "crossed_book"),
        (RawTick(T0, "BTC-PERP", 60000.0, bids=((59990.0, -1.0),), asks=((60010.0, 1.0),)), "negative_size"),
    ],
)
def test_static_rules_reject_with_their_reason(universe, bad, code):
    v = TickValidator(universe)
    out = v.process([bad])
    assert out.accepted == []
    assert [r.code for r in out.rejected] == [code]
    # The validator goes on: a good tick right after is accepted.
    good = v.process([RawTick(T0 + 1, "BTC-PERP", 60000.0)])
    assert accepted_prices(good) == [60000.0]


def test_index_symbol_of_an_underlying_is_known(universe):
    out = TickValidator(universe).process([RawTick(T0, "BTC", 60000.0)])
    assert accepted_prices(out) == [60000.0]


def test_time_going_backwards_is_rejected_and_equal_time_is_not(universe):
    v = TickValidator(universe)
    out = v.process([tick(5, 60000.0), tick(5, 60001.0), tick(4, 60002.0), tick(6, 60003.0)])
    assert accepted_prices(out) == [60000.0, 60001.0, 60003.0]
    assert [r.code for r in out.rejected] == ["time_backwards"]


def test_sequence_numbers_count_accepted_ticks_per_instrument(universe):
    v = TickValidator(universe)
    out = v.process([tick(1, 60000.0), tick(1, 3000.0, "ETH-PERP"), tick(2, 60001.0), tick(3, -1.0)])
    seq = {(a.tick.instrument, a.tick.price): a.sequence for a in out.accepted}
    assert seq == {("BTC-PERP", 60000.0): 1, ("ETH-PERP", 3000.0): 1, ("BTC-PERP", 60001.0): 2}


def test_jump_confirmed_by_following_ticks_is_accepted_in_order(universe):
    # A sudden 45 % crash (ln 0.55 = -0.60) confirmed by three prints near the new level.
    v = TickValidator(universe, ValidationConfig(confirm_ticks=3))
    v.process([tick(0, 60000.0)])
    held = v.process([tick(1, 33000.0), tick(2, 33100.0), tick(3, 32900.0)])
    assert held.accepted == [] and held.suspects == 1 and v.held_count() == 3
    done = v.process([tick(4, 33050.0)])
    assert accepted_prices(done) == [33000.0, 33100.0, 32900.0, 33050.0]
    assert done.confirmed == 1 and v.held_count() == 0
    assert [a.sequence for a in done.accepted] == [2, 3, 4, 5]


def test_jump_contradicted_goes_to_dead_letters_and_the_next_tick_passes(universe):
    v = TickValidator(universe)
    v.process([tick(0, 60000.0)])
    out = v.process([tick(1, 6000.0), tick(2, 60010.0)])   # a fat-finger print, then back
    assert [r.code for r in out.rejected] == ["jump_contradicted"]
    assert out.rejected[0].tick.price == 6000.0
    assert accepted_prices(out) == [60010.0]


def test_gradual_crash_of_half_in_a_day_is_never_suspect(universe):
    v = TickValidator(universe)
    prices = [60000.0 * math.exp(math.log(0.5) * i / 1440) for i in range(1441)]   # one print a minute
    out = v.process([RawTick(T0 + i * 60_000, "BTC-PERP", p) for i, p in enumerate(prices)])
    assert len(out.accepted) == 1441 and out.suspects == 0
    assert out.accepted[-1].tick.price == pytest.approx(30000.0)


def test_suspect_released_after_hold_time_without_contradiction(universe):
    v = TickValidator(universe, ValidationConfig(hold_max_ms=10_000))
    v.process([tick(0, 60000.0)])
    first = v.process([tick(1, 40000.0)])
    assert first.accepted == []
    later = v.expire(T0 + 20_000)
    assert accepted_prices(later) == [40000.0]


def test_suspect_on_a_quiet_instrument_released_by_other_instruments_ticks(universe):
    v = TickValidator(universe, ValidationConfig(hold_max_ms=10_000))
    v.process([tick(0, 60000.0), tick(0, 3000.0, "ETH-PERP")])
    assert v.process([tick(1, 40000.0)]).accepted == []
    # BTC-PERP goes quiet; ETH-PERP ticks on, and event time passes the hold limit.
    out = v.process([tick(5, 3001.0, "ETH-PERP"), tick(12, 3002.0, "ETH-PERP")])
    assert [(a.tick.instrument, a.tick.price) for a in out.accepted] == [
        ("ETH-PERP", 3001.0), ("ETH-PERP", 3002.0), ("BTC-PERP", 40000.0)]


def test_options_are_exempt_from_the_jump_rule(universe):
    option = next(s for s, i in universe.instruments.items() if i.is_option)
    v = TickValidator(universe)
    out = v.process([tick(0, 100.0, option), tick(1, 300.0, option)])
    assert accepted_prices(out) == [100.0, 300.0]


def test_restore_continues_sequence_and_time(universe):
    v = TickValidator(universe)
    v.restore("BTC-PERP", T0 + 10_000, 60000.0, 41)
    out = v.process([tick(5, 60000.0), tick(11, 60000.0)])
    assert [r.code for r in out.rejected] == ["time_backwards"]
    assert [a.sequence for a in out.accepted] == [42]


@pytest.mark.parametrize("kw", [{"jump_threshold": 0}, {"confirm_ticks": 0}, {"confirm_band": 0.5},
                                {"hold_max_ms": 0}])
def test_bad_validation_config_is_refused(kw):
    with pytest.raises(ValueError):
        ValidationConfig(**kw)
