"""The C core and the numpy twin agree (1e-9 relative) on random markets and portfolios."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_helpers import account, assert_same_results, close, model_args, problem, risk_args

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

shapes = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n_und": st.integers(1, 5),
    "n_inst": st.integers(1, 40),
    "n_hist": st.integers(1, 300),
    "n_acc": st.integers(0, 60),
    "n_pos": st.integers(0, 400),
    "n_side": st.integers(0, 5),
    "iso_share": st.sampled_from([0.0, 0.1, 0.5, 1.0]),
})


@FAST
@given(shape=shapes, level=st.sampled_from([0.5, 0.9, 0.975, 0.99]), relative=st.booleans())
def test_risk_arrays_and_margin_agree(both, shape, level, relative):
    c, ref = both
    if shape["n_acc"] == 0:
        shape["n_pos"] = 0
    mk, _, pf = problem(**shape)
    ra = risk_args(mk)
    kw = dict(horizon_years=mk.horizon_years, vol_shock_relative=relative)
    r_ref = ref.risk_arrays(**ra, **kw)
    r_c = c.risk_arrays(**ra, **kw, n_threads=3)
    assert r_c.shape == r_ref.shape == (shape["n_inst"], mk.price_shock.shape[0])
    close(r_c, r_ref)
    args = model_args(mk, r_ref, es_level=level)
    m_c, m_ref = c.MarginModel(**args), ref.MarginModel(**args)
    assert (m_c.n_worst, m_c.n_hist, m_c.n_grid, m_c.n_tail) == (m_ref.n_worst, m_ref.n_hist, m_ref.n_grid,
                                                                  m_ref.n_tail)
    got = m_c.compute(*pf, n_threads=2)
    want = m_ref.compute(*pf)
    assert_same_results(got, want)
    assert got["im"].shape == (shape["n_acc"],)
    # IM is never below each of its terms, MM is the factor times IM
    assert np.all(want["cross_im"] >= want["grid"] - 1e-9 * np.abs(want["grid"]))
    assert np.all(want["cross_im"] >= want["minimum"])
    close(want["mm"], 0.6 * want["im"])


@FAST
@given(shape=shapes, n_delta=st.integers(0, 4), data=st.data())
def test_what_if_equals_compute_on_the_changed_account(both, shape, n_delta, data):
    c, ref = both
    shape["n_acc"] = max(shape["n_acc"], 1)
    mk, risk, pf = problem(**shape)
    args = model_args(mk, risk)
    models = [c.MarginModel(**args), ref.MarginModel(**args)]
    i = data.draw(st.integers(0, shape["n_acc"] - 1))
    inst, size, iso = account(pf, i)
    rng = np.random.default_rng(shape["seed"])
    d_inst = rng.integers(0, shape["n_inst"], n_delta).astype(np.int32)
    d_size = rng.normal(0.0, 5.0, n_delta)
    # the same change spelled as a new account for compute()
    k, q, f = list(inst), list(size), list(iso)
    for kk, dq in zip(d_inst, d_size):
        for j in range(len(k)):
            if not f[j] and k[j] == kk:
                q[j] += dq
                break
        else:
            k.append(kk), q.append(dq), f.append(0)
    pf1 = (np.array([0, len(k)], np.int64), np.array(k, np.int32), np.array(q, np.float64),
           np.array(f, np.uint8))
    results = []
    for m in models:
        w = m.what_if(inst, size, iso, d_inst, d_size)
        full = m.compute(*pf1)
        for key in ("im", "mm", "cross_im", "grid", "es", "var", "minimum", "liquidity"):
            assert isinstance(w[key], float)
            close(w[key], full[key][0])
        assert w["worst"] == full["worst"][0]
        close(w["isolated_im"], full["isolated_im"].sum())
        results.append(w)
    for key in results[1]:
        close(results[0][key], results[1][key])


@FAST
@given(shape=shapes, data=st.data())
def test_explain_agrees_and_adds_up(both, shape, data):
    c, ref = both
    shape["n_acc"] = max(shape["n_acc"], 1)
    mk, risk, pf = problem(**shape)
    args = model_args(mk, risk)
    m_c, m_ref = c.MarginModel(**args), ref.MarginModel(**args)
    i = data.draw(st.integers(0, shape["n_acc"] - 1))
    pos = account(pf, i)
    e_c, e_ref = m_c.explain(*pos), m_ref.explain(*pos)
    assert set(e_c) == set(e_ref)
    for key, want in e_ref.items():
        got = e_c[key]
        if key in ("worst", "underlying_grid_scenario", "es_scenarios"):
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            close(got, want)
    for e in (e_c, e_ref):
        close(e["position_es"].sum(), e["es"])            # Euler: contributions sum to ES
        close(e["position_grid"].sum(), e["grid"])
        close(e["underlying_grid"].sum(), e["grid"])
        close(e["underlying_es"].sum(), e["es"])
        close(e["position_isolated_im"].sum(), e["isolated_im"])
        close(e["position_minimum"][pos[2] == 0].sum(), e["minimum"])
        if e["worst"] >= 0:   # the loss in the worst scenario is the largest loss: >= VaR, == ES if m == 1
            assert e["position_worst_loss"].sum() >= e["var"] - 1e-9 * max(1.0, abs(e["var"]))
            if m_ref.n_worst == 1:
                close(e["position_worst_loss"].sum(), e["es"])
    whole = m_ref.compute(*pf)
    close(e_ref["im"], whole["im"][i])


@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
def test_thread_count_does_not_change_results(n_threads):
    from marginflow.core import ccore
    mk, risk, pf = problem(seed=5, n_acc=3000, n_pos=20000)
    m = ccore.MarginModel(**model_args(mk, risk))
    base = m.compute(*pf, n_threads=1)
    got = m.compute(*pf, n_threads=n_threads)
    for key in base:
        np.testing.assert_array_equal(got[key], base[key])   # bitwise: threads split accounts only


def test_many_accounts_and_a_very_large_one_agree(both):
    """Crosses the C core's batches (64 accounts, >= 1024 positions) and thread split points."""
    c, ref = both
    mk, risk, (indptr, inst, size, iso) = problem(seed=21, n_und=4, n_inst=60, n_hist=257, n_acc=2500,
                                                  n_pos=20000)
    rng = np.random.default_rng(2)
    big = 3000                                        # one account larger than a batch's capacity
    inst = np.concatenate([inst, rng.integers(0, 60, big).astype(np.int32)])
    size = np.concatenate([size, rng.normal(0, 3, big)])
    iso = np.concatenate([iso, (rng.random(big) < 0.2).astype(np.uint8)])
    indptr = np.concatenate([indptr, [indptr[-1] + big, indptr[-1] + big]])   # and an empty one after it
    args = model_args(mk, risk, es_level=0.99)
    want = ref.MarginModel(**args).compute(indptr, inst, size, iso)
    for n_threads in (1, 2, 5):
        assert_same_results(c.MarginModel(**args).compute(indptr, inst, size, iso, n_threads=n_threads), want)
