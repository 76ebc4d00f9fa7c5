"""Bad input on every consumed topic: random bytes, another message type, a 1 MiB payload, NaN/inf,
negative and empty fields, unknown instruments/accounts/assets, a key that contradicts the payload.

Each case goes through the consuming service's real decode path — the shared ProtoConsumer and
DeadLetterSink (kafka-python's consumer and producer replaced by in-memory fakes), then the
service's codec and validation — and must end as exactly one dead letter with its reason on the
service's own dead-letter topic, counted in ``marginflow_dead_letters_total``; a valid record
right after it is still applied. One test per topic and kind.
"""

from __future__ import annotations

import dataclasses
import math
import random
from decimal import Decimal

import pytest
from kafka import TopicPartition
from prometheus_client import REGISTRY

from marginflow.api.account.v1 import account_pb2
from marginflow.api.common.v1 import common_pb2
from marginflow.api.marketdata.v1 import marketdata_pb2
from marginflow.api.risk.v1 import risk_pb2
from marginflow.margin.adapters import codec as margin_codec
from marginflow.margin.adapters.kafka_io import market_types
from marginflow.margin.adapters.open_interest import OpenInterestReader
from marginflow.margin.domain.horizon import OpenInterestBook
from marginflow.margin.domain.scenarios import build_scenarios
from marginflow.margin.service import instrument_table
from marginflow.marketdata.adapters.kafka_io import KafkaMarketSink
from marginflow.marketdata.adapters.replay import BadRow, read_ticks
from marginflow.marketdata.application import MarketDataApp
from marginflow.marketdata.domain.marks import MarkConfig, MarkEngine
from marginflow.marketdata.domain.validation import TickValidator
from marginflow.portfolio.adapters.codec import SnapshotEncoder
from marginflow.portfolio.adapters.kafka_io import KafkaRecordSource, input_types
from marginflow.portfolio.application import Applier
from marginflow.portfolio.service import ledger_rules
from marginflow.portfolio.settings import PortfolioSettings
from marginflow.riskparams.adapters.kafka_io import DeadLetterPort
from marginflow.riskparams.adapters.codec import decode_marks, decode_ticks
from marginflow.riskparams.application import (EngineConfig, Market, NullMetrics, RiskEngine,
                                               RiskParamsService)
from marginflow.shared.clock import ManualClock
from marginflow.shared.config import DEFAULT_MAX_MESSAGE_BYTES, Topics, load
from marginflow.shared.errors import Rejected
from marginflow.shared.kafka import DeadLetterSink, ProtoConsumer
from marginflow.shared.universe import load_universe

T0 = 1_764_000_000_000
TOPICS = Topics("bad.")
UNIVERSE = load_universe(None, T0)
MIB = 1024 * 1024
# Fixed bytes from a seeded generator, led by 0xff (field 31, wire type 7: never valid protobuf).
RANDOM_BYTES = b"\xff" + random.Random(20261201).randbytes(255)


# ---- the fakes under the real ProtoConsumer / DeadLetterSink -----------------------------------

@dataclasses.dataclass
class Record:
    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int = T0


