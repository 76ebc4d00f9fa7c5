"""The guard verdict per instrument, computed once for every account and forgotten when the marks change."""

from __future__ import annotations

from marginflow.liquidation.application import Marks, MarkSeen
from marginflow.liquidation.domain import GuardSettings, GuardVerdict
from marginflow.liquidation.domain import guards as guard_rules

T0 = 1_800_000_000_000
SETTINGS = GuardSettings(mark_max_age_ms=5_000, index_band=0.05, twap_band=0.10, twap_window_ms=60_000)


def mark(instrument: str, price: float, t_ms: int, index: float | None = None) -> MarkSeen:
    return MarkSeen(instrument, price, price if index is None else index, t_ms)


def uncached(marks: Marks, instrument: str, linear: bool = True) -> GuardVerdict:
    """The verdict from scratch, as computed before it was kept."""
    m = marks.latest.get(instrument)
    admin = marks.venue_paused or instrument in marks.paused
    if m is None:
        return GuardVerdict.PAUSED_ADMIN if admin else GuardVerdict.NO_PRICE
    index = m.index_usd if m.index_usd > 0 and linear else None
    return guard_rules.instrument_guard(m.mark_usd, m.event_time_ms, index, marks.twap(instrument), marks.newest_ms,
                                        marks.guards, admin_paused=admin)


def test_the_verdict_is_computed_once_per_instrument_until_its_next_mark(monkeypatch):
    marks = Marks(SETTINGS)
    marks.update([mark("BTC-PERP", 60000.0, T0)])
    calls = []
    real = guard_rules.instrument_guard
    monkeypatch.setattr("marginflow.liquidation.application.instrument_guard",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    assert [marks.verdict("BTC-PERP") for _ in range(1000)] == [GuardVerdict.ACT] * 1000
    assert len(calls) == 1
    marks.update([mark("BTC-PERP", 60000.0, T0 + 1000, index=70000.0)])     # the mark now far from its index
    assert marks.verdict("BTC-PERP") is GuardVerdict.PAUSED_INDEX_BAND and len(calls) == 2


def test_a_newer_mark_of_another_instrument_makes_a_kept_verdict_stale():
    marks = Marks(SETTINGS)
    marks.update([mark("BTC-PERP", 60000.0, T0), mark("ETH-PERP", 3000.0, T0)])
    assert marks.verdict("BTC-PERP") is GuardVerdict.ACT
    marks.update([mark("ETH-PERP", 3000.0, T0 + 6_000)])                     # BTC's mark is now 6 s old
    assert marks.verdict("BTC-PERP") is GuardVerdict.STALE_MARK is uncached(marks, "BTC-PERP")
    assert marks.verdict("ETH-PERP") is GuardVerdict.ACT


def test_an_older_mark_of_one_instrument_forgets_only_its_own_verdicts():
    marks = Marks(SETTINGS)
    marks.update([mark("BTC-PERP", 60000.0, T0), mark("ETH-PERP", 3000.0, T0 + 1000)])
    assert marks.verdict("BTC-PERP") is marks.verdict("ETH-PERP") is GuardVerdict.ACT
    marks.update([mark("BTC-PERP", 60000.0, T0 + 500, index=70000.0)])      # not the newest mark time
    assert marks.verdict("BTC-PERP") is GuardVerdict.PAUSED_INDEX_BAND is uncached(marks, "BTC-PERP")
    assert marks.verdict("BTC-PERP", linear=False) is uncached(marks, "BTC-PERP", linear=False)


def test_pauses_apply_at_once_and_a_resume_gives_the_verdict_of_the_marks_back():
    marks = Marks(SETTINGS)
    marks.update([mark("BTC-PERP", 60000.0, T0)])
    assert marks.verdict("BTC-PERP") is GuardVerdict.ACT
    marks.paused.add("BTC-PERP")
    assert marks.verdict("BTC-PERP") is GuardVerdict.PAUSED_ADMIN
    marks.paused.discard("BTC-PERP")
    marks.venue_paused = True
    assert marks.verdict("BTC-PERP") is marks.verdict("SOL-PERP") is GuardVerdict.PAUSED_ADMIN
    marks.venue_paused = False
    assert marks.verdict("BTC-PERP") is GuardVerdict.ACT and marks.verdict("SOL-PERP") is GuardVerdict.NO_PRICE


def test_kept_verdicts_agree_with_verdicts_from_scratch_over_a_mark_sequence():
    marks = Marks(SETTINGS)
    prices = [60000, 61000, 66000, 70000, 64000, 60000, 59000, 52000, 51000, 58000]
    for k, p in enumerate(prices):
        marks.update([mark("BTC-PERP", float(p), T0 + 7_000 * k, index=60000.0)])
        if k % 3 == 0:
            marks.update([mark("ETH-PERP", 3000.0, T0 + 7_000 * k + 6_000)])
        for instrument in ("BTC-PERP", "ETH-PERP", "SOL-PERP"):
            for linear in (True, False):
                assert marks.verdict(instrument, linear) is uncached(marks, instrument, linear), (k, instrument)
