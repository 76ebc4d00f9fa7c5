"""Golden worked examples of riskparams (riskparams_golden.json: inputs and expected outputs)."""

import json
import pathlib

import numpy as np
import pytest

from marginflow.riskparams.domain.apc import ApcConfig, margin_volatility
from marginflow.riskparams.domain.ewma import ewma_variance_path
from marginflow.riskparams.domain.scenarios import GridConfig, scenario_grid

GOLDEN = json.loads((pathlib.Path(__file__).parent / "riskparams_golden.json").read_text())


def test_ewma_golden():
    g = GOLDEN["ewma"]
    got = ewma_variance_path(np.array(g["returns"]), g["lambda"], g["initial_variance"])
    np.testing.assert_allclose(got, g["expected_variances"], rtol=1e-12)


def test_grid_golden():
    g = GOLDEN["grid"]
    grid = scenario_grid(g["sigma_margin"], GridConfig(z=g["z"], horizon_seconds=g["horizon_seconds"],
                                                       buckets_each_side=g["buckets_each_side"]))
    np.testing.assert_allclose(grid.price_shocks, g["expected_price_shocks"], atol=1e-12)
    np.testing.assert_allclose(grid.tail_price_shocks, g["expected_tail_price_shocks"], atol=1e-12)
    assert list(grid.tail_weights) == g["expected_tail_weights"]


def test_apc_path_golden():
    g = GOLDEN["apc_path"]
    cfg = ApcConfig(buffer=g["buffer"], stress_ratio=g["stress_ratio"], max_step_up=g["max_step_up"])
    prev = None
    for step in g["steps"]:
        prev = margin_volatility(prev, sigma_fast=step["fast"], sigma_slow=step["slow"], sigma_garch=0.0,
                                 sigma_implied=0.0, sigma_floor=step["floor"], config=cfg)
        assert prev.sigma_margin == pytest.approx(step["expected_sigma_m"], rel=1e-12)
        assert prev.cause == step["expected_cause"]
