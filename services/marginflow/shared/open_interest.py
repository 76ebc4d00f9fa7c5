"""The key of ``portfolio.open_interest``: one record per (instrument, ``trades.fills`` partition).

The portfolio instance that owns a fills partition writes that partition's share of each
instrument's open interest under ``"<instrument>/<partition>"``; the readers (margin) sum the
partitions. One key per partition, not per instance, so an instance's share never has to be
subtracted again when a rebalance moves the partition: the new owner overwrites the same keys.
"""

from __future__ import annotations

SEPARATOR = "/"   # the partition follows the last one: a symbol may hold any character


def contribution_key(instrument: str, partition: int) -> str:
    return f"{instrument}{SEPARATOR}{partition}"


def parse_contribution_key(key: str) -> tuple[str, int] | None:
    """(instrument, partition) of a key, or None when it is not one."""
    instrument, sep, part = key.rpartition(SEPARATOR)
    if not sep or not instrument or not part.isdigit() or len(part) > 9:
        return None
    return instrument, int(part)
