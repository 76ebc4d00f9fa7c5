"""Exact money at the boundaries: decimal strings on the wire and in Redis, never floats.

Floats are for risk estimates. Where an estimate becomes money (a margin requirement published
as USD) it is rounded to the cent in the venue's favour: requirements up, equity down.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

import numpy as np

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


# Float estimates carry representation error (1.1 × 100 = 110.00000000000001): a hundred-millionth
# of a cent either side of a cent boundary counts as on it, so 1.1 rounds to 1.10, not 1.11.
CENT_TOLERANCE = 1e-9


def cents_up(usd: float) -> int:
    """A float USD requirement in whole cents, rounded up (the venue never asks for less than the risk)."""
    if not math.isfinite(usd):
        raise ValueError(f"non-finite USD amount {usd!r}")
    return math.ceil(usd * 100.0 - CENT_TOLERANCE)


def cents_down(usd: float) -> int:
    """A float USD amount the venue credits (equity) in whole cents, rounded down."""
    if not math.isfinite(usd):
        raise ValueError(f"non-finite USD amount {usd!r}")
    return math.floor(usd * 100.0 + CENT_TOLERANCE)


def cents_up_array(usd: np.ndarray) -> np.ndarray:
    """:func:`cents_up` element by element (float64 whole cents; non-finite stays non-finite)."""
    return np.ceil(usd * 100.0 - CENT_TOLERANCE)


def cents_down_array(usd: np.ndarray) -> np.ndarray:
    """:func:`cents_down` element by element (float64 whole cents)."""
    return np.floor(usd * 100.0 + CENT_TOLERANCE)


def usd_up(value: float) -> Decimal:
    """A float USD requirement as a Decimal rounded up to the cent (the same cents as :func:`cents_up`)."""
    return Decimal(cents_up(value)).scaleb(-2)


def usd_down(value: float) -> Decimal:
    """A float USD amount the venue credits (equity) as a Decimal rounded down to the cent."""
    return Decimal(cents_down(value)).scaleb(-2)


def cents_text(cents: int) -> str:
    """Whole cents as the wire's decimal string ("-12.34", "0.05", "9006.00"), without a Decimal."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def usd_up_text(value: float) -> str:
    """:func:`usd_up` as its decimal string (the hot path of the margin codec)."""
    return cents_text(cents_up(value))


def usd_down_text(value: float) -> str:
    """:func:`usd_down` as its decimal string."""
    return cents_text(cents_down(value))


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
