"""depth_distance: the C function against its numpy twin (random books and sizes, edges, layouts, inputs
left unmodified) and the same errors from both."""

from __future__ import annotations

import numpy as np
import pytest

from marginflow.margin.domain.liquidity import DepthTable, LiquidityRules
from marginflow.shared.depthcurve import DepthCurve

from marginflow.core import ccore, reference


def tables(rng, n_inst=6, buckets=7, empty_side=True, no_curve=True):
    curves = []
    for k in range(n_inst):
        dist = tuple(np.cumsum(rng.uniform(1, 60, buckets)).tolist())
        bid = np.cumsum(rng.uniform(0, 20, buckets) * (rng.random(buckets) < 0.8))   # some flat buckets
        ask = np.cumsum(rng.uniform(0, 20, buckets))
        if empty_side and k == 1:
            bid = np.zeros(buckets)
        curves.append(DepthCurve(dist, tuple(bid.tolist()), tuple(ask.tolist())))
    if no_curve:
        curves[-1] = None
    t = DepthTable(curves, rng.uniform(0, 3e-4, n_inst), rng.uniform(10, 100, n_inst), LiquidityRules(3.0),
                   kernel=reference.depth_distance)
    return dict(points_share=t.points_share, points_bps=t.points_bps, last_contracts=t.last_contracts,
                last_bps=t.last_bps, floor_bps=t.floor_bps, uncovered_penalty=3.0), t


def positions(rng, n_inst, n):
    size = rng.choice([-1.0, 1.0], n) * rng.lognormal(1.5, 1.5, n)
    size[::17] = 0.0
    return rng.integers(0, n_inst, n).astype(np.int32), size


@pytest.mark.parametrize("buckets", [1, 3, 7, 12])
def test_c_and_twin_agree_on_random_books_and_sizes(both, buckets):
    rng = np.random.default_rng(buckets)
    kw, _t = tables(rng, buckets=buckets)
    k, q = positions(rng, 6, 5000)
    c, ref = (impl.depth_distance(k, q, **kw) for impl in both)
    np.testing.assert_allclose(c, ref, rtol=1e-13, atol=0)
    assert np.all(np.isfinite(c)) and np.all(c >= 0)
    assert np.all(c[k == 5] == 0.0)           # no curve: nothing charged here (the core's add-on applies)


def test_sizes_exactly_at_the_points_are_covered_at_their_distance(both):
    curve = DepthCurve((5.0, 10.0, 25.0), (2.0, 2.0, 6.0), (1.0, 3.0, 3.0))
    t = DepthTable([curve], np.zeros(1), np.ones(1), LiquidityRules(4.0), kernel=reference.depth_distance)
    kw = dict(points_share=t.points_share, points_bps=t.points_bps, last_contracts=t.last_contracts,
              last_bps=t.last_bps, floor_bps=t.floor_bps, uncovered_penalty=4.0)
    k = np.zeros(6, dtype=np.int32)
    q = np.array([2.0, 2.5, 6.0, -3.0, -1.0, -6.0])
    # bids: 2 within 5 bp (the 10 bp bucket adds none), 2.5 between 10 and 25 bp, 6 at 25 bp;
    # asks: 3 at 10 bp, 1 at 5 bp, 6 beyond the curve: 25 · (1 + 4 · (1 − 3/6)) = 75 bp
    want = [5.0, 10.0 + 15.0 * 0.5 / 4.0, 25.0, 10.0, 5.0, 75.0]
    for impl in both:
        np.testing.assert_allclose(impl.depth_distance(k, q, **kw), want, rtol=1e-13)


def test_any_layout_and_inputs_unmodified(both):
    rng = np.random.default_rng(5)
    kw, _t = tables(rng)
    k, q = positions(rng, 6, 400)
    want = reference.depth_distance(k, q, **kw)
    fortran = {n: (np.asfortranarray(v) if isinstance(v, np.ndarray) else v) for n, v in kw.items()}
    strided_q = np.repeat(q, 2)[::2]
    before = {n: v.copy() for n, v in kw.items() if isinstance(v, np.ndarray)}
    for impl in both:
        np.testing.assert_allclose(impl.depth_distance(k, strided_q, **fortran), want, rtol=1e-13)
    for n, v in before.items():
        np.testing.assert_array_equal(kw[n], v)


def _raises_same(both, call):
    messages = []
    for impl in both:
        with pytest.raises((TypeError, ValueError)) as info:
            call(impl)
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1], messages
    return messages[0]


@pytest.mark.parametrize("change, exc, message", [
    (dict(instrument=np.zeros(3, dtype=np.int64)), TypeError, "instrument must have dtype int32"),
    (dict(size=np.zeros(2)), ValueError, "size must have shape (3,), got (2,)"),
    (dict(size=np.array([1.0, np.nan, 0.0])), ValueError, "size[1] must be finite"),
    (dict(instrument=np.array([0, 9, 0], dtype=np.int32)), ValueError, "instrument[1] = 9 is out of range [0, 6)"),
    (dict(points_share=np.zeros((12, 6))), ValueError, "points_bps must have shape (12, 6), got (12, 8)"),
    (dict(points_share=np.zeros((12, 6)), points_bps=np.zeros((12, 6))), ValueError,
     "points_share must have a power of two >= 2 of columns, got 6"),
    (dict(last_bps=np.zeros(11)), ValueError, "last_bps must have shape (12,), got (11,)"),
    (dict(floor_bps=np.full(6, -1.0)), ValueError, "floor_bps[0] must be finite and >= 0"),
    (dict(uncovered_penalty=-1.0), ValueError, "uncovered_penalty must be finite and >= 0"),
    (dict(uncovered_penalty="x"), TypeError, "uncovered_penalty must be a real number"),
    (dict(points_bps=np.full((12, 8), np.inf)), ValueError, "points_bps[0, 0] must be finite and >= 0"),
    (dict(size=[1.0, 2.0, 3.0]), TypeError, "size must be a numpy.ndarray, got list"),
])
def test_bad_input_same_error(both, change, exc, message):
    rng = np.random.default_rng(1)
    kw, _t = tables(rng)
    args = dict(instrument=np.zeros(3, dtype=np.int32), size=np.ones(3), **kw)
    args.update(change)
    got = _raises_same(both, lambda impl: impl.depth_distance(**args))
    assert got[0] is exc and message in got[1], got


def test_the_c_core_is_built():
    assert ccore is not None
