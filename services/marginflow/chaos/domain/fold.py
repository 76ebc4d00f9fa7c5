"""The expected state of every account: a fold of the input topics, and its comparison with what the
portfolio service shows.

The fold is what "every fill applied exactly once" means, computed independently of the service:

* a position's size is the sum of its fills, + for a buy and − for a sell, each **fill id counted once**
  (a record published twice under one id — a producer retry across a broker restart — is one fill);
* an account's ``revision`` is the number of distinct inputs applied to it: fill ids plus account-event
  ids, minus those the service dead-lettered (a rejected input is not applied, and says so on
  ``portfolio.dlq``).

A fill applied twice shows as a wrong size or a revision one too high, a lost fill as a wrong size or a
revision one too low, even when the sizes happen to cancel.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

ZERO = Decimal(0)


@dataclasses.dataclass
class AccountFold:
    positions: dict[str, Decimal] = dataclasses.field(default_factory=dict)   # instrument -> signed contracts
    inputs: int = 0                                                          # distinct applied inputs


@dataclasses.dataclass(frozen=True)
class Observed:
    """An account as the service shows it: revision and non-zero position sizes."""

    revision: int
    positions: dict[str, Decimal]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    account_id: str
    what: str            # "missing", "revision", "position"
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.account_id}: {self.what} expected {self.expected}, got {self.actual}"


class Fold:
    """Folds fills and account events (in topic order) into the expected accounts."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountFold] = {}
        self._seen: set[str] = set()          # "f:<fill id>", "e:<event id>"
        self._rejected: set[str] = set()      # ids the service dead-lettered
        self.fills = 0                        # distinct fills folded
        self.duplicates = 0                   # records whose id was already folded
        self.touched: set[str] = set()        # accounts changed since the last take_touched()

    def _account(self, account_id: str) -> AccountFold:
        acct = self.accounts.get(account_id)
        if acct is None:
            acct = self.accounts[account_id] = AccountFold()
        return acct

    def add_fill(self, fill_id: str, account_id: str, instrument: str, side: int, size: Decimal) -> None:
        key = "f:" + fill_id
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        if key in self._rejected:
            return
        acct = self._account(account_id)
        signed = size if side == 1 else -size
        new = acct.positions.get(instrument, ZERO) + signed
        if new == 0:
            acct.positions.pop(instrument, None)
        else:
            acct.positions[instrument] = new
        acct.inputs += 1
        self.fills += 1
        self.touched.add(account_id)

    def add_event(self, event_id: str, account_id: str) -> None:
        key = "e:" + event_id
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        if key in self._rejected:
            return
        self._account(account_id).inputs += 1
        self.touched.add(account_id)

    def reject(self, dedupe_id: str) -> bool:
        """A dead-lettered input (``f:``/``e:`` id). Returns True when it had been folded already (dead
        letters come after their input): the caller then takes it back out with ``unfold_*``."""
        if dedupe_id in self._rejected:
            return False
        self._rejected.add(dedupe_id)
        return dedupe_id in self._seen

    def unfold_fill(self, account_id: str, instrument: str, side: int, size: Decimal) -> None:
        acct = self._account(account_id)
        signed = size if side == 1 else -size
        new = acct.positions.get(instrument, ZERO) - signed
        if new == 0:
            acct.positions.pop(instrument, None)
        else:
            acct.positions[instrument] = new
        acct.inputs -= 1
        self.fills -= 1
        self.touched.add(account_id)

    def unfold_event(self, account_id: str) -> None:
        self._account(account_id).inputs -= 1
        self.touched.add(account_id)

    def seen(self, dedupe_id: str) -> bool:
        return dedupe_id in self._seen

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched


def compare(expected: dict[str, AccountFold], observed: dict[str, Observed],
            accounts: list[str] | set[str] | None = None) -> list[Mismatch]:
    """Every difference between the fold and what the service shows, for ``accounts`` (default: all
    the fold knows). An account without inputs is not expected to exist."""
    out: list[Mismatch] = []
    for account_id in sorted(accounts if accounts is not None else expected):
        exp = expected.get(account_id)
        if exp is None or exp.inputs == 0:
            continue
        got = observed.get(account_id)
        if got is None:
            out.append(Mismatch(account_id, "missing", f"revision {exp.inputs}", "no account"))
            continue
        if got.revision != exp.inputs:
            out.append(Mismatch(account_id, "revision", str(exp.inputs), str(got.revision)))
        for instrument in sorted(set(exp.positions) | set(got.positions)):
            want = exp.positions.get(instrument, ZERO)
            have = got.positions.get(instrument, ZERO)
            if want != have:
                out.append(Mismatch(account_id, "position", f"{instrument} {want}", f"{instrument} {have}"))
    return out
