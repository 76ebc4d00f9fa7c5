"""Exact money at the boundaries: decimal strings on the wire and in Redis, never floats.

Floats are for risk estimates. Where an estimate becomes money (a margin requirement published
as USD) it is rounded to the cent in the venue's favour: requirements up, equity down.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

from marginflow.shared.errors import Rejected

CENT = Decimal("0.01")


def parse_decimal(text: str, what: str) -> Decimal:
    """Parse a decimal string; a non-finite or malformed value is rejected with ``what`` in the reason."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        raise Rejected("bad_decimal", f"{what} is not a decimal number: {text!r}") from None
    if not value.is_finite():
        raise Rejected("non_finite", f"{what} is not finite: {text!r}")
    return value


def usd_up(value: float) -> Decimal:
    """A float USD requirement as a Decimal rounded up to the cent."""
    if not math.isfinite(value):
        raise ValueError(f"non-finite USD amount {value!r}")
    return Decimal(repr(value)).quantize(CENT, rounding=ROUND_CEILING)


def usd_down(value: float) -> Decimal:
    """A float USD amount the venue credits (equity) as a Decimal rounded down to the cent."""
    if not math.isfinite(value):
        raise ValueError(f"non-finite USD amount {value!r}")
    return Decimal(repr(value)).quantize(CENT, rounding=ROUND_FLOOR)


def cents_toward_floor(value: Decimal) -> Decimal:
    """An exact USD amount to the cent toward −∞: what the venue takes from an account (a fee)."""
    if not value.is_finite():
        raise ValueError(f"non-finite USD amount {value!r}")
    return value.quantize(CENT, rounding=ROUND_FLOOR)


def cents_toward_ceiling(value: Decimal) -> Decimal:
    """An exact USD amount to the cent toward +∞: what must be paid to make an account whole (a deficit)."""
    if not value.is_finite():
        raise ValueError(f"non-finite USD amount {value!r}")
    return value.quantize(CENT, rounding=ROUND_CEILING)
