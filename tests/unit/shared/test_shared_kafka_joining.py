"""ProtoConsumer.joining: a group member without partitions, or one its coordinator asks to join again,
is joining (its loop then polls long enough for the join's round trips); one holding its partitions is not,
whatever the client's internals do."""

from __future__ import annotations

from types import SimpleNamespace

from marginflow.shared.kafka import ProtoConsumer


class Coordinator:
    def __init__(self, rejoin) -> None:
        self.rejoin = rejoin

    def need_rejoin(self):
        if isinstance(self.rejoin, Exception):
            raise self.rejoin
        return self.rejoin


def joining(assignment, coordinator) -> bool:
    raw = SimpleNamespace(assignment=lambda: assignment, _coordinator=coordinator)
    return ProtoConsumer(raw, {}, None, "test").joining()


def test_a_member_without_partitions_or_asked_to_rejoin_is_joining():
    assert joining(set(), Coordinator(False))
    assert joining({("calls", 0)}, Coordinator(True))


def test_a_member_holding_its_partitions_is_not_whatever_the_client_internals():
    assert not joining({("calls", 0)}, Coordinator(False))
    assert not joining({("calls", 0)}, None)
    assert not joining({("calls", 0)}, Coordinator(RuntimeError("internal changed")))
