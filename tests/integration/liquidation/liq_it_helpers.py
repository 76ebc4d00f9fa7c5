"""Helpers of the liquidation integration tests (a module name of its own: test dirs have no packages)."""

from __future__ import annotations

import time

import grpc
from kafka import KafkaConsumer, TopicPartition

from marginflow.api.account.v1 import account_pb2
from marginflow.api.margin.v1 import margin_pb2, margin_pb2_grpc
from marginflow.shared.kafka import ProtoProducer, new_producer

ADMIN_TOKEN = "liq-admin-token"


def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition", interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


class Topic:
    """Reads a topic from the beginning, incrementally: ``records()`` = everything so far, decoded."""

    def __init__(self, bootstrap: str, topic: str, message_type) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        parts = wait_for(lambda: self._consumer.partitions_for_topic(topic), what=f"partitions of {topic}")
        tps = [TopicPartition(topic, p) for p in parts]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._type = message_type
        self.items: list = []

    def records(self) -> list:
        for records in self._consumer.poll(timeout_ms=100).values():
            self.items.extend((r.key.decode() if r.key else "", self._type.FromString(r.value)) for r in records)
        return [m for _k, m in self.items]

    def records_to_end(self, timeout_s: float = 30.0) -> list:
        """Everything published before the call: read until the consumer reaches the end offsets taken now
        (one poll may return nothing while the first fetch is under way)."""
        tps = list(self._consumer.assignment())
        end = self._consumer.end_offsets(tps)
        def caught_up() -> bool:
            self.records()
            return all(self._consumer.position(tp) >= end[tp] for tp in tps)

        wait_for(caught_up, timeout_s=timeout_s, what="the topic read to its end offsets")
        return [m for _k, m in self.items]

    def close(self) -> None:
        self._consumer.close()


class Publisher:
    def __init__(self, bootstrap: str) -> None:
        self._p = ProtoProducer(new_producer(bootstrap, "liq-test", linger_ms=0), "test")

    def send(self, topic: str, key: str, message) -> None:
        self._p.send(topic, key, message)
        self._p.flush()

    def close(self) -> None:
        self._p.close()


def deposit(account: str, usdc: str, event_id: str) -> account_pb2.AccountEvent:
    e = account_pb2.AccountEvent(event_id=event_id, account_id=account)
    e.deposit.asset = "USDC"
    e.deposit.amount.value = usdc
    e.meta.event_time_ms = int(time.time() * 1000)
    return e


def fill(fill_id: str, account: str, instrument: str, side: int, size: str, price: str) -> account_pb2.Fill:
    f = account_pb2.Fill(fill_id=fill_id, account_id=account, instrument=instrument,
                         side=account_pb2.SIDE_BUY if side > 0 else account_pb2.SIDE_SELL)
    f.size.value = size
    f.price.value = price
    f.fee_usd.value = "0"
    f.meta.event_time_ms = int(time.time() * 1000)
    return f


def trade(pub: Publisher, topic: str, tag: str, buyer: str, seller: str, instrument: str, size: str, price: str):
    """One trade: both sides' fills (the book stays balanced)."""
    pub.send(topic, buyer, fill(f"{tag}-b", buyer, instrument, 1, size, price))
    pub.send(topic, seller, fill(f"{tag}-s", seller, instrument, -1, size, price))


def margin_stub(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, margin_pb2_grpc.MarginServiceStub(channel)


def margin_of(stub, account: str):
    try:
        return stub.GetMargin(margin_pb2.GetMarginRequest(account_id=account), timeout=2)
    except grpc.RpcError:
        return None
