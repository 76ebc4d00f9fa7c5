"""ES/VaR/worst selection and the grid margin's per-underlying rows, C against the numpy twin.

The C core finds the m worst historical losses through a threshold on block maxima and ranks
the few candidates above it (a heap when there are many); these tests reach each of those
paths at the production scenario count (1,000 FHS scenarios), with ties at the m-th largest
loss, and with accounts that touch every underlying (more than 64 of them).
"""

from __future__ import annotations

import numpy as np
import pytest

from core_helpers import assert_same_results, model_args, problem


@pytest.mark.parametrize("level", [0.975, 0.99, 0.9])
def test_production_scenario_count_agrees(both, level):
    c, ref = both
    mk, risk, pf = problem(seed=11, n_und=6, n_inst=80, n_hist=1000, n_acc=3000, n_pos=30000)
    args = model_args(mk, risk, es_level=level)
    want = ref.MarginModel(**args).compute(*pf)
    assert_same_results(c.MarginModel(**args).compute(*pf, n_threads=2), want)


def test_many_candidates_above_the_threshold_agree(both):
    """Accounts whose worst losses crowd into a few values: dozens to hundreds of candidates."""
    c, ref = both
    mk, risk, _ = problem(seed=12, n_und=3, n_inst=30, n_hist=1000, n_acc=1, n_pos=1)
    g = mk.n_grid + mk.tail_weights.size
    rng = np.random.default_rng(3)
    risk = risk.copy()
    # historical P&L on a coarse lattice: many exactly equal losses, at every rank
    for k, levels in enumerate([2, 3, 5, 9, 17, 40] * 5):
        risk[k, g:] = rng.integers(-levels, levels + 1, risk.shape[1] - g).astype(np.float64)
    n_acc = 400
    counts = rng.integers(1, 6, n_acc)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    inst = rng.integers(0, 30, indptr[-1]).astype(np.int32)
    size = rng.choice([-2.0, -1.0, 1.0, 3.0], indptr[-1])
    iso = np.zeros(indptr[-1], np.uint8)
    for level in (0.975, 0.99, 0.95):
        args = model_args(mk, risk, es_level=level)
        want = ref.MarginModel(**args).compute(indptr, inst, size, iso)
        got = c.MarginModel(**args).compute(indptr, inst, size, iso, n_threads=2)
        assert_same_results(got, want)


def test_ties_at_the_var_rank(both):
    """One instrument whose historical P&L takes two values: the m-th largest loss is tied."""
    c, ref = both
    mk, risk, _ = problem(seed=13, n_und=1, n_inst=3, n_hist=1000, n_acc=1, n_pos=1)
    g = mk.n_grid + mk.tail_weights.size
    risk = risk.copy()
    pnl = np.full(1000, 1.0)
    pnl[[5, 17, 400, 401, 402, 777, 998]] = -3.0            # 7 losses of 3 ...
    pnl[100:130] = -2.0                                      # ... then 30 tied losses of 2 (m = 25)
    risk[0, g:] = pnl
    args = model_args(mk, risk)
    indptr = np.array([0, 1, 3], np.int64)
    inst = np.array([0, 0, 1], np.int32)
    size = np.array([1.0, 1.0, 0.0])
    iso = np.zeros(3, np.uint8)
    want = ref.MarginModel(**args).compute(indptr, inst, size, iso)
    got = c.MarginModel(**args).compute(indptr, inst, size, iso)
    assert_same_results(got, want)
    m = 25
    assert got["var"][0] == 2.0 and got["es"][0] == (7 * 3.0 + (m - 7) * 2.0) / m
    assert got["worst"][0] == 5


@pytest.mark.parametrize("n_und", [16, 64, 65, 130])
def test_accounts_touching_every_underlying(both, n_und):
    """Grid rows per underlying: accounts that hold every underlying, then more positions on
    them, before and after ordinary accounts (the per-underlying scratch must be reset)."""
    c, ref = both
    n_inst = 2 * n_und
    mk, risk, _ = problem(seed=14, n_und=n_und, n_inst=n_inst, n_hist=200, n_acc=1, n_pos=1)
    rng = np.random.default_rng(4)
    accounts = []
    for a in range(12):
        if a % 3 == 0:      # every instrument (every underlying twice), in a random order, plus extras
            k = np.concatenate([rng.permutation(n_inst), rng.integers(0, n_inst, 7)])
        else:
            k = rng.integers(0, n_inst, rng.integers(0, 9))
        accounts.append(k.astype(np.int32))
    indptr = np.concatenate([[0], np.cumsum([k.size for k in accounts])]).astype(np.int64)
    inst = np.concatenate(accounts)
    size = rng.normal(0.0, 4.0, inst.size)
    iso = (rng.random(inst.size) < 0.1).astype(np.uint8)
    args = model_args(mk, risk)
    args["bracket_rate"] = np.minimum(args["bracket_rate"], 1.0)  # the synthetic rates grow per underlying
    want = ref.MarginModel(**args).compute(indptr, inst, size, iso)
    m_c = c.MarginModel(**args)
    for n_threads in (1, 2):
        assert_same_results(m_c.compute(indptr, inst, size, iso, n_threads=n_threads), want)
    sl = slice(int(indptr[0]), int(indptr[1]))
    e_c = m_c.explain(inst[sl], size[sl], iso[sl])
    e_ref = ref.MarginModel(**args).explain(inst[sl], size[sl], iso[sl])
    np.testing.assert_allclose(e_c["underlying_grid"], e_ref["underlying_grid"], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(e_c["underlying_grid_scenario"], e_ref["underlying_grid_scenario"])
