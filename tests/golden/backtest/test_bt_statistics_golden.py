"""Worked examples of the backtest statistics; every expected number is derived in the comments.

Kupiec (1995) POF, Christoffersen (1998) independence / conditional coverage, BCBS (1996) traffic
light. Natural logs; 0·ln 0 = 0. χ² tail: χ²(1).sf(x) = erfc(√(x/2)), χ²(2).sf(x) = e^{−x/2}.
"""

from __future__ import annotations

import math

import pytest

from marginflow.backtest.domain.statistics import (GREEN, RED, YELLOW, christoffersen, kupiec_pof, traffic_light,
                                                   traffic_light_blocks, traffic_light_bounds, transition_counts)


def test_kupiec_five_exceptions_in_250_at_99():
    # n = 250, x = 5, p = 0.01, p̂ = 0.02
    # ln L0 = 245·ln 0.99 + 5·ln 0.01 = 245·(−0.0100503) + 5·(−4.6051702) = −2.4623333 − 23.0258509 = −25.4881842
    # ln L1 = 245·ln 0.98 + 5·ln 0.02 = 245·(−0.0202027) + 5·(−3.9120230) = −4.9496642 − 19.5601150 = −24.5097792
    # LR = −2·(−25.4881842 + 24.5097792) = 1.9568100;  p = erfc(√(1.95681/2)) = 0.16185
    k = kupiec_pof([True] * 5 + [False] * 245, 0.01)
    assert (k.n, k.exceptions, k.expected) == (250, 5, 2.5)
    assert k.lr == pytest.approx(1.9568098, abs=1e-6)
    assert k.p_value == pytest.approx(math.erfc(math.sqrt(k.lr / 2)), rel=1e-12)
    assert k.p_value == pytest.approx(0.161855, abs=1e-6)
    assert k.passes(0.05)


def test_kupiec_no_exception_is_rejected_as_over_coverage_when_n_is_large_enough():
    # x = 0: ln L1 = 0 (p̂ = 0, every term 0·ln 0 or n·ln 1), ln L0 = n·ln 0.99
    # n = 281: LR = −2·281·(−0.0100503) = 5.6482887 > 3.841 (χ²(1) 95 %): rejected, p = 0.017472
    k = kupiec_pof([False] * 281, 0.01)
    assert k.lr == pytest.approx(5.6482887, abs=1e-6)
    assert k.p_value == pytest.approx(0.0174724, abs=1e-6)
    assert not k.passes(0.05)
    # n = 250: LR = −2·250·ln 0.99 = 5.0251679 — also rejected (p = 0.02498); n = 200: 4.0201 → p = 0.04497
    assert kupiec_pof([0] * 250, 0.01).lr == pytest.approx(5.0251679, abs=1e-6)
    assert kupiec_pof([0] * 150, 0.01).passes(0.05)    # 3.0151 < 3.841


def test_kupiec_every_observation_an_exception():
    # x = n = 4, p = 0.5: ln L0 = 4·ln 0.5 = −2.7725887, ln L1 = 4·ln 1 = 0 → LR = 5.5451774
    assert kupiec_pof([1, 1, 1, 1], 0.5).lr == pytest.approx(5.5451774, abs=1e-6)


def test_christoffersen_hits_that_do_not_cluster():
    # 0 0 1 1 0 0 0 1 0 0 — pairs: 00 01 11 10 00 00 01 10 00 → n00 = 4, n01 = 2, n10 = 2, n11 = 1
    # π01 = 2/6 = 1/3 and π11 = 1/3 = π = 3/9: the likelihoods are equal, LR_ind = 0, p_ind = 1
    # Kupiec at p = 0.1 (x = 3, n = 10, p̂ = 0.3):
    # ln L0 = 7·ln 0.9 + 3·ln 0.1 = −0.7375236 − 6.9077553 = −7.6452789
    # ln L1 = 7·ln 0.7 + 3·ln 0.3 = −2.4967246 − 3.6119184 = −6.1086430 → LR_pof = 2·1.5366359 = 3.0732717
    # LR_cc = 3.0732717 + 0 → p_cc = e^{−3.0732717/2} = 0.215104
    seq = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    assert transition_counts(seq) == (4, 2, 2, 1)
    c = christoffersen(seq, 0.1)
    assert c.lr_ind == pytest.approx(0.0, abs=1e-12)
    assert c.p_ind == pytest.approx(1.0)
    assert c.lr_cc == pytest.approx(3.0732717, abs=1e-6)
    assert c.p_cc == pytest.approx(0.215104, abs=1e-6)
    assert c.p_cc == pytest.approx(math.exp(-c.lr_cc / 2), rel=1e-12)