class FakeKafkaConsumer:
    """kafka-python's consumer: one poll returns the records given, then nothing."""

    def __init__(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        self._batch = {TopicPartition(topic, 0): [Record(k, v, i) for i, (k, v) in enumerate(records)]}

    def poll(self, timeout_ms: int = 0, max_records: int = 0):
        batch, self._batch = self._batch, {}
        return batch


class CapturingProducer:
    """The ProtoProducer behind a DeadLetterSink (and marketdata's sink): records kept in memory."""

    def __init__(self) -> None:
        self.letters: list[tuple[str, common_pb2.DeadLetter]] = []
        self.published: list[tuple[str, bytes, bytes]] = []

    def send_raw(self, topic, key, value, partition=None):
        self.letters.append((topic, common_pb2.DeadLetter.FromString(value)))

    def send_many(self, topic, records):
        self.published.extend((topic, k, v) for k, v in records)
        return []

    def flush(self, timeout=None):
        pass


def counted(service: str, topic: str, reason: str) -> float:
    return REGISTRY.get_sample_value("marginflow_dead_letters_total",
                                     {"service": service, "topic": topic, "reason": reason}) or 0.0


# ---- payload builders --------------------------------------------------------------------------

def tick(instrument="BTC-PERP", price=60000.0, t=T0, **kw) -> marketdata_pb2.Tick:
    msg = marketdata_pb2.Tick(instrument=instrument, price=price, **kw)
    msg.meta.event_time_ms = t
    return msg


def mark(instrument="BTC-PERP", underlying="BTC", index=60000.0, mark_price=60010.0, t=T0, **kw):
    msg = marketdata_pb2.Mark(instrument=instrument, underlying=underlying, index_price=index,
                              mark_price=mark_price, half_spread_frac=0.0001, depth_contracts=10.0, **kw)
    msg.meta.event_time_ms = t
    return msg


def dec(text: str) -> common_pb2.Decimal:
    return common_pb2.Decimal(value=text)


def fill(account="acct-1", instrument="BTC-PERP", size="0.01", price="60000", fill_id="f-1", side=1):
    msg = account_pb2.Fill(fill_id=fill_id, account_id=account, instrument=instrument, side=side,
                           size=dec(size), price=dec(price), fee_usd=dec("0"))
    msg.meta.event_time_ms = T0
    return msg


def deposit(account="acct-1", asset="USDC", amount="100", event_id="e-1"):
    msg = account_pb2.AccountEvent(event_id=event_id, account_id=account)
    msg.deposit.asset = asset
    msg.deposit.amount.value = amount
    msg.meta.event_time_ms = T0
    return msg


def withdrawal(account="acct-1", asset="USDC", amount="100", event_id="e-2"):
    msg = account_pb2.AccountEvent(event_id=event_id, account_id=account)
    msg.withdrawal.asset = asset
    msg.withdrawal.amount.value = amount
    msg.meta.event_time_ms = T0
    return msg


def mode_change(account="acct-1", instrument="BTC-PERP", event_id="e-3"):
    msg = account_pb2.AccountEvent(event_id=event_id, account_id=account)
    msg.mode_change.instrument = instrument
    msg.mode_change.mode = account_pb2.MARGIN_MODE_ISOLATED
    msg.meta.event_time_ms = T0
    return msg


def snapshot(account="acct-1", instrument="BTC-PERP", size="1", entry="60000", usdc="10000", asset="USDC"):
    msg = account_pb2.AccountSnapshot(account_id=account, revision=1)
    msg.balances.add(asset=asset).amount.value = usdc
    p = msg.positions.add(instrument=instrument, mode=account_pb2.MARGIN_MODE_CROSS)
    p.size.value = size
    p.entry_price.value = entry
    return msg


def contribution(instrument="BTC-PERP", partition=0, long="12.5", short="12.5", offset=40):
    return account_pb2.OpenInterestContribution(instrument=instrument, source_partition=partition,
                                                long_contracts=dec(long), short_contracts=dec(short),
                                                fills_offset=offset)


def risk_params(sigma=0.5, underlyings=("BTC", "ETH", "SOL"), hist=(-0.1, 0.0, 0.1), version=1):
    msg = risk_pb2.RiskParams(version=version, es_confidence=0.99)
    msg.meta.event_time_ms = T0
    for u in underlyings:
        msg.underlyings.add(underlying=u, sigma_margin=sigma, index_price=1.0)
        msg.grids.add(underlying=u, price_shocks=[-0.1, 0.0, 0.1], vol_shocks=[0.0], tail_price_shocks=[-0.2],
                      tail_vol_shocks=[0.0], tail_weights=[0.5], horizon_seconds=86400.0)
    msg.historical.underlyings.extend(underlyings)
    msg.historical.count = len(hist)
    msg.historical.returns.extend([h for h in hist for _ in underlyings])
    return msg


def oversized(msg, field: str) -> bytes:
    """``msg`` with a string field padded until the payload is just over the 1 MiB limit."""
    big = type(msg)()
    big.CopyFrom(msg)
    *path, name = field.split(".")
    target = big
    for part in path:
        target = getattr(target, part)
    setattr(target, name, "x" * MIB)
    data = big.SerializeToString()
    assert len(data) > DEFAULT_MAX_MESSAGE_BYTES
    return data


def b(msg) -> bytes:
    return msg.SerializeToString()


# ---- the consumers -----------------------------------------------------------------------------

class RiskParamsConsumer:
    """riskparams: md.ticks and md.marks through RiskParamsService with its real codec."""

    service = "riskparams"
    dlq = TOPICS.riskparams_dlq

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = CapturingProducer()
        market = Market.from_universe(UNIVERSE, ("BTC", "ETH", "SOL"))
        self.svc = RiskParamsService(
            RiskEngine(EngineConfig(underlyings=("BTC", "ETH", "SOL")), market),
            decode_ticks=decode_ticks, decode_marks=decode_marks, store=_NullStore(), publisher=None,
            dead_letters=DeadLetterPort(DeadLetterSink(self.producer, self.dlq, self.service)),
            metrics=NullMetrics(), clock_ms=lambda: T0, ticks_topic=TOPICS.ticks, marks_topic=TOPICS.marks)

    def feed(self, records) -> None:
        values, keys = [v for _, v in records], [k for k, _ in records]
        (self.svc.on_ticks if self.topic == TOPICS.ticks else self.svc.on_marks)(values, keys)

    def valid(self):
        if self.topic == TOPICS.ticks:
            return b"ETH-PERP", b(tick("ETH-PERP", 3210.0, T0 + 5))
        return b"index:ETH", b(mark("index:ETH", "ETH", 3210.0, 3210.0, T0 + 5))

    def applied(self) -> bool:
        eth = self.svc.engine.units["ETH"]
        return (eth.sampler.last_price if self.topic == TOPICS.ticks else eth.index_price) == 3210.0


class _NullStore:
    def write(self, changes): ...
    def items(self): return {}


class PortfolioConsumer:
    """portfolio: trades.fills and account.events through KafkaRecordSource and the Applier."""

    service = "portfolio"
    dlq = TOPICS.portfolio_dlq

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = CapturingProducer()
        self.state: dict[str, bytes] = {}
        self.rules = ledger_rules(load(PortfolioSettings, {}), UNIVERSE)
        self._records: list = []

    def feed(self, records) -> None:
        # A funded account with an open position exists before the bad record arrives.
        setup = [(b"acct-1", b(deposit(amount="10000", event_id="e-0")))] if self.topic == TOPICS.account_events \
            else [(b"acct-1", b(fill(fill_id="f-0")))]
        self._run(setup + list(records))

    def _run(self, records) -> None:
        sink = DeadLetterSink(self.producer, self.dlq, self.service)
        source = KafkaRecordSource(ProtoConsumer(FakeKafkaConsumer(self.topic, records), input_types(TOPICS), sink,
                                                 self.service), self.producer, TOPICS)
        applier = Applier(self.rules, _MemoryStore(self.state), _NullSnapshots(), source, SnapshotEncoder(),
                          ManualClock(T0))
        applier.apply_batch(source.poll())

    def valid(self):
        if self.topic == TOPICS.fills:
            return b"acct-2", b(fill(account="acct-2", fill_id="f-9"))
        return b"acct-2", b(deposit(account="acct-2", amount="77", event_id="e-9"))

    def applied(self) -> bool:
        if "acct-2" not in self.state:
            return False
        acct = SnapshotEncoder().decode(self.state["acct-2"])
        if self.topic == TOPICS.fills:
            return acct.positions["BTC-PERP"].size == Decimal("0.01")
        return acct.balance("USDC") == Decimal("77")


@dataclasses.dataclass
class _MemoryStore:
    data: dict

    def load_payloads(self, account_ids):
        return {a: self.data[a] for a in account_ids if a in self.data}

    def save(self, changes):
        for c in changes:
            self.data[c.account.account_id] = c.payload


class _NullSnapshots:
    def publish(self, changes): ...


class MarginConsumer:
    """margin: md.marks, risk.params and portfolio.positions through ProtoConsumer and the margin
    codec, as the service's loop does (a risk version also through the scenario build that decides
    whether it can be used)."""

    service = "margin"
    dlq = TOPICS.margin_dlq

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = CapturingProducer()
        self.table = instrument_table(UNIVERSE)
        self.assets = {a: i for i, a in enumerate(("USDC", "USDT", "BTC", "ETH", "SOL"))}
        self.accepted: list = []

    def feed(self, records) -> None:
        types = {**market_types(TOPICS), TOPICS.positions: account_pb2.AccountSnapshot}
        consumer = ProtoConsumer(FakeKafkaConsumer(self.topic, list(records)), types,
                                 DeadLetterSink(self.producer, self.dlq, self.service), self.service)
        for rec in consumer.poll():
            try:
                if rec.topic == TOPICS.marks:
                    value = margin_codec.mark_from_proto(rec.value, self.table, rec.key)
                elif rec.topic == TOPICS.risk_params:
                    value = margin_codec.risk_params_from_proto(rec.value)
                    build_scenarios(value, list(self.table.underlyings))
                else:
                    value = margin_codec.book_from_proto(rec.value, self.table, self.assets, rec.key)
            except Rejected as exc:
                consumer.reject(rec, exc)
                continue
            self.accepted.append(value)

    def valid(self):
        if self.topic == TOPICS.marks:
            return b"ETH-PERP", b(mark("ETH-PERP", "ETH", 3210.0, 3210.0))
        if self.topic == TOPICS.risk_params:
            return b"current", b(risk_params(version=2))
        return b"acct-2", b(snapshot(account="acct-2", size="3"))

    def applied(self) -> bool:
        if len(self.accepted) != 1:
            return False
        value = self.accepted[0]
        if self.topic == TOPICS.marks:
            return value.mark_price == 3210.0
        if self.topic == TOPICS.risk_params:
            return value.version == 2
        return value.account_id == "acct-2" and list(value.size) == [3.0]


class _AssignedFake(FakeKafkaConsumer):
    """The fake as a consumer assigned to its one partition (the open interest reader assigns itself)."""

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, tps): ...
    def seek_to_beginning(self, *tps): ...

    def end_offsets(self, tps):
        return {tp: 0 for tp in tps}


