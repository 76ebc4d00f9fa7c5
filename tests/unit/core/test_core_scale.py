"""Per-position scale of the scenario losses (``compute(..., scale=)``, ``explain(..., scale=)``): the
grid, tail and historical losses of a position are those of ``scale × size``, the tiered minimum and the
liquidity add-on stay on the true size; both implementations, same results and messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_helpers import account, assert_same_results, close, model_args, problem

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _scales(pf, seed):
    rng = np.random.default_rng(seed)
    return 1.0 + 3.0 * rng.random(pf[1].shape[0]) * (rng.random(pf[1].shape[0]) < 0.5)


def test_a_scale_of_one_changes_nothing(impl):
    mk, risk, pf = problem(seed=3)
    model = impl.MarginModel(**model_args(mk, risk))
    plain = model.compute(*pf, n_threads=2)
    ones = model.compute(*pf, n_threads=2, scale=np.ones(pf[1].shape[0]))
    for key in plain:
        np.testing.assert_array_equal(plain[key], ones[key])
    assert_same_results(model.compute(*pf, n_threads=1, scale=None), plain)


def test_scaled_losses_are_the_losses_of_the_scaled_size_minimum_and_liquidity_are_not(impl):
    mk, risk, pf = problem(seed=5, iso_share=0.0)
    model = impl.MarginModel(**model_args(mk, risk))
    scale = _scales(pf, 11)
    indptr, inst, size, iso = pf
    got = model.compute(indptr, inst, size, iso, scale=scale)
    bigger = model.compute(indptr, inst, size * scale, iso)
    true = model.compute(indptr, inst, size, iso)
    for key in ("grid", "es", "var"):
        close(got[key], bigger[key], rtol=1e-12)
    np.testing.assert_array_equal(got["minimum"], true["minimum"])
    np.testing.assert_array_equal(got["liquidity"], true["liquidity"])
    close(got["cross_im"], np.maximum(np.maximum(got["grid"], got["es"]), got["minimum"]) + got["liquidity"],
          rtol=1e-12)


def test_an_isolated_position_scales_its_grid_and_es_but_not_its_minimum(impl):
    mk, risk, pf = problem(seed=8, n_acc=1, n_pos=1, iso_share=1.0)
    model = impl.MarginModel(**model_args(mk, risk))
    indptr, inst, size, iso = pf
    assert iso.all()
    # the same position margined as cross alone gives its scenario term max(|q|·grid₁, |q|·ES₁)
    alone = model.compute(indptr, inst, size, np.zeros(1, np.uint8))
    term = max(float(alone["grid"][0]), float(alone["es"][0]))
    minimum, liquidity = float(alone["minimum"][0]), float(alone["liquidity"][0])
    for s in (1.0, 4.0, 25.0):
        got = model.compute(indptr, inst, size, iso, scale=np.array([s]))
        # max(s·|q|·grid₁, s·|q|·ES₁, minimum at |q|) + liquidity at |q|
        assert got["isolated_im"][0] == pytest.approx(max(s * term, minimum) + liquidity, rel=1e-12)
        ex = model.explain(inst, size, iso, scale=np.array([s]))
        assert ex["position_minimum"][0] == minimum
        assert ex["isolated_im"] == pytest.approx(float(got["isolated_im"][0]), rel=1e-12)


def test_explain_with_a_scale_matches_compute_and_its_contributions_add_up(impl):
    mk, risk, pf = problem(seed=13)
    model = impl.MarginModel(**model_args(mk, risk))
    scale = _scales(pf, 2)
    out = model.compute(*pf, scale=scale)
    for i in range(5):
        k, q, iso = account(pf, i)
        sl = slice(int(pf[0][i]), int(pf[0][i + 1]))
        ex = model.explain(k, q, iso, scale=scale[sl])
        assert ex["im"] == pytest.approx(float(out["im"][i]), rel=1e-12)
        assert float(np.sum(ex["position_grid"])) == pytest.approx(ex["grid"], rel=1e-9, abs=1e-9)
        assert float(np.sum(ex["position_es"])) == pytest.approx(ex["es"], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("bad, message", [
    (np.array([1.0, np.nan, 1.0]), "scale[1] must be finite and > 0"),
    (np.array([1.0, 1.0, 0.0]), "scale[2] must be finite and > 0"),
    (np.array([1.0, -2.0, 1.0]), "scale[1] must be finite and > 0"),
])
def test_a_bad_scale_is_a_value_error_naming_the_element(both, bad, message):
    mk, risk, _ = problem(seed=1)
    args = model_args(mk, risk)
    pf = (np.array([0, 3], np.int64), np.array([0, 1, 2], np.int32), np.array([1.0, -1.0, 2.0]),
          np.zeros(3, np.uint8))
    for impl in both:
        model = impl.MarginModel(**args)
        with pytest.raises(ValueError) as err:
            model.compute(*pf, scale=bad)
        assert str(err.value) == message
        with pytest.raises(ValueError) as err:
            model.explain(pf[1], pf[2], pf[3], scale=bad)
        assert str(err.value) == message
        with pytest.raises(ValueError, match="scale"):
            model.compute(*pf, scale=np.ones(2))
        with pytest.raises(TypeError, match="scale"):
            model.compute(*pf, scale=np.ones(3, np.float32))


def test_the_scale_is_not_modified(impl):
    mk, risk, pf = problem(seed=4)
    model = impl.MarginModel(**model_args(mk, risk))
    scale = _scales(pf, 4)
    kept = scale.copy()
    model.compute(*pf, scale=scale)
    np.testing.assert_array_equal(scale, kept)


@FAST
@given(seed=st.integers(0, 2**31 - 1), n_acc=st.integers(1, 40), n_pos=st.integers(1, 300),
       iso_share=st.sampled_from([0.0, 0.1, 0.5, 1.0]), spread=st.floats(0.0, 20.0))
def test_c_and_twin_agree_with_scales(both, seed, n_acc, n_pos, iso_share, spread):
    c, ref = both
    mk, risk, pf = problem(seed=seed % 10_000, n_acc=n_acc, n_pos=n_pos, iso_share=iso_share)
    args = model_args(mk, risk)
    rng = np.random.default_rng(seed)
    scale = 1.0 + spread * rng.random(pf[1].shape[0])
    got = c.MarginModel(**args).compute(*pf, n_threads=2, scale=scale)
    want = ref.MarginModel(**args).compute(*pf, scale=scale)
    assert_same_results(got, want)
    k, q, iso = account(pf, 0)
    n0 = k.shape[0]
    ex_c = c.MarginModel(**args).explain(k, q, iso, scale=scale[:n0])
    ex_r = ref.MarginModel(**args).explain(k, q, iso, scale=scale[:n0])
    for key in ("position_grid", "position_es", "position_isolated_im", "position_minimum"):
        close(ex_c[key], ex_r[key])
    assert ex_c["im"] == pytest.approx(ex_r["im"], rel=1e-9, abs=1e-9)
