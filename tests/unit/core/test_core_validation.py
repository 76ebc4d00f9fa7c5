"""Bad input is rejected with the same exception and the same message by both implementations."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core_helpers import model_args, problem, risk_args

MK, RISK, PF = problem(seed=3, n_und=2, n_inst=10, n_hist=40, n_acc=6, n_pos=30)


def raises_same(both, call):
    """Run ``call(impl)`` on both; assert both raise the same type and message; return it."""
    errors = []
    for impl in both:
        with pytest.raises((TypeError, ValueError)) as info:
            call(impl)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1])
    assert str(errors[0]) == str(errors[1])
    return errors[0]


def with_(d, **changes):
    out = dict(d)
    out.update(changes)
    return out


def _set(a, idx, value):
    a = a.copy()
    a[idx] = value
    return a


RA = risk_args(MK)
RISK_CASES = [
    (with_(RA, kind=[0, 1]), TypeError, "kind must be a numpy.ndarray, got list"),
    (with_(RA, kind=RA["kind"].astype(np.int32)), TypeError, "kind must have dtype int8, got int32"),
    (with_(RA, forward=RA["forward"].astype(np.float32)), TypeError, "forward must have dtype float64, got float32"),
    (with_(RA, forward=RA["forward"].astype(">f8")), TypeError, "forward must have dtype float64, got >f8"),
    (with_(RA, strike=RA["strike"][:, None]), ValueError, "strike must be 1-D, got 2-D"),
    (with_(RA, implied_vol=RA["implied_vol"][:-1]), ValueError, r"implied_vol must have shape \(10,\), got \(9,\)"),
    (with_(RA, kind=_set(RA["kind"], 4, 7)), ValueError, r"kind\[4\] = 7 is not 0 \(perp\)"),
    (with_(RA, forward=_set(RA["forward"], 2, np.nan)), ValueError, r"forward\[2\] must be finite and > 0"),
    (with_(RA, forward=_set(RA["forward"], 0, -1.0)), ValueError, r"forward\[0\] must be finite and > 0"),
    (with_(RA, strike=_set(RA["strike"], 7, 0.0)), ValueError, r"strike\[7\] must be finite \(and > 0"),
    (with_(RA, strike=_set(RA["strike"], 5, 0.0)), None, None),  # a future needs no strike
    (with_(RA, strike=_set(RA["strike"], 0, np.inf)), ValueError, r"strike\[0\] must be finite"),
    (with_(RA, expiry_years=_set(RA["expiry_years"], 3, -0.1)), ValueError, r"expiry_years\[3\] must be"),
    (with_(RA, implied_vol=_set(RA["implied_vol"], 9, np.inf)), ValueError, r"implied_vol\[9\] must be finite"),
    (with_(RA, underlying=_set(RA["underlying"], 1, 2)), ValueError, r"underlying\[1\] = 2 is out of range \[0, 2\)"),
    (with_(RA, underlying=RA["underlying"].astype(np.int64)), TypeError, "underlying must have dtype int32"),
    (with_(RA, multiplier=_set(RA["multiplier"], 6, 0.0)), ValueError, r"multiplier\[6\] must be finite and > 0"),
    (with_(RA, price_shock=RA["price_shock"][:, 0]), ValueError, "price_shock must be 2-D, got 1-D"),
    (with_(RA, vol_shock=RA["vol_shock"][:-1]), ValueError, r"vol_shock must have shape \(75, 2\), got \(74, 2\)"),
    (with_(RA, price_shock=_set(RA["price_shock"], (7, 1), -1.0)), ValueError,
     r"price_shock\[7, 1\] must be finite and > -1"),
    (with_(RA, vol_shock=_set(RA["vol_shock"], (70, 0), np.nan)), ValueError, r"vol_shock\[70, 0\] must be finite"),
    (with_(RA, horizon_years=-1.0), ValueError, "horizon_years must be finite and >= 0"),
    (with_(RA, horizon_years="1d"), TypeError, "horizon_years must be a real number"),
    (with_(RA, n_threads=0), ValueError, "n_threads must be >= 1"),
    (with_(RA, n_threads=1.5), TypeError, "n_threads must be an integer"),
]


@pytest.mark.parametrize("kwargs, exc, message", RISK_CASES)
def test_risk_arrays_rejects(both, kwargs, exc, message):
    if exc is None:   # accepted by both
        c, ref = (impl.risk_arrays(**kwargs) for impl in both)
        np.testing.assert_allclose(c, ref, rtol=1e-9, atol=1e-9)
        return
    err = raises_same(both, lambda impl: impl.risk_arrays(**kwargs))
    assert isinstance(err, exc)
    assert re.search(message, str(err)), str(err)


def test_black76_price_rejects_like_risk_arrays(both):
    bad = with_(RA, implied_vol=_set(RA["implied_vol"], 9, -0.2))
    keys = ("kind", "forward", "strike", "expiry_years", "implied_vol")
    err = raises_same(both, lambda impl: impl.black76_price(**{k: bad[k] for k in keys}))
    assert str(err) == "implied_vol[9] must be finite and >= 0"


MA = model_args(MK, RISK)
MODEL_CASES = [
    (with_(MA, risk=RISK.astype(np.float32)), TypeError, "risk must have dtype float64, got float32"),
    (with_(MA, risk=_set(RISK, (3, 17), np.inf)), ValueError, r"risk\[3, 17\] must be finite"),
    (with_(MA, n_grid=2.0), TypeError, "n_grid must be an integer"),
    (with_(MA, n_grid=-1), ValueError, "n_grid must be >= 0"),
    (with_(MA, n_grid=70), ValueError, r"risk has 75 scenario columns, need n_grid \+ n_tail \(70 \+ 8\)"),
    (with_(MA, es_level=1.0), ValueError, r"es_level must be in \(0, 1\)"),
    (with_(MA, es_level=np.nan), ValueError, r"es_level must be in \(0, 1\)"),
    (with_(MA, mm_factor=0.0), ValueError, r"mm_factor must be in \(0, 1\]"),
    (with_(MA, tail_weights=_set(MA["tail_weights"], 2, -0.5)), ValueError, r"tail_weights\[2\] must be finite"),
    (with_(MA, depth=_set(MA["depth"], 8, 0.0)), ValueError, r"depth\[8\] must be finite and > 0"),
    (with_(MA, half_spread=_set(MA["half_spread"], 1, np.nan)), ValueError, r"half_spread\[1\] must be finite"),
    (with_(MA, unit_notional=MA["unit_notional"][:3]), ValueError, r"unit_notional must have shape \(10,\)"),
    (with_(MA, underlying=_set(MA["underlying"], 0, -1)), ValueError, r"underlying\[0\] = -1 is out of range"),
    (with_(MA, bracket_floor=_set(MA["bracket_floor"], (1, 0), 5.0)), ValueError,
     r"bracket_floor\[1, 0\] must be finite, 0 in the first bracket and increasing"),
    (with_(MA, bracket_floor=_set(MA["bracket_floor"], (0, 3), 1.0)), ValueError, r"bracket_floor\[0, 3\] must be"),
    (with_(MA, bracket_rate=_set(MA["bracket_rate"], (1, 2), 0.0)), ValueError,
     r"bracket_rate\[1, 2\] must be finite, in \[0, 1\] and non-decreasing"),
    (with_(MA, bracket_rate=MA["bracket_rate"][:, :2]), ValueError, r"bracket_rate must have shape \(2, 6\)"),
    (with_(MA, bracket_floor=np.zeros((2, 0)), bracket_rate=np.zeros((2, 0))), ValueError,
     "bracket_floor must have at least 1 bracket"),
]


@pytest.mark.parametrize("kwargs, exc, message", MODEL_CASES)
def test_model_rejects(both, kwargs, exc, message):
    err = raises_same(both, lambda impl: impl.MarginModel(**kwargs))
    assert isinstance(err, exc)
    assert re.search(message, str(err)), str(err)


INDPTR, INST, SIZE, ISO = PF
NNZ = INST.size
COMPUTE_CASES = [
    ((INDPTR.astype(np.int32), INST, SIZE, ISO), TypeError, "indptr must have dtype int64, got int32"),
    ((INDPTR, INST.astype(np.int64), SIZE, ISO), TypeError, "instrument must have dtype int32, got int64"),
    ((INDPTR, INST, SIZE[:-1], ISO), ValueError, rf"size must have shape \({NNZ},\), got \({NNZ - 1},\)"),
    ((INDPTR, INST, SIZE, ISO.astype(np.int8)), TypeError, "isolated must have dtype uint8 or bool, got int8"),
    ((INDPTR, INST, SIZE, None), TypeError, "isolated must be a numpy.ndarray, got NoneType"),
    ((np.zeros(0, np.int64), INST[:0], SIZE[:0], ISO[:0]), ValueError, "indptr must have at least 1 element"),
    ((INDPTR + 1, INST, SIZE, ISO), ValueError, r"indptr\[0\] must be 0"),
    ((_set(INDPTR, 3, 0), INST, SIZE, ISO), ValueError, r"indptr must be non-decreasing: indptr\[3\] < indptr\[2\]"),
    ((_set(INDPTR, -1, NNZ - 1), INST, SIZE, ISO), ValueError,
     rf"indptr\[-1\] = {NNZ - 1} must equal the number of positions {NNZ}"),
    ((INDPTR, _set(INST, 17, 10), SIZE, ISO), ValueError, r"instrument\[17\] = 10 is out of range \[0, 10\)"),
    ((INDPTR, _set(INST, 29, -3), SIZE, ISO), ValueError, r"instrument\[29\] = -3 is out of range"),
    ((INDPTR, INST, _set(SIZE, 11, np.nan), ISO), ValueError, r"size\[11\] must be finite"),
    ((INDPTR, INST, _set(SIZE, 0, -np.inf), ISO), ValueError, r"size\[0\] must be finite"),
    # the first bad position wins, whichever the kind of fault
    ((INDPTR, _set(INST, 20, 99), _set(SIZE, 5, np.inf), ISO), ValueError, r"size\[5\] must be finite"),
]


@pytest.mark.parametrize("args, exc, message", COMPUTE_CASES)
def test_compute_rejects(both, args, exc, message):
    models = [impl.MarginModel(**MA) for impl in both]
    errors = []
    for m in models:
        with pytest.raises(exc) as info:
            m.compute(*args)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert re.search(message, errors[0]), errors[0]


def test_compute_rejects_bad_n_threads(both):
    for impl in both:
        m = impl.MarginModel(**MA)
        with pytest.raises(ValueError, match="n_threads must be >= 1"):
            m.compute(*PF, n_threads=0)


def test_error_found_by_a_worker_thread_is_raised(both):
    """A fault far into the account list is met by the second thread (GIL released) and raised after."""
    mk, risk, pf = problem(seed=9, n_acc=4000, n_pos=30000)
    indptr, inst, size, iso = pf
    bad = _set(size, size.size - 3, np.nan)
    msgs = []
    for impl in both:
        with pytest.raises(ValueError) as info:
            impl.MarginModel(**model_args(mk, risk)).compute(indptr, inst, bad, iso, n_threads=2)
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1] == f"size[{size.size - 3}] must be finite"


ONE_CASES = [
    ((INST[:3], SIZE[:3], ISO[:3], np.array([1], np.int32), np.array([1.0, 2.0])), ValueError,
     r"delta_size must have shape \(1,\), got \(2,\)"),
    ((INST[:3], SIZE[:3], ISO[:3], np.array([10], np.int32), np.array([1.0])), ValueError,
     r"delta_instrument\[0\] = 10 is out of range \[0, 10\)"),
    ((INST[:3], SIZE[:3], ISO[:3], np.array([1], np.int32), np.array([np.inf])), ValueError,
     r"delta_size\[0\] must be finite"),
    ((INST[:3], SIZE[:3], ISO[:3], [1], np.array([1.0])), TypeError,
     "delta_instrument must be a numpy.ndarray, got list"),
    ((INST[:3], _set(SIZE[:3], 1, np.nan), ISO[:3], np.array([1], np.int32), np.array([1.0])), ValueError,
     r"size\[1\] must be finite"),
    ((INST[:3].astype(np.int16), SIZE[:3], ISO[:3], np.array([1], np.int32), np.array([1.0])), TypeError,
     "instrument must have dtype int32, got int16"),
]


@pytest.mark.parametrize("args, exc, message", ONE_CASES)
def test_what_if_and_explain_reject(both, args, exc, message):
    models = [impl.MarginModel(**MA) for impl in both]
    errors = []
    for m in models:
        with pytest.raises(exc) as info:
            m.what_if(*args)
        errors.append(str(info.value))
        if not message.startswith("delta"):
            with pytest.raises(exc) as info:
                m.explain(*args[:3])
            errors.append(str(info.value))
    assert len(set(errors)) == 1
    assert re.search(message, errors[0]), errors[0]


def test_instrument_kinds_agree_between_the_c_core_and_the_twin():
    import marginflow.core as core
    from marginflow.core import reference

    names = ("KIND_PERP", "KIND_FUTURE", "KIND_CALL", "KIND_PUT")
    assert [getattr(core, n) for n in names] == [getattr(reference, n) for n in names]
    if core.ccore is not None:
        assert [getattr(core.ccore, n) for n in names] == [getattr(reference, n) for n in names]
    assert len({getattr(reference, n) for n in names}) == 4
