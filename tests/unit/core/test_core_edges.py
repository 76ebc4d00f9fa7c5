"""Edge cases, memory layout, immutability of inputs and reference/memory leaks -- on both implementations."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
import pytest

from core_helpers import assert_same_results, close, model_args, problem, risk_args

MK, RISK, PF = problem(seed=11, n_und=3, n_inst=30, n_hist=100, n_acc=40, n_pos=400)


@pytest.fixture
def model(impl):
    return impl.MarginModel(**model_args(MK, RISK))


def csr(accounts):
    """CSR arrays from a list of accounts, each a list of (instrument, size, isolated)."""
    indptr = np.zeros(len(accounts) + 1, np.int64)
    indptr[1:] = np.cumsum([len(a) for a in accounts])
    flat = [p for a in accounts for p in a]
    return (indptr, np.array([p[0] for p in flat], np.int32), np.array([p[1] for p in flat], np.float64),
            np.array([p[2] for p in flat], np.uint8))


def test_no_accounts(model):
    out = model.compute(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.uint8))
    assert {k: v.shape for k, v in out.items()} == {**{k: (0,) for k in out}}
    assert out["worst"].dtype == np.int64 and out["im"].dtype == np.float64


def test_empty_and_zero_size_accounts(model):
    out = model.compute(*csr([[], [(3, 0.0, 0), (7, 0.0, 0)], [], [(5, 0.0, 1)], [(2, 1.0, 0)]]))
    np.testing.assert_array_equal(out["im"][:4], 0.0)
    np.testing.assert_array_equal(out["worst"][:4], [-1, 0, -1, -1])   # zero sizes: all losses 0, first index
    assert out["im"][4] > 0
    np.testing.assert_array_equal(out["isolated_im"], 0.0)


def test_one_scenario(impl):
    risk = np.array([[2.0], [-3.0]])
    m = impl.MarginModel(risk, np.zeros(2, np.int32), 0, np.zeros(0), 0.99, np.ones(2), np.ones(2), np.zeros(2),
                         np.ones(2), np.zeros((1, 1)), np.zeros((1, 1)), 1.0)
    out = m.compute(*csr([[(0, 1.0, 0), (1, 1.0, 0)], [(0, -2.0, 0)], [(1, -1.0, 1)]]))
    # loss = -(2 - 3) = 1; -(-2 * 2) = 4; isolated short of -3 P&L: loss -3 -> IM 0
    np.testing.assert_array_equal(out["es"], [1.0, 4.0, 0.0])
    np.testing.assert_array_equal(out["var"], [1.0, 4.0, 0.0])
    np.testing.assert_array_equal(out["worst"], [0, 0, -1])
    np.testing.assert_array_equal(out["grid"], 0.0)
    np.testing.assert_array_equal(out["im"], [1.0, 4.0, 0.0])
    assert m.n_worst == 1 and m.n_hist == 1


def test_huge_sizes_agree_and_overflow_is_reported(both):
    pf = csr([[(0, 1e12, 0), (13, -3e11, 0)], [(4, 2e12, 1)]])
    models = [impl.MarginModel(**model_args(MK, RISK)) for impl in both]
    assert_same_results(models[0].compute(*pf), models[1].compute(*pf))
    assert np.all(np.isfinite(models[0].compute(*pf)["im"]))
    messages = []
    for m in models:
        for pos in (csr([[(1, 1.0, 0)], [(0, 1e306, 0), (1, -1e306, 0)]]), csr([[(1, 1.0, 0)], [(0, 1e307, 1)]])):
            with pytest.raises(ValueError) as info:
                m.compute(*pos)
            messages.append(str(info.value))
        with pytest.raises(ValueError) as info:
            m.what_if(np.array([0], np.int32), np.array([1e307]), np.zeros(1, np.uint8), np.zeros(0, np.int32),
                      np.zeros(0))
        messages.append(str(info.value))
    assert messages[:3] == messages[3:]
    assert messages[0] == "margin overflow in account 1: losses or margin not finite (sizes too large?)"
    assert messages[2] == "margin overflow: losses or margin not finite (sizes too large?)"


def test_fortran_and_strided_inputs_give_the_same_results(impl):
    ra = risk_args(MK)
    want_r = impl.risk_arrays(**ra)
    odd = dict(ra, price_shock=np.asfortranarray(ra["price_shock"]), vol_shock=np.asfortranarray(ra["vol_shock"]),
               forward=np.repeat(ra["forward"], 2)[::2], kind=np.repeat(ra["kind"], 3)[::3])
    assert not odd["price_shock"].flags.c_contiguous and not odd["forward"].flags.c_contiguous
    np.testing.assert_array_equal(impl.risk_arrays(**odd), want_r)
    args = model_args(MK, RISK)
    want = impl.MarginModel(**args).compute(*PF)
    odd_args = dict(args, risk=np.asfortranarray(RISK), depth=np.repeat(args["depth"], 2)[1::2],
                    bracket_rate=np.asfortranarray(args["bracket_rate"]))
    m = impl.MarginModel(**odd_args)
    indptr, inst, size, iso = PF
    strided = (np.repeat(indptr, 2)[::2], np.repeat(inst, 2)[::2], np.repeat(size, 3)[::3],
               np.repeat(iso, 2)[::2].astype(bool))
    got = m.compute(*strided)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_bool_and_uint8_isolated_flags_are_the_same(model):
    indptr, inst, size, iso = PF
    a = model.compute(indptr, inst, size, iso)
    b = model.compute(indptr, inst, size, iso.astype(bool))
    c = model.compute(indptr, inst, size, (iso * 7).astype(np.uint8))   # any nonzero byte is "isolated"
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key])


def test_duplicate_instruments_in_an_account_add_up(model):
    split = model.compute(*csr([[(4, 1.5, 0), (4, 2.5, 0)]]))
    whole = model.compute(*csr([[(4, 4.0, 0)]]))
    for key in ("grid", "es", "var"):
        close(split[key], whole[key])


def test_what_if_on_an_empty_account_and_without_deltas(model):
    empty = (np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.uint8))
    out = model.what_if(*empty, np.zeros(0, np.int32), np.zeros(0))
    assert out["im"] == 0.0 and out["worst"] == -1
    out = model.what_if(*empty, np.array([2, 2], np.int32), np.array([1.0, 2.0]))   # merged into one position
    ref = model.compute(*csr([[(2, 3.0, 0)]]))
    close(out["im"], ref["im"][0])
    e = model.explain(*empty)
    assert e["es_scenarios"].shape == (0,) and e["im"] == 0.0
    assert e["underlying_grid_scenario"].tolist() == [-1, -1, -1]


def test_what_if_leaves_isolated_positions_alone(model):
    inst, size, iso = np.array([3], np.int32), np.array([2.0]), np.array([1], np.uint8)
    out = model.what_if(inst, size, iso, np.array([3], np.int32), np.array([-2.0]))
    ref = model.compute(*csr([[(3, 2.0, 1), (3, -2.0, 0)]]))
    close(out["im"], ref["im"][0])
    close(out["isolated_im"], ref["isolated_im"][0])
    assert out["cross_im"] > 0


def _snapshot(objs):
    return [(o.copy(), o.flags.writeable, o.strides) for o in objs]


def test_inputs_are_not_modified(impl):
    ra = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in risk_args(MK).items()}
    ma = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in model_args(MK, RISK.copy()).items()}
    pf = tuple(a.copy() for a in PF)
    arrays = [v for v in ra.values()] + [v for v in ma.values() if isinstance(v, np.ndarray)] + list(pf)
    before = _snapshot(arrays)
    impl.black76_price(ra["kind"], ra["forward"], ra["strike"], ra["expiry_years"], ra["implied_vol"])
    impl.risk_arrays(**ra)
    m = impl.MarginModel(**ma)
    m.compute(*pf)
    inst, size, iso = pf[1][:5], pf[2][:5], pf[3][:5]
    d_inst, d_size = np.array([inst[0], 1], np.int32), np.array([-size[0], 3.0])
    arrays += [d_inst, d_size]
    before += _snapshot([d_inst, d_size])
    m.what_if(inst, size, iso, d_inst, d_size)
    m.explain(inst, size, iso)
    for a, (copy, writeable, strides) in zip(arrays, before):
        np.testing.assert_array_equal(a, copy)
        assert a.flags.writeable == writeable and a.strides == strides


def test_model_owns_its_data(impl):
    """Changing the caller's arrays after construction does not change the model."""
    args = model_args(MK, RISK.copy())
    m = impl.MarginModel(**args)
    want = m.compute(*PF)["im"]
    args["risk"][:] = 0.0
    args["depth"][:] = 1e9
    np.testing.assert_array_equal(m.compute(*PF)["im"], want)


