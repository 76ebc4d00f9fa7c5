"""The liquidation loop's group poll waits for the coordinator while its member joins (short polls cut each
join short and the member joined again after every join), and polls briefly once it holds its partitions."""

from __future__ import annotations

from types import SimpleNamespace

from marginflow.liquidation.service import LiquidationApp


class Coordinator:
    def __init__(self, rejoin) -> None:
        self.rejoin = rejoin

    def need_rejoin(self):
        if isinstance(self.rejoin, Exception):
            raise self.rejoin
        return self.rejoin


def joining(assignment, coordinator) -> bool:
    raw = SimpleNamespace(assignment=lambda: assignment, _coordinator=coordinator)
    return LiquidationApp._group_joining(SimpleNamespace(group=SimpleNamespace(raw=raw)))


def test_a_member_without_partitions_or_asked_to_rejoin_is_joining():
    assert joining(set(), Coordinator(False))
    assert joining({("calls", 0)}, Coordinator(True))


def test_a_member_holding_its_partitions_polls_briefly_whatever_the_client_internals():
    assert not joining({("calls", 0)}, Coordinator(False))
    assert not joining({("calls", 0)}, None)
    assert not joining({("calls", 0)}, Coordinator(RuntimeError("internal changed")))
