"""The results table: one row per fault, as Markdown (the README's table) and for rich."""

from __future__ import annotations

import dataclasses

COLUMNS = ("fault", "to SERVING s", "to correct s", "to first output s", "fills checked", "accounts checked", "mismatches",
           "calls checked", "contradicting calls", "orders checked", "episodes started (judged)",
           "duplicate orders / unfounded episodes", "result")


@dataclasses.dataclass
class FaultResult:
    fault: str
    to_serving_s: float | None = None      # fault over → every service SERVING and answering queries
    to_correct_s: float | None = None      # fault over → positions equal the fold at the cut
    fills_checked: int = 0                 # distinct fills in the fold at the cut (cumulative)
    accounts_checked: int = 0
    mismatches: int = 0
    calls_checked: int = 0
    calls_recomputed: int = 0              # of which recomputed at the same account revision
    contradicting_calls: int = 0
    orders_checked: int = 0
    episodes_started: int = 0              # STARTED steps on liquidation.events
    episodes_judged: int = 0               # of which recomputed at their own inputs
    bad_orders: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    timed_out: bool = False
    to_output_s: float | None = None       # kill -9 → the restarted service's first record on its output topic

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.contradicting_calls or self.bad_orders or self.timed_out)

    def cells(self) -> list[str]:
        def secs(v: float | None) -> str:
            return "—" if v is None else f"{v:.1f}"
        return [self.fault, secs(self.to_serving_s), secs(self.to_correct_s), secs(self.to_output_s),
                f"{self.fills_checked:,}",
                f"{self.accounts_checked:,}", str(self.mismatches),
                f"{self.calls_checked:,} ({self.calls_recomputed:,} recomputed)", str(self.contradicting_calls),
                f"{self.orders_checked:,}", f"{self.episodes_started:,} ({self.episodes_judged:,})",
                str(self.bad_orders),
                "ok" if self.ok else ("TIMEOUT" if self.timed_out else "VIOLATION")]


def markdown(results: list[FaultResult], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r in results:
        lines.append("| " + " | ".join(r.cells()) + " |")
    notes = [f"- {r.fault}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
