"""Replay of a CSV file of ticks: ``ts,instrument,price,bid,ask,bid_size,ask_size``.

``ts`` is epoch milliseconds or ISO-8601 (a naive time is UTC); bid, ask and the sizes may be
empty. A header line is recognised and skipped. A row that cannot be parsed (including bytes
that are not UTF-8 text and rows over ``MAX_ROW_BYTES``) becomes a :class:`BadRow`
(dead-lettered by the service with the line number), never an exception.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
import pathlib
from collections.abc import Iterator

from marginflow.marketdata.domain.ticks import RawTick

COLUMNS = ("ts", "instrument", "price", "bid", "ask", "bid_size", "ask_size")
# Longest row taken, bytes: a tick row is ~100; anything near this is not a tick.
MAX_ROW_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class BadRow:
    line: int
    text: str
    reason: str


def parse_ts(text: str) -> int:
    text = text.strip()
    if not text:
        raise ValueError("empty ts")
    if text.lstrip("-").isdigit():
        value = int(text)
        if value < 10**11:     # epoch seconds given: an epoch-ms value this small would be 1973
            raise ValueError(f"ts {text} looks like seconds, expected epoch milliseconds")
        return value
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(round(when.timestamp() * 1000))


def _num(text: str, name: str) -> float:
    text = text.strip()
    if not text:
        return 0.0
    value = float(text)   # 'nan'/'inf' parse; the validator rejects them with their own reason
    if name == "price" and math.isnan(value):
        return value
    return value


def parse_row(row: list[str], line: int, source: str) -> RawTick | BadRow:
    if len(row) < 3 or len(row) > len(COLUMNS):
        return BadRow(line, ",".join(row), f"expected 3 to {len(COLUMNS)} columns, got {len(row)}")
    row = row + [""] * (len(COLUMNS) - len(row))
    try:
        ts = parse_ts(row[0])
        instrument = row[1].strip()
        if not instrument:
            raise ValueError("empty instrument")
        if not row[2].strip():
            raise ValueError("empty price")
        price, bid, ask, bid_size, ask_size = (_num(row[i], COLUMNS[i]) for i in range(2, 7))
    except ValueError as exc:
        return BadRow(line, ",".join(row), str(exc))
    return RawTick(ts, instrument, price, bid, ask, bid_size, ask_size, source=source, line=line)


def _lines(fh) -> Iterator[tuple[bytes, bool]]:
    """``(line, whole)`` per line of a binary file; a line longer than MAX_ROW_BYTES is cut there
    (``whole`` False) and the rest of it skipped, so one huge line never sits in memory."""
    while True:
        chunk = fh.readline(MAX_ROW_BYTES + 1)
        if not chunk:
            return
        if len(chunk) <= MAX_ROW_BYTES or chunk.endswith(b"\n"):
            yield chunk, True
            continue
        while chunk and not chunk.endswith(b"\n"):
            chunk = fh.readline(1 << 16)
        yield b"", False


def read_ticks(path: str | pathlib.Path) -> Iterator[RawTick | BadRow]:
    """Every row of the file, parsed; what is not a tick row (bytes that are not UTF-8, a line over
    MAX_ROW_BYTES, a NUL, broken quoting) is a :class:`BadRow`, and the rows after it go on."""
    path = pathlib.Path(path)
    source = f"replay:{path.name}"
    with path.open("rb") as fh:
        for line, (raw, whole) in enumerate(_lines(fh), start=1):
            if not whole:
                yield BadRow(line, "", f"row longer than {MAX_ROW_BYTES} bytes")
                continue
            try:
                text = raw.decode("utf-8")
                rows = list(csv.reader([text]))
            except (UnicodeDecodeError, csv.Error) as exc:
                yield BadRow(line, raw[:200].decode("utf-8", "replace"), f"not a CSV row: {exc}")
                continue
            row = rows[0] if rows else []
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if line == 1 and row[0].strip().lower() == "ts":
                continue
            yield parse_row(row, line, source)