class OpenInterestConsumer:
    """margin: portfolio.open_interest through the OpenInterestReader into the open interest book."""

    service = "margin"
    dlq = TOPICS.margin_dlq

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = CapturingProducer()
        self.table = instrument_table(UNIVERSE)
        self.book = OpenInterestBook(self.table.n)

    def feed(self, records) -> None:
        reader = OpenInterestReader(_AssignedFake(self.topic, list(records)), self.topic, self.table, self.book,
                                    DeadLetterSink(self.producer, self.dlq, self.service), 1.0,
                                    DEFAULT_MAX_MESSAGE_BYTES)
        reader.poll()

    def valid(self):
        return b"ETH-PERP/1", b(contribution("ETH-PERP", 1, "3.5", "3.5"))

    def applied(self) -> bool:
        k = self.table.index["ETH-PERP"]
        return self.book.sides(k) == (Decimal("3.5"), Decimal("3.5")) and \
            all(self.book.sides(j) == (0, 0) for j in range(self.table.n) if j != k)


class ReplayConsumer:
    """marketdata: rows of a replay file through read_ticks, the validator and KafkaMarketSink."""

    service = "marketdata"
    dlq = TOPICS.ticks_dlq
    topic = "replay"

    def __init__(self, path) -> None:
        self.path = path
        self.producer = CapturingProducer()
        sink = KafkaMarketSink(self.producer, DeadLetterSink(self.producer, self.dlq, self.service), TOPICS.ticks,
                               TOPICS.marks, "replay:bad.csv")
        self.app = MarketDataApp(TickValidator(UNIVERSE), MarkEngine(UNIVERSE, MarkConfig(interval_ms=0)), sink,
                                 ManualClock(T0))

    def feed(self, rows: list[bytes]) -> None:
        lines = [b"ts,instrument,price,bid,ask,bid_size,ask_size", f"{T0},ETH-PERP,3000,2999,3001,1,1".encode(),
                 *rows]
        self.path.write_bytes(b"\n".join(lines) + b"\n")
        for row in read_ticks(self.path):
            if isinstance(row, BadRow):
                self.app.bad_row(row.line, row.text, row.reason)
            else:
                self.app.process([row])

    def valid(self) -> bytes:
        return f"{T0 + 1000},ETH-PERP,3001,3000,3002,1,1".encode()

    def applied(self) -> bool:
        published = [marketdata_pb2.Tick.FromString(v) for t, _k, v in self.producer.published if t == TOPICS.ticks]
        return [p.price for p in published] == [3000.0, 3001.0]


