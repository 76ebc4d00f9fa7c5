"""Routing: decoded Kafka records to the margin use cases.

Market records (``md.marks``, ``risk.params``) and position snapshots (``portfolio.positions``)
arrive in batches. Marks of a batch are applied together; risk-parameter versions in version order,
only those newer than the one in force; snapshots together (incremental recalculation); accounts of
revoked partitions are forgotten. A record the application refuses goes to ``reject`` (the dead
letters) and the rest of its batch goes on. Decoders are ports: protobuf → domain values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from marginflow.margin.application.engine import MarginEngine
from marginflow.margin.domain.book import AccountBook
from marginflow.margin.domain.market import MarkUpdate
from marginflow.margin.domain.scenarios import RiskVersion
from marginflow.shared.errors import Rejected
from marginflow.shared.logs import get_logger

log = get_logger(__name__)


class Record(Protocol):
    topic: str
    partition: int
    key: str
    value: Any


class Router:
    def __init__(self, engine: MarginEngine, *, marks_topic: str, params_topic: str,
                 decode_mark: Callable[[Any, str], MarkUpdate], decode_params: Callable[[Any], RiskVersion],
                 decode_book: Callable[[Any, str], AccountBook],
                 reject: Callable[[Record | None, Rejected], None], fills_topic: str = "",
                 decode_fill: Callable[[Any], tuple[int, float, int]] | None = None) -> None:
        self.engine = engine
        self.fills_topic = fills_topic
        self._decode_fill = decode_fill
        self.marks_topic = marks_topic
        self.params_topic = params_topic
        self._decode_mark = decode_mark
        self._decode_params = decode_params
        self._decode_book = decode_book
        self._reject = reject
        self.partition_of: dict[str, int] = {}
        self.pending_params: list[Record] = []

    # ---- market
    def marks_and_params(self, records: Iterable[Record]) -> tuple[list[MarkUpdate], list[Record]]:
        marks: list[MarkUpdate] = []
        params: list[Record] = []
        fills: list[tuple[int, float, int]] = []
        for rec in records:
            if rec.topic == self.marks_topic:
                try:
                    marks.append(self._decode_mark(rec.value, rec.key))
                except Rejected as exc:
                    self._reject(rec, exc)
            elif self.fills_topic and rec.topic == self.fills_topic:
                try:
                    fills.append(self._decode_fill(rec.value))
                except Rejected as exc:
                    self._reject(rec, exc)
            else:
                params.append(rec)
        if fills:
            # the venue's traded volume: read when the model is (re)built, for the liquidation horizon
            self.engine.market.record_fills(fills)
        return marks, params

    def market(self, records: Sequence[Record]) -> int:
        marks, params = self.marks_and_params(records)
        self.engine.apply_marks(marks)
        self.risk_params(params)
        return len(records)

    def risk_params(self, records: Iterable[Record]) -> None:
        for rec in sorted(records, key=lambda r: r.value.version):
            if rec.value.version > self.engine.version:
                self.apply_params(rec.value, rec)

    def apply_params(self, msg: Any, record: Record | None) -> None:
        try:
            version = self._decode_params(msg)
            if self.engine.apply_risk_params(version):
                log.info("risk parameters applied", extra={"version": version.version})
        except Rejected as exc:
            self._reject(record, exc)

    # ---- positions
    def positions(self, records: Sequence[Record]) -> int:
        books = []
        for rec in records:
            try:
                book = self._decode_book(rec.value, rec.key)
            except Rejected as exc:
                self._reject(rec, exc)
                continue
            self.partition_of[book.account_id] = rec.partition
            books.append(book)
        if books:
            self.engine.apply_snapshots(books)
        return len(records)

    def revoke(self, partitions: set[int]) -> int:
        """Forget the accounts of revoked partitions (another instance owns them now)."""
        if not partitions:
            return 0
        gone = [a for a, p in self.partition_of.items() if p in partitions]
        self.engine.remove_accounts(gone)
        for a in gone:
            self.partition_of.pop(a, None)
        return len(gone)
