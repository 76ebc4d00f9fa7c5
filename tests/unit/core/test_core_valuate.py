"""valuate: the C kernel and the numpy twin agree (floats to 1e-9, states, flags and times exactly),
on hypothesis-generated books and on edge cases; bad input is rejected alike; inputs are left alone."""

from __future__ import annotations

import gc
import re
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_helpers import close
from marginflow.margin.domain.health import classify

NEVER = np.iinfo(np.int64).max
FLOAT_KEYS = ("collateral", "cross_pnl", "cross_equity", "cross_mm", "equity", "im", "mm", "pnl", "iso_equity",
              "iso_mm")
EXACT_KEYS = ("cross_state", "state", "fresh", "marks_time_ms", "iso_state")
DTYPES = {**{k: np.float64 for k in FLOAT_KEYS}, "cross_state": np.int8, "state": np.int8, "iso_state": np.int8,
          "fresh": np.bool_, "marks_time_ms": np.int64}
PER_POSITION = ("pnl", "iso_equity", "iso_mm", "iso_state")
NAMES = ("indptr", "instrument", "size", "entry", "isolated", "isolated_collateral", "isolated_im", "balances",
         "cross_im", "mm_factor", "mark", "contract_size", "mark_time_ms", "fresh", "unit_value", "asset_fresh",
         "asset_time_ms")

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def book(seed=0, n_acc=20, max_pos=8, n_inst=6, n_assets=3, iso_share=0.3, zero_share=0.1, stale_share=0.3,
         mm_factor=0.5):
    """A random book and market as a dict of valuate's arguments (amounts on whole cents, so
    that many equities and requirements fall on cent boundaries)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_pos + 1, n_acc)
    indptr = np.zeros(n_acc + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    nnz = int(indptr[-1])
    cents = lambda lo, hi, n: rng.integers(int(lo * 100), int(hi * 100) + 1, n) / 100.0  # noqa: E731
    size = rng.integers(-20, 21, nnz) / 4.0 * (rng.random(nnz) >= zero_share)
    isolated = (rng.random(nnz) < iso_share).astype(np.uint8)
    mark_time = rng.choice(np.array([0, 500, 990, 1000], np.int64), n_inst)
    asset_time = rng.choice(np.array([NEVER, 0, 800, 1000], np.int64), n_assets)
    return dict(
        indptr=indptr, instrument=rng.integers(0, n_inst, nnz).astype(np.int32), size=size,
        entry=cents(50, 150, nnz), isolated=isolated,
        isolated_collateral=np.where(isolated == 1, cents(0, 300, nnz), 0.0),
        isolated_im=np.where(isolated == 1, cents(0, 300, nnz), 0.0),
        balances=cents(-100, 500, (n_acc, n_assets)) * (rng.random((n_acc, n_assets)) < 0.6),
        cross_im=cents(0, 800, n_acc), mm_factor=mm_factor, mark=cents(50, 150, n_inst),
        contract_size=rng.choice([1.0, 0.1, 0.01, 10.0], n_inst), mark_time_ms=mark_time,
        fresh=rng.random(n_inst) >= stale_share, unit_value=rng.choice([1.0, 0.5, 60000.0, 3000.0, 0.0], n_assets),
        asset_fresh=rng.random(n_assets) >= stale_share, asset_time_ms=asset_time)


def run(impl, args, **kw):
    return impl.valuate(**args, **kw)


def assert_same(got, want):
    assert set(got) == set(want) == set(DTYPES)
    for key, dtype in DTYPES.items():
        assert got[key].dtype == want[key].dtype == dtype, key
        assert got[key].shape == want[key].shape, key
    for key in FLOAT_KEYS:
        close(got[key], want[key])
    for key in EXACT_KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def at_boundaries(args, out, rng):
    """The same book with requirements moved onto (or a rounding error either side of) the
    cent boundaries of the current equities: the states then hinge on the cent rule."""
    args = dict(args)
    nudges = np.array([0.0, 0.0, 1e-12, -1e-12, 0.01, -0.01, 0.005, 1e-7])
    eq = out["cross_equity"]
    target = np.round(eq, 2) + rng.choice(nudges, eq.shape)
    args["cross_im"] = np.where(rng.random(eq.shape) < 0.5, np.abs(target), np.abs(target) / args["mm_factor"])
    iso = args["isolated"] != 0
    ieq = out["iso_equity"]
    t_iso = np.abs(np.round(ieq, 2) + rng.choice(nudges, ieq.shape))
    args["isolated_im"] = np.where(iso, np.where(rng.random(ieq.shape) < 0.5, t_iso, t_iso / args["mm_factor"]), 0.0)
    return args


shapes = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n_acc": st.integers(0, 60),
    "max_pos": st.integers(0, 12),
    "n_inst": st.integers(1, 20),
    "n_assets": st.integers(0, 11),            # >= 8: numpy's pairwise summation of a balance row
    "iso_share": st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    "zero_share": st.sampled_from([0.0, 0.2, 1.0]),
    "stale_share": st.sampled_from([0.0, 0.3, 1.0]),
    "mm_factor": st.sampled_from([0.5, 0.6, 1.0]),
})


@FAST
@given(shape=shapes, n_threads=st.integers(1, 4))
def test_valuate_agrees_with_the_twin(both, shape, n_threads):
    c, ref = both
    args = book(**shape)
    want = run(ref, args)
    assert_same(run(c, args, n_threads=n_threads), want)
    edge = at_boundaries(args, want, np.random.default_rng(shape["seed"]))
    assert_same(run(c, edge, n_threads=n_threads), run(ref, edge))


@FAST
@given(shape=shapes)
def test_states_follow_the_platforms_cent_rule(impl, shape):
    """Every state is health.classify (shared.money's cents) of the amounts, the account's the worst."""
    args = book(**shape)
    edge = at_boundaries(args, run(impl, args), np.random.default_rng(shape["seed"] + 1))
    out = run(impl, edge)
    n = out["state"].shape[0]
    for i in range(n):
        assert out["cross_state"][i] == classify(float(out["cross_equity"][i]), float(edge["cross_im"][i]),
                                                 float(out["cross_mm"][i]), bool(out["fresh"][i]))
    owner = np.repeat(np.arange(n), np.diff(edge["indptr"]))
    iso = (edge["isolated"] != 0) & (edge["size"] != 0)
    for j in np.flatnonzero(iso):
        assert out["iso_state"][j] == classify(float(out["iso_equity"][j]), float(edge["isolated_im"][j]),
                                               float(out["iso_mm"][j]), bool(out["fresh"][owner[j]]))
    assert np.all(out["iso_state"][~iso] == 0)
    worst = out["cross_state"].copy()
    np.maximum.at(worst, owner[iso], out["iso_state"][iso])
    np.testing.assert_array_equal(out["state"], worst)
    close(out["mm"], edge["mm_factor"] * out["im"])


def test_worked_example(impl):
    """A BTC perp marked 100 USD (fresh) and a stale ETH perp; USDC and BTC (stale price) collateral."""
    args = dict(
        indptr=np.array([0, 1, 2, 2, 4, 5], np.int64),
        instrument=np.array([0, 0, 0, 1, 0], np.int32),
        size=np.array([2.0, -1.0, 1.0, 0.0, 3.0]),
        entry=np.array([90.0, 90.0, 100.0, 50.0, 110.0]),
        isolated=np.array([0, 0, 1, 0, 1], np.uint8),
        isolated_collateral=np.array([0.0, 0.0, 10.0, 0.0, 25.0]),
        isolated_im=np.array([0.0, 0.0, 8.0, 0.0, 30.0]),
        balances=np.array([[100.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 0.0], [20.0, 0.001]]),
        cross_im=np.array([120.0, 30.0, 0.0, 0.0, 0.0]),
        mm_factor=0.5,
        mark=np.array([100.0, 60.0]), contract_size=np.array([1.0, 1.0]),
        mark_time_ms=np.array([1000, 400], np.int64), fresh=np.array([True, False]),
        unit_value=np.array([1.0, 100.0]), asset_fresh=np.array([True, False]),
        asset_time_ms=np.array([NEVER, 700], np.int64))
    out = run(impl, args)
    # 0: 100 USDC + 2 x (100 - 90) = 120 USD against an IM of 120: HEALTHY.
    # 1: short 1 from 90: -10 USD, no collateral, IM 30 (MM 15): BANKRUPT.
    # 2: no positions, 5 USDC, no IM: HEALTHY; no mark used: time 0.
    # 3: isolated long 1 at 100 with 10 USD (IM 8) and a zero-size ETH row: not held, so the stale
    #    ETH mark does not count.
    # 4: isolated long 3 from 110 at 100: 25 - 30 = -5 USD against IM 30, below zero, but the
    #    account's BTC collateral has a stale price: MARGIN_CALL, never liquidation on stale prices.
    close(out["collateral"], [100.0, 0.0, 5.0, 0.0, 20.1])
    close(out["cross_pnl"], [20.0, -10.0, 0.0, 0.0, 0.0])
    close(out["pnl"], [20.0, -10.0, 0.0, 0.0, -30.0])
    close(out["iso_equity"], [0.0, 0.0, 10.0, 0.0, -5.0])
    close(out["iso_mm"], [0.0, 0.0, 4.0, 0.0, 15.0])
    np.testing.assert_array_equal(out["cross_state"], [1, 4, 1, 1, 1])
    np.testing.assert_array_equal(out["iso_state"], [0, 0, 1, 0, 2])
    np.testing.assert_array_equal(out["state"], [1, 4, 1, 1, 2])
    np.testing.assert_array_equal(out["fresh"], [True, True, True, True, False])
    np.testing.assert_array_equal(out["marks_time_ms"], [1000, 1000, 0, 1000, 700])
    close(out["equity"], [120.0, -10.0, 5.0, 10.0, 15.1])
    close(out["im"], [120.0, 30.0, 0.0, 8.0, 30.0])
    close(out["mm"], [60.0, 15.0, 0.0, 4.0, 15.0])


def test_cent_rule_at_the_boundary(impl):
    """1.1 x 100 = 110.00000000000001: 1.10 USD of equity against 1.10 of IM is HEALTHY (shared.money);
    a 1e-7 USD shortfall is a whole cent."""
    base = book(n_acc=3, max_pos=0, n_assets=1)
    args = dict(base, balances=np.array([[1.1], [1.0999999], [1.1]]), unit_value=np.array([1.0]),
                asset_fresh=np.array([True]), asset_time_ms=np.array([NEVER], np.int64),
                cross_im=np.array([1.1, 1.1, 1.1000001]), mm_factor=1.0)
    out = run(impl, args)
    np.testing.assert_array_equal(out["state"], [1, 3, 3])
    np.testing.assert_array_equal(out["marks_time_ms"], [0, 0, 0])


def test_no_accounts(impl):
    args = book(n_acc=0)
    out = run(impl, args, n_threads=2)
    for key, dtype in DTYPES.items():
        assert out[key].shape == (0,) and out[key].dtype == dtype, key


def test_accounts_without_positions_and_without_assets(impl):
    args = book(n_acc=5, max_pos=0, n_assets=0)
    assert args["balances"].shape == (5, 0)
    out = run(impl, args)
    np.testing.assert_array_equal(out["collateral"], 0.0)
    np.testing.assert_array_equal(out["equity"], 0.0)
    np.testing.assert_array_equal(out["fresh"], True)
    np.testing.assert_array_equal(out["marks_time_ms"], 0)
    # no equity against a cross IM: below MM on fresh marks, 0 cents is not < 0: LIQUIDATION (or HEALTHY at IM 0)
    np.testing.assert_array_equal(out["state"], np.where(args["cross_im"] > 0, 3, 1))


def test_all_isolated_and_all_zero_sizes(both):
    c, ref = both
    for kw in (dict(iso_share=1.0), dict(iso_share=1.0, zero_share=1.0), dict(zero_share=1.0)):
        args = book(seed=4, n_acc=40, **kw)
        assert_same(run(c, args, n_threads=3), run(ref, args))
    out = run(c, book(seed=4, n_acc=40, iso_share=1.0))
    np.testing.assert_array_equal(out["cross_pnl"], 0.0)


def test_large_book_threads_agree(both):
    """Crosses the C kernel's chunks (16,384 positions + accounts) and thread split points, with a
    run of empty accounts and one very large account."""
    c, ref = both
    args = book(seed=8, n_acc=20000, max_pos=12, n_inst=40, n_assets=9)
    rng = np.random.default_rng(1)
    big, empties = 40000, 30000
    n = args["indptr"].shape[0] - 1
    args["indptr"] = np.concatenate([args["indptr"], np.full(empties, args["indptr"][-1]),
                                     [args["indptr"][-1] + big]])
    for key, gen in (("instrument", lambda: rng.integers(0, 40, big).astype(np.int32)),
                     ("size", lambda: rng.normal(0, 3, big)), ("entry", lambda: rng.uniform(50, 150, big)),
                     ("isolated", lambda: (rng.random(big) < 0.2).astype(np.uint8)),
                     ("isolated_collateral", lambda: rng.uniform(0, 50, big)),
                     ("isolated_im", lambda: rng.uniform(0, 50, big))):
        args[key] = np.concatenate([args[key], gen()])
    extra = empties + 1
    args["balances"] = np.concatenate([args["balances"], rng.uniform(0, 10, (extra, 9))])
    args["cross_im"] = np.concatenate([args["cross_im"], rng.uniform(0, 10, extra)])
    assert args["indptr"].shape[0] - 1 == n + extra
    want = run(ref, args)
    base = run(c, args, n_threads=1)
    assert_same(base, want)
    for n_threads in (2, 3, 8):
        got = run(c, args, n_threads=n_threads)
        for key in got:
            np.testing.assert_array_equal(got[key], base[key], err_msg=key)   # threads split accounts only


@FAST
@given(shape=shapes, cuts=st.lists(st.integers(0, 60), max_size=6), n_threads=st.integers(1, 3))
def test_rows_into_out_is_the_whole_pass(both, shape, cuts, n_threads):
    """A pass in row slices written into one set of arrays equals one whole pass, in both implementations;
    the elements outside the rows computed so far are left as they were."""
    from marginflow.core.reference import valuate_out

    args = book(**shape)
    n, nnz = args["indptr"].shape[0] - 1, int(args["indptr"][-1])
    want = run(both[1], args)
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    for impl in both:
        out = valuate_out(n, nnz)
        for key, v in out.items():
            v[...] = 7 if v.dtype != np.bool_ else True
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            got = impl.valuate(**args, n_threads=n_threads, rows=(lo, hi), out=out)
            assert got is out
            p_hi = int(args["indptr"][hi])
            for key in out:
                rest = out[key][p_hi:] if key in PER_POSITION else out[key][hi:]
                assert (rest == (True if rest.dtype == np.bool_ else 7)).all(), key   # not written yet
        assert_same(out, want)
        whole = valuate_out(n, nnz)
        assert impl.valuate(**args, out=whole) is whole      # out without rows: the whole book
        assert_same(whole, want)


def test_rows_and_out_are_checked(both):
    from marginflow.core.reference import valuate_out

    n, nnz = BOOK["indptr"].shape[0] - 1, NNZ
    good = valuate_out(n, nnz)
    short = dict(good, pnl=np.empty(nnz - 1))
    wrong_dtype = dict(good, state=np.empty(n, np.int64))
    frozen = {k: v.copy() for k, v in good.items()}
    frozen["equity"].flags.writeable = False
    cases = [(dict(rows=(0, n)), ValueError, "rows needs out"),
             (dict(rows=(2, 1), out=good), ValueError, r"rows \(2, 1\) must satisfy 0 <= lo <= hi <= 6"),
             (dict(rows=(0, n + 1), out=good), ValueError, "must satisfy"),
             (dict(rows=(-1, 2), out=good), ValueError, "must satisfy"),
             (dict(rows=[0, 1], out=good), TypeError, r"rows must be a tuple \(lo, hi\)"),
             (dict(rows=(0, 1, 2), out=good), TypeError, "rows must be a tuple"),
             (dict(rows=(0, 1), out=[]), TypeError, "out must be a dict"),
             (dict(rows=(0, 1), out=short), ValueError, r"out\[pnl\] must be a writeable contiguous float64 array"),
             (dict(out=wrong_dtype), ValueError, r"out\[state\] must be a writeable contiguous int8 array of length 6"),
             (dict(out=frozen), ValueError, r"out\[equity\] must be a writeable"),
             (dict(out={k: v for k, v in good.items() if k != "mm"}), ValueError, r"out\[mm\]")]
    for kwargs, exc, message in cases:
        errors = []
        for impl in both:
            with pytest.raises(exc) as info:
                impl.valuate(**BOOK, **kwargs)
            errors.append(str(info.value))
        assert errors[0] == errors[1], kwargs
        assert re.search(message, errors[0]), errors[0]
    # a bad value inside the rows is reported as in a whole pass (its index in the whole book)
    j = int(BOOK["indptr"][3])
    bad = dict(BOOK, entry=_set(BOOK["entry"], j, np.nan))
    rows = (2, 5) if BOOK["indptr"][4] > j else (0, n)
    for impl in both:
        with pytest.raises(ValueError, match=re.escape(f"entry[{j}] must be finite")):
            impl.valuate(**bad, rows=rows, out=valuate_out(n, nnz))


def test_bool_and_uint8_flags_and_any_layout_are_the_same(impl):
    args = book(seed=5, n_acc=50)
    want = run(impl, args)
    odd = dict(args, isolated=args["isolated"].astype(bool), fresh=args["fresh"].astype(np.uint8) * 3,
               asset_fresh=args["asset_fresh"].astype(np.uint8),
               balances=np.asfortranarray(args["balances"]), size=np.repeat(args["size"], 2)[::2],
               mark=np.repeat(args["mark"], 3)[1::3], instrument=np.repeat(args["instrument"], 2)[1::2])
    assert not odd["size"].flags.c_contiguous
    got = run(impl, odd)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_inputs_are_not_modified(impl):
    args = book(seed=6, n_acc=30)
    arrays = [v for v in args.values() if isinstance(v, np.ndarray)]
    before = [(a.copy(), a.flags.writeable, a.strides) for a in arrays]
    out = run(impl, args, n_threads=2)
    for a, (copy, writeable, strides) in zip(arrays, before):
        np.testing.assert_array_equal(a, copy)
        assert a.flags.writeable == writeable and a.strides == strides
    for v in out.values():      # fresh arrays, not views of the inputs
        assert not any(np.shares_memory(v, a) for a in arrays)


def test_no_reference_leaks(impl):
    args = book(seed=7, n_acc=30)
    bad = dict(args, size=args["size"] * np.nan)
    watched = [v for v in args.values() if isinstance(v, np.ndarray)]

    def work():
        run(impl, args, n_threads=2)
        try:
            run(impl, bad)
        except ValueError:
            pass

    work()
    gc.collect()
    refs = [sys.getrefcount(a) for a in watched]
    tracemalloc.start()
    try:
        for _ in range(3):
            work()
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            work()
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(a) for a in watched] == refs
    assert end - base < 64 * 1024, f"traced memory grew by {end - base} bytes over 100 rounds"


# ------------------------------------------------------------------------- validation

BOOK = book(seed=3, n_acc=6, max_pos=5, n_inst=4, n_assets=2)
NNZ = int(BOOK["indptr"][-1])


def _set(a, idx, value):
    a = a.copy()
    a[idx] = value
    return a


def with_(**changes):
    return dict(BOOK, **changes)


VALIDATION_CASES = [
    (with_(indptr=BOOK["indptr"].astype(np.int32)), TypeError, "indptr must have dtype int64, got int32"),
    (with_(indptr=np.zeros(0, np.int64)), ValueError, "indptr must have at least 1 element"),
    (with_(instrument=list(BOOK["instrument"])), TypeError, "instrument must be a numpy.ndarray, got list"),
    (with_(instrument=BOOK["instrument"].astype(np.int64)), TypeError, "instrument must have dtype int32, got int64"),
    (with_(size=BOOK["size"][:-1]), ValueError, rf"size must have shape \({NNZ},\), got \({NNZ - 1},\)"),
    (with_(entry=BOOK["entry"].astype(np.float32)), TypeError, "entry must have dtype float64, got float32"),
    (with_(isolated=BOOK["isolated"].astype(np.int8)), TypeError, "isolated must have dtype uint8 or bool, got int8"),
    (with_(isolated_collateral=BOOK["isolated_collateral"][:, None]), ValueError,
     "isolated_collateral must be 1-D, got 2-D"),
    (with_(isolated_im=BOOK["isolated_im"].astype(">f8")), TypeError, "isolated_im must have dtype float64, got >f8"),
    (with_(balances=BOOK["balances"][:, 0]), ValueError, "balances must be 2-D, got 1-D"),
    (with_(balances=BOOK["balances"][:-1]), ValueError, r"balances must have shape \(6, 2\), got \(5, 2\)"),
    (with_(cross_im=BOOK["cross_im"][:-1]), ValueError, r"cross_im must have shape \(6,\), got \(5,\)"),
    (with_(mm_factor="0.5"), TypeError, "mm_factor must be a real number"),
    (with_(mm_factor=None), TypeError, "mm_factor must be a real number"),
    (with_(mark=BOOK["mark"].astype(np.int64)), TypeError, "mark must have dtype float64, got int64"),
    (with_(contract_size=BOOK["contract_size"][:-1]), ValueError, r"contract_size must have shape \(4,\), got \(3,\)"),
    (with_(mark_time_ms=BOOK["mark_time_ms"].astype(np.float64)), TypeError,
     "mark_time_ms must have dtype int64, got float64"),
    (with_(fresh=BOOK["fresh"][:2]), ValueError, r"fresh must have shape \(4,\), got \(2,\)"),
    (with_(unit_value=BOOK["unit_value"][:1]), ValueError, r"unit_value must have shape \(2,\), got \(1,\)"),
    (with_(asset_fresh=None), TypeError, "asset_fresh must be a numpy.ndarray, got NoneType"),
    (with_(asset_time_ms=BOOK["asset_time_ms"].astype(np.int32)), TypeError,
     "asset_time_ms must have dtype int64, got int32"),
    (with_(indptr=BOOK["indptr"] + 1), ValueError, r"indptr\[0\] must be 0"),
    (with_(indptr=_set(BOOK["indptr"], 3, 0)), ValueError, r"indptr must be non-decreasing: indptr\[3\] < indptr\[2\]"),
    (with_(indptr=_set(BOOK["indptr"], -1, NNZ - 1)), ValueError,
     rf"indptr\[-1\] = {NNZ - 1} must equal the number of positions {NNZ}"),
    (with_(instrument=_set(BOOK["instrument"], 7, 4)), ValueError, r"instrument\[7\] = 4 is out of range \[0, 4\)"),
    (with_(instrument=_set(BOOK["instrument"], 2, -1)), ValueError, r"instrument\[2\] = -1 is out of range"),
    (with_(size=_set(BOOK["size"], 5, np.nan)), ValueError, r"size\[5\] must be finite"),
    (with_(entry=_set(BOOK["entry"], 0, np.inf)), ValueError, r"entry\[0\] must be finite"),
    (with_(isolated_collateral=_set(BOOK["isolated_collateral"], 3, -np.inf)), ValueError,
     r"isolated_collateral\[3\] must be finite"),
    (with_(isolated_im=_set(BOOK["isolated_im"], 9, np.nan)), ValueError, r"isolated_im\[9\] must be finite"),
    (with_(balances=_set(BOOK["balances"], (4, 1), np.nan)), ValueError, r"balances\[4, 1\] must be finite"),
    (with_(cross_im=_set(BOOK["cross_im"], 5, np.inf)), ValueError, r"cross_im\[5\] must be finite"),
    (with_(mm_factor=0.0), ValueError, r"mm_factor must be in \(0, 1\]"),
    (with_(mm_factor=float("nan")), ValueError, r"mm_factor must be in \(0, 1\]"),
    (with_(mark=_set(BOOK["mark"], 1, np.nan)), ValueError, r"mark\[1\] must be finite"),
    (with_(contract_size=_set(BOOK["contract_size"], 3, np.inf)), ValueError, r"contract_size\[3\] must be finite"),
    (with_(unit_value=_set(BOOK["unit_value"], 0, np.nan)), ValueError, r"unit_value\[0\] must be finite"),
    # argument order decides between faults: the first bad argument, its first bad element
    (with_(size=_set(BOOK["size"], 9, np.nan), entry=_set(BOOK["entry"], 1, np.nan)), ValueError,
     r"size\[9\] must be finite"),
    (with_(cross_im=_set(BOOK["cross_im"], 0, np.nan), mark=_set(BOOK["mark"], 0, np.nan)), ValueError,
     r"cross_im\[0\] must be finite"),
    (with_(mark=_set(BOOK["mark"], 0, np.nan), instrument=_set(BOOK["instrument"], 8, 9)), ValueError,
     r"instrument\[8\] = 9 is out of range"),
    (with_(mm_factor=2.0, unit_value=_set(BOOK["unit_value"], 0, np.nan)), ValueError, r"mm_factor must be in"),
    (with_(mark=np.zeros(0), contract_size=np.zeros(0), mark_time_ms=np.zeros(0, np.int64),
           fresh=np.zeros(0, bool)), ValueError, r"instrument\[0\] = \d+ is out of range \[0, 0\)"),
]


@pytest.mark.parametrize("kwargs, exc, message", VALIDATION_CASES)
def test_valuate_rejects(both, kwargs, exc, message):
    errors = []
    for impl in both:
        with pytest.raises(exc) as info:
            impl.valuate(**kwargs)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert re.search(message, errors[0]), errors[0]


def test_valuate_rejects_bad_n_threads(both):
    for impl in both:
        with pytest.raises(ValueError, match="n_threads must be >= 1"):
            impl.valuate(**BOOK, n_threads=0)
        with pytest.raises(TypeError, match="n_threads must be an integer"):
            impl.valuate(**BOOK, n_threads=1.5)
        with pytest.raises(TypeError):
            impl.valuate(*[BOOK[k] for k in NAMES], 2)           # n_threads is keyword-only


def test_error_found_by_a_worker_thread_is_raised(both):
    """Faults far into the book are met by the threads (GIL released) and raised after, the first
    bad argument first whatever the thread that met it."""
    args = book(seed=9, n_acc=30000, max_pos=12)
    nnz = int(args["indptr"][-1])
    bad = dict(args, size=_set(args["size"], nnz - 3, np.nan), entry=_set(args["entry"], 10, np.inf),
               balances=_set(args["balances"], (29990, 1), np.nan))
    msgs = []
    for impl in both:
        with pytest.raises(ValueError) as info:
            impl.valuate(**bad, n_threads=2)
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1] == f"size[{nnz - 3}] must be finite"


def test_positional_and_keyword_calls_are_the_same(impl):
    a = run(impl, BOOK)
    b = impl.valuate(*[BOOK[k] for k in NAMES], n_threads=1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_the_package_exports_valuate():
    import marginflow.core as core

    assert core.valuate is (core.ccore.valuate if core.IMPLEMENTATION == "c" else core.reference.valuate)
    assert "valuate" in core.__all__ and "valuate" in core.reference.__all__