# ---- the cases: (topic, kind) -> (key, payload, expected reason) -----------------------------

NAN, INF = math.nan, math.inf

TICKS = {
    "random_bytes": (b"BTC-PERP", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"acct-1", b(fill()), "malformed"),         # a Fill: wire types clash
    "one_mib": (b"BTC-PERP", oversized(tick(), "instrument"), "oversized"),
    "nan_price": (b"BTC-PERP", b(tick(price=NAN)), "non_finite_price"),
    "inf_price": (b"BTC-PERP", b(tick(price=INF)), "non_finite_price"),
    "negative_price": (b"BTC-PERP", b(tick(price=-1.0)), "non_positive_price"),
    "implausible_price": (b"BTC-PERP", b(tick(price=1e300)), "implausible"),
    "negative_event_time": (b"BTC-PERP", b(tick(t=-5)), "bad_event_time"),
    "empty_payload": (b"BTC-PERP", b"", "empty_payload"),
    "empty_instrument": (None, b(tick(instrument="")), "missing_field"),
    "unknown_instrument": (b"DOGE-PERP", b(tick("DOGE-PERP")), "unknown_instrument"),
    "key_contradicts_payload": (b"ETH-PERP", b(tick("BTC-PERP")), "key_mismatch"),
}
RP_MARKS = {
    "random_bytes": (b"BTC-PERP", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"BTC-PERP", b(tick()), "underlying_mismatch"),   # a Tick read as a Mark
    "one_mib": (b"BTC-PERP", oversized(mark(), "instrument"), "oversized"),
    "nan_index": (b"BTC-PERP", b(mark(index=NAN)), "non_finite_mark"),
    "inf_implied_vol": (b"BTC-PERP", b(mark(implied_vol=INF)), "non_finite_mark"),
    "negative_index": (b"BTC-PERP", b(mark(index=-1.0)), "non_finite_mark"),
    "implausible_implied_vol": (b"BTC-PERP", b(mark(implied_vol=1e6)), "implausible"),
    "negative_event_time": (b"BTC-PERP", b(mark(t=-5)), "bad_event_time"),
    "empty_payload": (b"BTC-PERP", b"", "empty_payload"),
    "empty_instrument": (None, b(mark(instrument="")), "missing_field"),
    "unknown_instrument": (b"DOGE-PERP", b(mark("DOGE-PERP")), "unknown_instrument"),
    "wrong_underlying": (b"BTC-PERP", b(mark(underlying="ETH")), "underlying_mismatch"),
    "key_contradicts_payload": (b"ETH-PERP", b(mark()), "key_mismatch"),
}
FILLS = {
    "random_bytes": (b"acct-1", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"acct-1", b(tick()), "bad_side"),            # a Tick read as a Fill
    "one_mib": (b"acct-1", oversized(fill(), "order_id"), "oversized"),
    "nan_size": (b"acct-1", b(fill(size="NaN")), "non_finite"),
    "inf_price": (b"acct-1", b(fill(price="Infinity")), "non_finite"),
    "malformed_decimal": (b"acct-1", b(fill(size="1,5")), "bad_decimal"),
    "negative_size": (b"acct-1", b(fill(size="-1")), "non_positive_size"),
    "negative_price": (b"acct-1", b(fill(price="-60000")), "non_positive_price"),
    "empty_payload": (b"acct-1", b"", "empty_payload"),
    "empty_fill_id": (b"acct-1", b(fill(fill_id="")), "missing_id"),
    "unknown_instrument": (b"acct-1", b(fill(instrument="DOGE-PERP")), "unknown_instrument"),
    "malformed_account": (b"bad id {x}", b(fill(account="bad id {x}")), "bad_account_id"),
    "key_contradicts_payload": (b"acct-7", b(fill()), "key_mismatch"),
}
EVENTS = {
    "random_bytes": (b"acct-1", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"BTC-PERP", b(tick()), "empty_event"),       # a Tick read as an AccountEvent
    "one_mib": (b"acct-1", oversized(deposit(), "event_id"), "oversized"),
    "nan_amount": (b"acct-1", b(deposit(amount="NaN")), "non_finite"),
    "inf_amount": (b"acct-1", b(deposit(amount="-Infinity")), "non_finite"),
    "negative_amount": (b"acct-1", b(deposit(amount="-5")), "non_positive_amount"),
    "empty_payload": (b"acct-1", b"", "empty_payload"),
    "empty_body": (b"acct-1", b(account_pb2.AccountEvent(event_id="e-5", account_id="acct-1")), "empty_event"),
    "unknown_asset": (b"acct-1", b(deposit(asset="DOGE")), "unknown_asset"),
    "unknown_instrument": (b"acct-1", b(mode_change(instrument="DOGE-PERP")), "unknown_instrument"),
    "unknown_account": (b"acct-404", b(withdrawal(account="acct-404")), "insufficient_balance"),
    "key_contradicts_payload": (b"acct-7", b(deposit()), "key_mismatch"),
}
MG_MARKS = {
    "random_bytes": (b"BTC-PERP", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"BTC-PERP", b(tick(bid=60000.0, ask=60010.0)), "underlying_mismatch"),
    "one_mib": (b"BTC-PERP", oversized(mark(), "instrument"), "oversized"),
    "nan_mark": (b"BTC-PERP", b(mark(mark_price=NAN)), "non_finite"),
    "inf_index": (b"index:BTC", b(mark("index:BTC", index=INF)), "non_finite"),
    "negative_mark": (b"BTC-PERP", b(mark(mark_price=-1.0)), "negative_value"),
    "empty_payload": (b"BTC-PERP", b"", "empty_payload"),
    "no_event_time": (b"BTC-PERP", b(mark(t=0)), "missing_field"),
    "unknown_instrument": (b"DOGE-PERP", b(mark("DOGE-PERP")), "unknown_instrument"),
    "wrong_underlying": (b"BTC-PERP", b(mark(underlying="ETH")), "underlying_mismatch"),
    "key_contradicts_payload": (b"ETH-PERP", b(mark()), "key_mismatch"),
}
PARAMS = {
    "random_bytes": (b"current", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"current", b(mark()), "malformed"),          # a Mark: wire types clash
    "one_mib": (b"current", oversized(risk_params(), "meta.source"), "oversized"),
    "nan_sigma": (b"current", b(risk_params(sigma=NAN)), "non_finite"),
    "inf_return": (b"current", b(risk_params(hist=(-0.1, INF))), "non_finite"),
    "negative_sigma": (b"current", b(risk_params(sigma=-0.5)), "negative_value"),
    "move_below_minus_100_percent": (b"current", b(risk_params(hist=(-1.5, 0.1))), "bad_risk_params"),
    "empty_payload": (b"current", b"", "empty_payload"),
    "no_historical_scenarios": (b"current", b(risk_params(hist=())), "bad_risk_params"),
    "unknown_underlyings_only": (b"current", b(risk_params(underlyings=("DOGE",))), "bad_risk_params"),
}
POSITIONS = {
    "random_bytes": (b"acct-1", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"acct-1", b(tick()), "key_mismatch"),        # a Tick: its instrument reads as account
    "one_mib": (b"acct-1", oversized(snapshot(), "account_id"), "oversized"),
    "nan_size": (b"acct-1", b(snapshot(size="NaN")), "non_finite"),
    "inf_balance": (b"acct-1", b(snapshot(usdc="Infinity")), "non_finite"),
    "balance_beyond_float": (b"acct-1", b(snapshot(usdc="1e400")), "implausible"),
    "malformed_decimal": (b"acct-1", b(snapshot(size="one")), "bad_decimal"),
    "negative_entry_price": (b"acct-1", b(snapshot(entry="-1")), "implausible"),
    "empty_payload": (b"acct-1", b"", "empty_payload"),
    "empty_account_id": (b"acct-1", b(snapshot(account="")), "missing_field"),
    "unknown_instrument": (b"acct-1", b(snapshot(instrument="DOGE-PERP")), "unknown_instrument"),
    "unknown_asset": (b"acct-1", b(snapshot(asset="DOGE")), "unknown_asset"),
    "key_contradicts_payload": (b"acct-7", b(snapshot()), "key_mismatch"),
}

