r"""Liquidation episodes of an account, and deterministic order ids.

State machine (one episode per entry into liquidation; the number grows by one per episode)::

    (none) ──equity < MM on a fresh mark──▶ LIQUIDATING ──equity ≥ IM·(1+buffer)──▶ RESTORED
                                               │  ├──no positions left, equity ≥ 0──▶ CLOSED_OUT
                                               │  └──equity < 0──────────────────────▶ BANKRUPT (deficit = −equity)
                                               └─ slices sent, rounds counted, attempts bounded

* A stale mark never starts or moves an episode (``marks_fresh`` false → unchanged).
* Leaving liquidation needs the buffer (hysteresis): ``equity ≥ IM·(1+buffer)``, not just ``≥ MM``.
* RESTORED, CLOSED_OUT and BANKRUPT are final; the next entry into liquidation starts episode ``n + 1``.

Order ids: ``liq-{account}-{episode}-{slice}`` with ``episode ≥ 1`` and ``slice ≥ 0`` decimal integers.
The same (account, episode, slice) always gives the same id, so a retried or replayed send is recognised
by the exchange/dedupe key and never doubles an order; distinct triples give distinct ids, because the last
two ``-``-separated fields are integers (an account id may itself contain ``-``; parse from the right).
Slice numbers are allocated once, when the slice is planned, and persisted with the episode; a retry
reuses the slice number, a new slice takes the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

ZERO = Decimal(0)
ORDER_ID_PREFIX = "liq"
DEFAULT_MAX_ATTEMPTS_PER_ROUND = 3       # sends of one slice before the round gives up (count)
DEFAULT_MARGIN_BUFFER = Decimal("0.02")  # as PlanSettings.margin_buffer_fraction (Drift)


class EpisodeState(str, Enum):
    LIQUIDATING = "liquidating"
    RESTORED = "restored"
    CLOSED_OUT = "closed_out"
    BANKRUPT = "bankrupt"

    @property
    def final(self) -> bool:
        return self is not EpisodeState.LIQUIDATING


@dataclass(frozen=True)
class Episode:
    """One liquidation episode of an account (immutable; transitions return a new value).

    Attributes
    ----------
    account_id : str
    number : int
        Episode number (≥ 1), increasing per account.
    state : EpisodeState
    started_ms : int
        Event time of the fresh mark that started it.
    next_slice : int
        The next slice number to allocate (slices ``0 … next_slice−1`` were planned).
    round_number : int
        Rounds planned so far.
    attempts_this_round : int
        Sends in the current round (bounded by ``max_attempts_per_round``).
    deficit_usd : Decimal
        For BANKRUPT: ``−equity`` at the time (USD, > 0), the fund's and then ADL's to cover.
    ended_ms : int
        Event time of the final transition (0 while liquidating).
    """

    account_id: str
    number: int
    state: EpisodeState
    started_ms: int
    next_slice: int = 0
    round_number: int = 0
    attempts_this_round: int = 0
    deficit_usd: Decimal = ZERO
    ended_ms: int = 0

    def evolve(self, **changes) -> "Episode":
        """A copy with ``changes`` (``dataclasses.replace`` without its per-call field introspection: a
        round of a liquidation burst makes several per account)."""
        return Episode(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class MarginObservation:
    """The newest margin state of an account (USD), as the margin service publishes it."""

    equity_usd: Decimal
    im_usd: Decimal
    mm_usd: Decimal
    marks_fresh: bool
    event_time_ms: int
    has_positions: bool = True


def order_id(account_id: str, episode: int, slice_number: int) -> str:
    """``liq-{account}-{episode}-{slice}``: deterministic and unique per (account, episode, slice)."""
    if not account_id or any(c.isspace() for c in account_id):
        raise ValueError(f"account id must be non-empty without whitespace: {account_id!r}")
    if episode < 1 or slice_number < 0:
        raise ValueError("episode ≥ 1 and slice ≥ 0")
    return f"{ORDER_ID_PREFIX}-{account_id}-{int(episode)}-{int(slice_number)}"


def parse_order_id(oid: str) -> tuple[str, int, int]:
    """Inverse of :func:`order_id`: (account, episode, slice). ValueError when not a liquidation id."""
    head, sep, rest = oid.partition("-")
    if head != ORDER_ID_PREFIX or not sep:
        raise ValueError(f"not a liquidation order id: {oid!r}")
    account, episode, slice_number = rest.rsplit("-", 2)
    if not (episode.isdigit() and slice_number.isdigit()) or not account:
        raise ValueError(f"not a liquidation order id: {oid!r}")
    return account, int(episode), int(slice_number)


def restored(obs: MarginObservation, buffer: Decimal = DEFAULT_MARGIN_BUFFER) -> bool:
    """``equity ≥ IM·(1+buffer)``, compared exactly."""
    return obs.equity_usd >= obs.im_usd * (1 + buffer)


def start(account_id: str, obs: MarginObservation, last_number: int = 0) -> Episode | None:
    """A new episode for ``account_id`` when ``obs`` is a fresh mark with equity < MM, else None."""
    if not obs.marks_fresh or not obs.has_positions or not (obs.mm_usd > 0 and obs.equity_usd < obs.mm_usd):
        return None
    return Episode(account_id, last_number + 1, EpisodeState.LIQUIDATING, obs.event_time_ms)


def observe(account_id: str, current: Episode | None, obs: MarginObservation, last_number: int = 0,
            buffer: Decimal = DEFAULT_MARGIN_BUFFER) -> Episode | None:
    """Advance the account's episode on a new margin observation.

    Parameters
    ----------
    account_id : str
    current : Episode or None
        The account's latest episode (None if it never had one).
    obs : MarginObservation
    last_number : int
        The highest episode number the account ever had (used when ``current`` is None).
    buffer : Decimal
        Margin buffer of the restore condition.

    Returns
    -------
    Episode or None
        A new episode (entered liquidation), the updated one (final transition), or ``current`` unchanged.
    """
    if not obs.marks_fresh:
        return current
    if current is None or current.state.final:
        number = max(last_number, current.number if current is not None else 0)
        started = start(account_id, obs, number)
        return started if started is not None else current
    if obs.equity_usd < 0:
        return current.evolve(state=EpisodeState.BANKRUPT, deficit_usd=-obs.equity_usd, ended_ms=obs.event_time_ms)
    if not obs.has_positions:
        return current.evolve(state=EpisodeState.CLOSED_OUT, ended_ms=obs.event_time_ms)
    if restored(obs, buffer):
        return current.evolve(state=EpisodeState.RESTORED, ended_ms=obs.event_time_ms)
    return current


def begin_round(episode: Episode) -> Episode:
    """A new round: the round counter grows, the attempt counter restarts."""
    _require_live(episode)
    return episode.evolve(round_number=episode.round_number + 1, attempts_this_round=0)


def allocate_slices(episode: Episode, count: int) -> tuple[Episode, tuple[str, ...]]:
    """Allocate ``count`` new slice numbers; returns the episode after and their order ids."""
    _require_live(episode)
    if count < 0:
        raise ValueError("count ≥ 0")
    ids = tuple(order_id(episode.account_id, episode.number, episode.next_slice + k) for k in range(count))
    return episode.evolve(next_slice=episode.next_slice + count), ids


def record_attempt(episode: Episode, max_attempts_per_round: int = DEFAULT_MAX_ATTEMPTS_PER_ROUND
                   ) -> tuple[Episode, bool]:
    """Count one send in this round; the flag is False (do not send) once the bound is reached."""
    _require_live(episode)
    if episode.attempts_this_round >= max_attempts_per_round:
        return episode, False
    return episode.evolve(attempts_this_round=episode.attempts_this_round + 1), True


def _require_live(episode: Episode) -> None:
    if episode.state.final:
        raise ValueError(f"episode {episode.number} of {episode.account_id} is {episode.state.value}")