def test_no_reference_leaks(impl):
    ra = risk_args(MK)
    args = model_args(MK, RISK)
    m = impl.MarginModel(**args)
    inst, size, iso = PF[1][:6], PF[2][:6], PF[3][:6]
    d_inst, d_size = np.array([1], np.int32), np.array([1.0])
    watched = list(PF) + [RISK, inst, size, iso, d_inst, d_size, ra["price_shock"], ra["kind"]]
    bad = (PF[0], PF[1], PF[2] * np.nan, PF[3])

    def work():
        impl.risk_arrays(**ra)
        m.compute(*PF)
        m.what_if(inst, size, iso, d_inst, d_size)
        m.explain(inst, size, iso)
        impl.MarginModel(**args)
        try:
            m.compute(*bad)
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
        for _ in range(60):
            work()
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(a) for a in watched] == refs
    assert end - base < 64 * 1024, f"traced memory grew by {end - base} bytes over 60 rounds"


def test_model_attributes(model):
    assert (model.n_instruments, model.n_underlyings, model.n_grid, model.n_tail, model.n_hist) == (30, 3, 27, 8, 100)
    assert model.n_worst == 3          # ceil((1 - 0.975) * 100) = ceil(2.5) = 3
    assert model.es_level == 0.975 and model.mm_factor == 0.6