OPEN_INTEREST = {
    "random_bytes": (b"BTC-PERP/0", RANDOM_BYTES, "malformed"),
    "other_message_type": (b"BTC-PERP/0", b(snapshot()), "key_mismatch"),   # its account id reads as instrument
    "one_mib": (b"BTC-PERP/0", oversized(contribution(), "instrument"), "oversized"),
    "empty_payload": (b"BTC-PERP/0", b"", "empty_payload"),
    "nan_long": (b"BTC-PERP/0", b(contribution(long="NaN")), "non_finite"),
    "inf_short": (b"BTC-PERP/0", b(contribution(short="Infinity")), "non_finite"),
    "malformed_decimal": (b"BTC-PERP/0", b(contribution(long="12,5")), "bad_decimal"),
    "negative_long": (b"BTC-PERP/0", b(contribution(long="-1")), "negative_value"),
    "negative_offset": (b"BTC-PERP/0", b(contribution(offset=-3)), "negative_value"),
    "implausible_short": (b"BTC-PERP/0", b(contribution(short="1e400")), "implausible"),
    "missing_long": (b"BTC-PERP/0", b(contribution(long="")), "missing_field"),
    "empty_instrument": (b"/0", b(contribution(instrument="")), "missing_field"),
    "unknown_instrument": (b"DOGE-PERP/0", b(contribution("DOGE-PERP")), "unknown_instrument"),
    "key_names_another_partition": (b"BTC-PERP/1", b(contribution()), "key_mismatch"),
    "key_names_another_instrument": (b"ETH-PERP/0", b(contribution()), "key_mismatch"),
    "no_key": (None, b(contribution()), "key_mismatch"),
}