def test_christoffersen_clustered_hits():
    # 0 0 0 0 0 0 1 1 1 0 — pairs: 00 ×5, 01, 11 ×2, 10 → n00 = 5, n01 = 1, n10 = 1, n11 = 2
    # π = 3/9 = 1/3, π01 = 1/6, π11 = 2/3
    # ln L(π)   = (5+1)·ln(2/3) + (1+2)·ln(1/3) = 6·(−0.4054651) + 3·(−1.0986123) = −5.7286275
    # ln L(π01, π11) = 5·ln(5/6) + ln(1/6) + ln(1/3) + 2·ln(2/3)
    #           = −0.9116078 − 1.7917595 − 1.0986123 − 0.8109302 = −4.6129098
    # LR_ind = 2·(5.7286275 − 4.6129098) = 2.2314355, p_ind = erfc(√1.1157178) = 0.135228
    # LR_cc at p = 0.1 adds Kupiec's 3.0732717 (x = 3 of 10 again): 5.3047072, p_cc = e^{−2.6523536} = 0.070485
    c = christoffersen([0] * 6 + [1, 1, 1] + [0], 0.1)
    assert (c.n00, c.n01, c.n10, c.n11) == (5, 1, 1, 2)
    assert c.lr_ind == pytest.approx(2.2314355, abs=1e-6)
    assert c.p_ind == pytest.approx(0.135228, abs=1e-6)
    assert c.lr_cc == pytest.approx(5.3047072, abs=1e-6)
    assert c.p_cc == pytest.approx(0.070485, abs=1e-6)


def test_christoffersen_without_any_hit_is_independent():
    # only 00 pairs: π = π01 = 0, both likelihoods 1 → LR_ind = 0
    c = christoffersen([0] * 50, 0.01)
    assert (c.n00, c.lr_ind, c.p_ind) == (49, 0.0, 1.0)


@pytest.mark.parametrize("exceptions, zone", [(0, GREEN), (4, GREEN), (5, YELLOW), (9, YELLOW), (10, RED), (25, RED)])
def test_traffic_light_bcbs_1996_boundaries_at_99_over_250(exceptions, zone):
    # BCBS 1996 Table 2: cumulative probability of x exceptions in 250 at 99 %:
    # x = 4: 89.22 % (green), 5: 95.88 % (≥ 95 %: yellow), 9: 99.97 % (yellow), 10: 99.99 % (≥ 99.99 %: red)
    assert traffic_light(exceptions, 250, 0.01) == zone


def test_traffic_light_bounds_and_blocks():
    assert traffic_light_bounds(250, 0.01) == (5, 10)
    # 500 observations at 99 %: expected 5; P(X ≤ 8) = 0.9329, P(X ≤ 9) = 0.9689 → yellow from 9
    assert traffic_light_bounds(500, 0.01)[0] == 9
    hits = [False] * 750
    for i in (3, 10, 20, 30, 40):          # block 1: 5 exceptions → yellow
        hits[i] = True
    for i in range(260, 270):              # block 2: 10 → red; block 3: none → green
        hits[i] = True
    assert traffic_light_blocks(hits, 0.01) == [(0, 5, YELLOW), (250, 10, RED), (500, 0, GREEN)]


def test_bad_arguments():
    with pytest.raises(ValueError):
        kupiec_pof([0, 1], 0.0)
    with pytest.raises(ValueError):
        christoffersen([0, 2], 0.01)
    with pytest.raises(ValueError):
        traffic_light(-1)
