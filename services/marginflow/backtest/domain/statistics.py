"""Backtest statistics of an exception ("hit") sequence: Kupiec, Christoffersen, Basel traffic light.

A hit is an observation whose realised loss exceeded the margin (``loss > margin``); ``p = 1 − coverage``
is the exception rate the margin claims. Log-likelihoods use ``0·ln 0 = 0``.

* Kupiec proportion of failures (P. Kupiec 1995, "Techniques for verifying the accuracy of risk
  measurement models", J. Derivatives 3(2), 73–84): with ``x`` hits in ``n`` observations,

  .. math:: LR_{pof} = -2\\ln\\big[(1-p)^{n-x}p^x\\big] + 2\\ln\\big[(1-\\hat p)^{n-x}\\hat p^x\\big],
            \\quad \\hat p = x/n,\\quad LR_{pof}\\sim\\chi^2(1)

* Christoffersen independence and conditional coverage (P. Christoffersen 1998, "Evaluating interval
  forecasts", International Economic Review 39(4), 841–862, §3): with ``n_ij`` the number of days in
  state ``i`` followed by state ``j`` (0 = no hit, 1 = hit), ``π_01 = n_01/(n_00+n_01)``,
  ``π_11 = n_11/(n_10+n_11)``, ``π = (n_01+n_11)/(n_00+n_01+n_10+n_11)``:

  .. math:: LR_{ind} = -2\\ln\\big[(1-\\pi)^{n_{00}+n_{10}}\\pi^{n_{01}+n_{11}}\\big]
            + 2\\ln\\big[(1-\\pi_{01})^{n_{00}}\\pi_{01}^{n_{01}}(1-\\pi_{11})^{n_{10}}\\pi_{11}^{n_{11}}\\big]
            \\sim\\chi^2(1)

  and ``LR_cc = LR_pof + LR_ind ~ χ²(2)`` (the usual sum; Christoffersen's eq. (10) conditions the
  first observation away, which changes ``LR_pof`` by one observation).

* Basel traffic light (BCBS 1996, "Supervisory framework for the use of backtesting in conjunction
  with the internal models approach to market risk capital requirements", Table 2): at 99 % over
  250 observations green 0–4 exceptions, yellow 5–9, red 10 or more. The zones are where the
  binomial cumulative probability ``P(X ≤ x)`` reaches 95 % (yellow) and 99.99 % (red); the same
  cut-offs give the zones for other observation counts and coverage levels.

p-values from ``scipy.stats.chi2``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom, chi2

GREEN, YELLOW, RED = "green", "yellow", "red"
YELLOW_CUMULATIVE = 0.95      # BCBS 1996: yellow from a cumulative probability of 95 %
RED_CUMULATIVE = 0.9999       # ... red from 99.99 %


def _xlogy(x: float, y: float) -> float:
    """``x·ln y`` with ``0·ln 0 = 0`` (a likelihood term that has no observations)."""
    return 0.0 if x == 0 else x * math.log(y)


def _hits(hits: ArrayLike) -> np.ndarray:
    h = np.asarray(hits)
    if h.ndim != 1:
        raise ValueError(f"hits must be 1-d, got shape {h.shape}")
    if h.dtype != bool:
        if not np.all((h == 0) | (h == 1)):
            raise ValueError("hits must be booleans or 0/1")
        h = h.astype(bool)
    return h


def _check_p(p: float) -> None:
    if not (0.0 < p < 1.0):
        raise ValueError(f"exception probability must lie in (0, 1), got {p!r}")


@dataclasses.dataclass(frozen=True)
class Kupiec:
    n: int
    exceptions: int
    expected: float          # n·p
    lr: float
    p_value: float

    def passes(self, significance: float = 0.05) -> bool:
        return self.p_value >= significance


def kupiec_pof(hits: ArrayLike, p: float) -> Kupiec:
    """Kupiec's proportion-of-failures test of ``hits`` against exception probability ``p``."""
    _check_p(p)
    h = _hits(hits)
    n, x = int(h.size), int(h.sum())
    if n == 0:
        return Kupiec(0, 0, 0.0, 0.0, 1.0)
    phat = x / n
    log_null = _xlogy(n - x, 1.0 - p) + _xlogy(x, p)
    log_alt = _xlogy(n - x, 1.0 - phat) + _xlogy(x, phat)
    lr = max(0.0, -2.0 * (log_null - log_alt))
    return Kupiec(n, x, n * p, lr, float(chi2.sf(lr, 1)))


