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
        (RawTick(T0, "BTC-PERP", 1e13), "implausible"),
        (RawTick(T0, "BTC-PERP", 60000.0, bid=59990.0, ask=1e300), "implausible"),
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


DAY_MS = 86_400_000


def daily(prices: list[float], instrument: str = "BTC-PERP") -> list[RawTick]:
    return [RawTick(T0 + i * DAY_MS, instrument, p) for i, p in enumerate(prices)]


def test_daily_closes_with_a_crash_day_and_recoveries_are_all_kept(universe):
    # One close a day: a -48 % day (ln 0.52 = -0.65) and spikes that the following days move away
    # from. Each suspect stood uncontradicted for more than the 60 s hold window before the next
    # close arrived, so it is confirmed by time and every close passes, in order.
    prices = [60000.0, 61000.0, 31720.0, 36000.0, 31000.0, 40000.0, 39000.0, 52000.0, 41000.0, 42000.0]
    v = TickValidator(universe)
    out = v.process(daily(prices))
    assert accepted_prices(out) == prices
    assert out.rejected == [] and v.held_count() == 0
    assert [a.sequence for a in out.accepted] == list(range(1, len(prices) + 1))


def test_daily_closes_in_one_tick_at_a_time_keep_every_close(universe):
    # The same closes fed one by one (a replay at live pace): the last one is held as suspect
    # until event time passes its hold window, then released; nothing is dead-lettered.
    prices = [60000.0, 31200.0, 60500.0, 31000.0, 31100.0]
    v = TickValidator(universe)
    kept: list[float] = []
    for t in daily(prices):
        out = v.process([t])
        assert out.rejected == []
        kept += accepted_prices(out)
    kept += accepted_prices(v.expire(T0 + len(prices) * DAY_MS))
    assert kept == prices


def test_daily_spike_that_returns_within_a_day_long_hold_is_dropped(universe):
    # With a hold window longer than the spacing (3 days), a one-close spike that the next close
    # undoes is dropped, while a -48 % day that the next closes stay at is confirmed by ticks.
    cfg = ValidationConfig(hold_max_ms=3 * DAY_MS, confirm_ticks=3)
    prices = [60000.0, 84000.0, 60300.0, 31200.0, 31500.0, 31000.0, 31300.0, 31400.0]
    out = TickValidator(universe, cfg).process(daily(prices))
    assert [(r.code, r.tick.price) for r in out.rejected] == [("jump_contradicted", 84000.0)]
    assert accepted_prices(out) == [60000.0, 60300.0, 31200.0, 31500.0, 31000.0, 31300.0, 31400.0]
    assert out.confirmed == 1


@pytest.mark.parametrize("spacing_ms", [1, 100, 500])
def test_sub_second_one_tick_spike_that_returns_is_dropped(universe, spacing_ms):
    v = TickValidator(universe)
    ticks = [RawTick(T0 + i * spacing_ms, "BTC-PERP", p)
             for i, p in enumerate([60000.0, 60010.0, 72000.0, 60020.0, 60005.0])]
    out = v.process(ticks)
    assert [(r.code, r.tick.price) for r in out.rejected] == [("jump_contradicted", 72000.0)]
    assert accepted_prices(out) == [60000.0, 60010.0, 60020.0, 60005.0]


def test_a_tick_after_the_hold_window_releases_the_suspect_before_it_is_judged(universe):
    # A tick back at the old level after the hold window no longer contradicts the suspect: the
    # suspect was confirmed by time, and the tick is itself a jump from the new level.
    v = TickValidator(universe, ValidationConfig(hold_max_ms=10_000))
    v.process([tick(0, 60000.0)])
    assert v.process([tick(1, 40000.0)]).accepted == []
    out = v.process([tick(30, 60000.0)])
    assert accepted_prices(out) == [40000.0] and out.rejected == [] and out.confirmed == 1
    assert out.suspects == 1 and v.held_count() == 1
    # Within its own hold window a tick back near 40,000 contradicts the new suspect.
    back = v.process([tick(31, 40100.0)])
    assert [(r.code, r.tick.price) for r in back.rejected] == [("jump_contradicted", 60000.0)]
    assert accepted_prices(back) == [40100.0]
