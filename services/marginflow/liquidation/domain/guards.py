r"""Guards in front of every liquidation action, and the withdrawal check.

Stale mark (DESIGN: stale marks never liquidate)::

    stale  ⇔  now − mark_time > max_age            default 30,000 ms (as the margin service's MF_MARGIN_MARK_MAX_AGE_MS)

Price bands (Drift protocol-v2 ``OracleGuardRails.price_divergence``: ``mark_oracle_percent_divergence``
10 % and ``oracle_twap_5min_percent_divergence`` 50 %, both in ``PERCENTAGE_PRECISION``; an action is refused
while the price is outside the band)::

    |mark − index| / index   > index_band         default 0.10   → the instrument is paused
    |mark − twap|  / twap    > twap_band          default 0.50   (TWAP over 300 s) → paused

Withdrawal (used by the AccountService)::

    allowed  ⇔  equity − withdrawal ≥ IM_after     (IM after the withdrawal; exact Decimal comparison)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

DEFAULT_MARK_MAX_AGE_MS = 30_000
DEFAULT_INDEX_BAND = 0.10       # fraction of the index (Drift mark_oracle_percent_divergence = 10 %)
DEFAULT_TWAP_BAND = 0.50        # fraction of the TWAP (Drift oracle_twap_5min_percent_divergence = 50 %)
DEFAULT_TWAP_WINDOW_MS = 300_000  # 5 minutes (Drift's 5-minute oracle TWAP)


class GuardVerdict(str, Enum):
    ACT = "act"
    STALE_MARK = "stale_mark"
    PAUSED_INDEX_BAND = "paused_index_band"
    PAUSED_TWAP_BAND = "paused_twap_band"
    PAUSED_ADMIN = "paused_admin"
    NO_PRICE = "no_price"


@dataclass(frozen=True)
class GuardSettings:
    """Staleness and band settings (frozen; defaults above)."""

    mark_max_age_ms: int = DEFAULT_MARK_MAX_AGE_MS
    index_band: float = DEFAULT_INDEX_BAND
    twap_band: float = DEFAULT_TWAP_BAND
    twap_window_ms: int = DEFAULT_TWAP_WINDOW_MS

    def __post_init__(self) -> None:
        if self.mark_max_age_ms <= 0 or self.twap_window_ms <= 0:
            raise ValueError("mark_max_age_ms and twap_window_ms must be > 0")
        if not (self.index_band > 0 and self.twap_band > 0):
            raise ValueError("bands must be > 0")


def mark_is_stale(mark_time_ms: int, now_ms: int, max_age_ms: int = DEFAULT_MARK_MAX_AGE_MS) -> bool:
    """``now − mark_time > max_age`` (a mark never seen, time 0, is stale)."""
    return mark_time_ms <= 0 or now_ms - mark_time_ms > max_age_ms


def outside_band(price: float, reference: float, band: float) -> bool:
    """``|price − reference| / reference > band``, by cross-multiplying (no division)."""
    return reference > 0 and abs(price - reference) > band * reference


def time_weighted_average(times_ms: Sequence[int], prices: Sequence[float], now_ms: int,
                          window_ms: int = DEFAULT_TWAP_WINDOW_MS) -> float | None:
    """TWAP over ``[now − window, now]`` of a step price series (each price holds until the next time).

    ``twap = Σ p_i·(t_{i+1} − t_i) / Σ (t_{i+1} − t_i)`` clipped to the window, ``t_{n} = now``. None when no
    price is known in or before the window.
    """
    if len(times_ms) != len(prices):
        raise ValueError("times and prices differ in length")
    start = now_ms - window_ms
    total = weight = 0.0
    for i, (t, p) in enumerate(zip(times_ms, prices)):
        t_next = times_ms[i + 1] if i + 1 < len(times_ms) else now_ms
        lo, hi = max(t, start), min(t_next, now_ms)
        if hi > lo:
            total += p * (hi - lo)
            weight += hi - lo
    if weight == 0:
        if times_ms and times_ms[-1] <= now_ms:
            return float(prices[-1])
        return None
    return total / weight


def instrument_guard(mark: float | None, mark_time_ms: int, index: float | None, twap: float | None,
                     now_ms: int, settings: GuardSettings = GuardSettings(), admin_paused: bool = False
                     ) -> GuardVerdict:
    """May the liquidation act on this instrument now? The first failing guard, else ACT."""
    if admin_paused:
        return GuardVerdict.PAUSED_ADMIN
    if mark is None or not mark > 0:
        return GuardVerdict.NO_PRICE
    if mark_is_stale(mark_time_ms, now_ms, settings.mark_max_age_ms):
        return GuardVerdict.STALE_MARK
    if index is not None and outside_band(mark, index, settings.index_band):
        return GuardVerdict.PAUSED_INDEX_BAND
    if twap is not None and outside_band(mark, twap, settings.twap_band):
        return GuardVerdict.PAUSED_TWAP_BAND
    return GuardVerdict.ACT


def withdrawal_allowed(equity_usd: Decimal, withdrawal_usd: Decimal, im_after_usd: Decimal) -> bool:
    """``equity − withdrawal ≥ IM_after`` (a non-positive withdrawal is refused as malformed)."""
    if withdrawal_usd <= 0:
        return False
    return equity_usd - withdrawal_usd >= im_after_usd