@dataclasses.dataclass(frozen=True)
class Christoffersen:
    n00: int
    n01: int
    n10: int
    n11: int
    lr_ind: float
    p_ind: float
    lr_cc: float
    p_cc: float

    def passes(self, significance: float = 0.05) -> bool:
        """Both the independence and the conditional-coverage test not rejected."""
        return self.p_ind >= significance and self.p_cc >= significance


def transition_counts(hits: ArrayLike) -> tuple[int, int, int, int]:
    """``(n00, n01, n10, n11)`` over consecutive pairs of the sequence."""
    h = _hits(hits).astype(np.int64)
    if h.size < 2:
        return 0, 0, 0, 0
    pair = 2 * h[:-1] + h[1:]
    c = np.bincount(pair, minlength=4)
    return int(c[0]), int(c[1]), int(c[2]), int(c[3])


def christoffersen(hits: ArrayLike, p: float) -> Christoffersen:
    """Christoffersen's independence test and the conditional-coverage test (with Kupiec's POF)."""
    _check_p(p)
    n00, n01, n10, n11 = transition_counts(hits)
    total = n00 + n01 + n10 + n11
    if total == 0:
        lr_ind = 0.0
    else:
        pi = (n01 + n11) / total
        pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
        pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
        log_null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
        log_alt = (_xlogy(n00, 1.0 - pi01) + _xlogy(n01, pi01) + _xlogy(n10, 1.0 - pi11) + _xlogy(n11, pi11))
        lr_ind = max(0.0, -2.0 * (log_null - log_alt))
    lr_cc = kupiec_pof(hits, p).lr + lr_ind
    return Christoffersen(n00, n01, n10, n11, lr_ind, float(chi2.sf(lr_ind, 1)), lr_cc, float(chi2.sf(lr_cc, 2)))


def traffic_light_bounds(n: int, p: float) -> tuple[int, int]:
    """``(first yellow, first red)`` exception counts for ``n`` observations at probability ``p``.

    At ``n = 250, p = 0.01``: ``(5, 10)`` — BCBS 1996's table.
    """
    _check_p(p)
    if n <= 0:
        raise ValueError(f"need n > 0 observations, got {n}")
    k = np.arange(n + 1)
    cdf = binom.cdf(k, n, p)
    # a tiny tolerance: binom.cdf is exact to ~1e-15 and the BCBS cut-offs are round numbers
    yellow = int(np.argmax(cdf >= YELLOW_CUMULATIVE - 1e-12)) if np.any(cdf >= YELLOW_CUMULATIVE - 1e-12) else n + 1
    red = int(np.argmax(cdf >= RED_CUMULATIVE - 1e-12)) if np.any(cdf >= RED_CUMULATIVE - 1e-12) else n + 1
    return yellow, red


def traffic_light(exceptions: int, n: int = 250, p: float = 0.01) -> str:
    """Basel zone of ``exceptions`` in ``n`` observations (green / yellow / red)."""
    if exceptions < 0:
        raise ValueError("exceptions must be >= 0")
    yellow, red = traffic_light_bounds(n, p)
    if exceptions >= red:
        return RED
    if exceptions >= yellow:
        return YELLOW
    return GREEN


def traffic_light_blocks(hits: ArrayLike, p: float, block: int = 250) -> list[tuple[int, int, str]]:
    """Zone of each consecutive block of ``block`` observations: ``(start index, exceptions, zone)``.

    A last, shorter block is scored on its own length when it holds at least half a block.
    """
    h = _hits(hits)
    out = []
    for start in range(0, h.size, block):
        part = h[start:start + block]
        if part.size < block // 2:
            break
        x = int(part.sum())
        out.append((start, x, traffic_light(x, int(part.size), p)))
    return out
