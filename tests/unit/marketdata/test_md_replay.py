"""Parsing of replay CSV rows."""

from __future__ import annotations

import math

from marginflow.marketdata.adapters.replay import BadRow, parse_ts, read_ticks


def test_ts_in_epoch_ms_and_iso(tmp_path):
    assert parse_ts("1764000000000") == 1_764_000_000_000
    assert parse_ts("2025-11-24T16:00:00Z") == 1_764_000_000_000
    assert parse_ts("2025-11-24T16:00:00.250") == 1_764_000_000_250   # naive = UTC


def test_rows_with_empty_book_fields_header_and_bad_rows(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(
        "ts,instrument,price,bid,ask,bid_size,ask_size\n"
        "1764000000000,BTC-PERP,60000,59999,60001,2,3\n"
        "2025-11-24T16:00:01Z,BTC-PERP,60010,,,,\n"
        "1764000002000,BTC-PERP,nan\n"
        "notatime,BTC-PERP,1\n"
        "1764000003000,BTC-PERP,abc,,,,\n"
        "1764000004000,,100\n"
        "1764000005000\n"
        "1764000006,BTC-PERP,1\n"
        "\n")
    rows = list(read_ticks(path))
    good = [r for r in rows if not isinstance(r, BadRow)]
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert [(t.event_time_ms, t.price, t.bid, t.ask_size) for t in good[:2]] == [
        (1_764_000_000_000, 60000.0, 59999.0, 3.0), (1_764_000_001_000, 60010.0, 0.0, 0.0)]
    assert math.isnan(good[2].price)          # parsed; the validator rejects it with its own reason
    assert [b.line for b in bad] == [5, 6, 7, 8, 9]
    assert "seconds" in bad[-1].reason
    assert good[0].source == "replay:ticks.csv" and good[0].line == 2