KAFKA_CASES = [
    pytest.param(factory, topic, *case, id=f"{topic.removeprefix('bad.')}:{service}:{kind}")
    for factory, topic, service, cases in (
        (RiskParamsConsumer, TOPICS.ticks, "riskparams", TICKS),
        (RiskParamsConsumer, TOPICS.marks, "riskparams", RP_MARKS),
        (PortfolioConsumer, TOPICS.fills, "portfolio", FILLS),
        (PortfolioConsumer, TOPICS.account_events, "portfolio", EVENTS),
        (MarginConsumer, TOPICS.marks, "margin", MG_MARKS),
        (MarginConsumer, TOPICS.risk_params, "margin", PARAMS),
        (MarginConsumer, TOPICS.positions, "margin", POSITIONS),
        (OpenInterestConsumer, TOPICS.open_interest, "margin", OPEN_INTEREST),
    )
    for kind, case in cases.items()
]


@pytest.mark.parametrize("factory, topic, key, payload, reason", KAFKA_CASES)
def test_bad_record_is_dead_lettered_with_its_reason_and_the_next_one_applied(factory, topic, key, payload, reason):
    consumer = factory(topic)
    before = counted(consumer.service, consumer.dlq, reason)
    consumer.feed([(key, payload), consumer.valid()])
    letters = [(t, d.reason_code, d.service, d.source_topic) for t, d in consumer.producer.letters]
    assert letters == [(consumer.dlq, reason, consumer.service, topic)], consumer.producer.letters
    assert consumer.producer.letters[0][1].reason        # a readable detail beside the code
    assert counted(consumer.service, consumer.dlq, reason) == before + 1
    assert consumer.applied(), "the valid record after the bad one was not applied"


