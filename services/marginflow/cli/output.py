"""Output of the CLI: protobuf messages as plain JSON values, and rich tables for people.

Money stays the exact decimal string of the wire (``marginflow.common.v1.Decimal``) in both forms;
enum values are their short lower-case names (``HEALTH_STATE_MARGIN_CALL`` → ``margin_call``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

DECIMAL = "marginflow.common.v1.Decimal"


def enum_name(enum_type: Any, number: int) -> str:
    """Short name of an enum value: the type's ``*_UNSPECIFIED`` prefix removed, lower case."""
    value = enum_type.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = ""
    for candidate in enum_type.values:
        if candidate.name.endswith("UNSPECIFIED"):
            prefix = candidate.name[: -len("UNSPECIFIED")]
            break
    name = value.name[len(prefix):] if prefix and value.name.startswith(prefix) else value.name
    return name.lower()


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def _value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return plain(value)
    if field.enum_type is not None:
        return enum_name(field.enum_type, value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def plain(message: Any) -> Any:
    """A protobuf message as JSON-ready values, every field present (defaults included)."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == DECIMAL:
        return message.value
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
        elif _repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        elif field.message_type is not None and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def console(width: int | None = None) -> Console:
    """Console for tables: the terminal's width, or a wide fixed one when piped (no wrapping of tables)."""
    if width is None and not sys.stdout.isatty():
        width = int(os.environ.get("COLUMNS", "160"))
    return Console(width=width, highlight=False, soft_wrap=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          right: Sequence[str] = ()) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def kv(title: str | None, pairs: Iterable[tuple[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, show_edge=False, pad_edge=False, box=None)
    t.add_column("field", style="bold", no_wrap=True)
    t.add_column("value", no_wrap=True)
    for key, value in pairs:
        t.add_row(key, "" if value is None else str(value))
    return t


def ms_time(ms: int) -> str:
    """Epoch milliseconds as UTC ISO-8601 (empty for 0)."""
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds <= 0:
        return "0 s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def pct(x: float) -> str:
    return f"{x * 100:.2f} %"