REPLAY_ROWS = {
    "random_bytes": (RANDOM_BYTES.replace(b"\n", b" "), "malformed_row"),
    "other_csv_shape": (b"f-1,acct-1,BTC-PERP,buy,0.5,60000", "malformed_row"),   # a fills export
    "one_mib_row": (b"1764000000500,BTC-PERP," + b"6" * MIB, "malformed_row"),
    "nul_bytes": (b"1764000000500,BTC\x00PERP,60000", "unknown_instrument"),
    "nan_price": (b"1764000000500,BTC-PERP,nan", "non_finite_price"),
    "inf_size": (b"1764000000500,BTC-PERP,60000,59999,60001,inf,1", "non_finite_price"),
    "negative_price": (b"1764000000500,BTC-PERP,-60000", "non_positive_price"),
    "implausible_price": (b"1764000000500,BTC-PERP,1e300", "implausible"),
    "negative_size": (b"1764000000500,BTC-PERP,60000,59999,60001,-1,1", "negative_size"),
    "empty_fields": (b"1764000000500,,", "malformed_row"),
    "unknown_instrument": (b"1764000000500,DOGE-PERP,1", "unknown_instrument"),
    "time_backwards": (b"1763999999000,ETH-PERP,3000", "time_backwards"),
}


@pytest.mark.parametrize("row, reason", list(REPLAY_ROWS.values()), ids=list(REPLAY_ROWS))
def test_bad_replay_row_is_dead_lettered_with_its_reason_and_the_next_one_applied(tmp_path, row, reason):
    consumer = ReplayConsumer(tmp_path / "bad.csv")
    before = counted(consumer.service, consumer.dlq, reason)
    consumer.feed([row, consumer.valid()])
    assert [(t, d.reason_code) for t, d in consumer.producer.letters] == [(consumer.dlq, reason)]
    assert counted(consumer.service, consumer.dlq, reason) == before + 1
    assert consumer.applied(), "the valid row after the bad one was not applied"


def test_a_dead_letter_of_a_payload_near_the_limit_stays_publishable():
    # A record just under the size limit passes the size check and is then rejected (its key
    # contradicts it): wrapped whole in a DeadLetter it would exceed the producer's 1 MiB request
    # size and fail the service, so the dead letter keeps its first 64 KiB and says so.
    consumer = MarginConsumer(TOPICS.positions)
    big = snapshot(account="acct-1")
    big.positions[0].instrument = "BTC-PERP"
    big.meta.source = "x" * (DEFAULT_MAX_MESSAGE_BYTES - 200)
    payload = b(big)
    assert DEFAULT_MAX_MESSAGE_BYTES - 200 < len(payload) <= DEFAULT_MAX_MESSAGE_BYTES
    consumer.feed([(b"acct-7", payload), consumer.valid()])
    [(_topic, letter)] = consumer.producer.letters
    assert letter.reason_code == "key_mismatch"
    assert len(letter.SerializeToString()) < 70 * 1024
    assert letter.payload == payload[:64 * 1024] and f"{len(payload)} bytes" in letter.reason
    assert consumer.applied()
